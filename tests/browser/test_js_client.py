"""The JavaScript client library (clients/js) against a real cluster: this
side starts the cluster (the browser suite's fixture: broker, 2 classifiers,
2 gateways, own Redis and database) and runs `node --test clients/js/test/`,
whose tests reach back over a small HTTP control server to kill or restart a
gateway and to mint tokens with a short `exp`. Then PostgreSQL is compared
with what the tests say they received. Also: `npm pack` gives a tarball that
installs and imports in an empty directory, and `tsc --noEmit` accepts the
declarations as the docs use them.
"""
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.parse

import pytest

import harness  # tests/faults/harness.py (conftest.py puts it on the path)

chatlib = harness.chatlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
JS = os.path.join(REPO, "clients", "js")
DEADLINE_S = 300


def _require_deps():
    assert shutil.which("node"), "node missing (scripts/deps.sh installs nodejs)"
    assert os.path.isdir(os.path.join(JS, "node_modules", "ws")), \
        "clients/js/node_modules missing (run `make js-deps`)"


class _Control(http.server.BaseHTTPRequestHandler):
    """POST /kill/NAME, POST /restart/NAME, GET /token?user=U&exp_in=S."""
    cluster = None
    results = None

    def _answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        if u.path == "/token":
            tok = chatlib.make_token(q["user"][0], harness.JWT_SECRET, exp_in=int(q.get("exp_in", ["3600"])[0]))
            self._answer(200, {"token": tok})
        else:
            self._answer(404, {"error": "no such path"})

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        try:
            if parts[0] == "kill":
                self.cluster.kill(parts[1])
            elif parts[0] == "restart":
                self.cluster.restart(parts[1])
            elif parts[0] == "result":
                self.results.append(json.loads(body))
            else:
                self._answer(404, {"error": "no such path"})
                return
        except Exception as e:  # reported to the node test, which fails
            self._answer(500, {"error": str(e)})
            return
        self._answer(200, {"ok": True})

    def log_message(self, *a):
        pass


def test_js_client_against_cluster(browser_cluster):
    _require_deps()
    c = browser_cluster
    results = []
    handler = type("Control", (_Control,), {"cluster": c, "results": results})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = dict(os.environ, CHATD_GW0=str(c.gw_ports[0]), CHATD_GW1=str(c.gw_ports[1]),
               CHATD_CONTROL=f"http://127.0.0.1:{srv.server_address[1]}")
    try:
        # One file at a time: the kill test must not pull a gateway from under the others.
        files = sorted(os.path.join("test", f) for f in os.listdir(os.path.join(JS, "test")) if f.endswith(".test.mjs"))
        p = subprocess.run(["node", "--test", "--test-concurrency=1"] + files, cwd=JS, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=DEADLINE_S)
    finally:
        srv.shutdown()
        srv.server_close()
    assert p.returncode == 0, f"node --test failed (exit {p.returncode}):\n{p.stdout[-8000:]}"
    assert "# fail 0" in p.stdout and "# skipped 0" in p.stdout, p.stdout[-3000:]
    # What the clients reported receiving is what PostgreSQL holds, once each, in order.
    assert results, "the node tests reported no room to check:\n" + p.stdout[-3000:]
    for r in results:
        rows = c.query("SELECT seq, user_id, body FROM messages WHERE room = %s ORDER BY seq", (r["room"],))
        stored = [[s, u, t] for s, u, t in rows]
        assert [s for s, _, _ in stored] == list(range(1, len(stored) + 1)), stored
        assert r["received"] == stored, f"{r['who']} in {r['room']}:\n{r['received']}\n{stored}"


def test_js_client_npm_pack_installs():
    _require_deps()
    with tempfile.TemporaryDirectory(prefix="chatd-npm-") as d:
        out = subprocess.run(["npm", "pack", "--json", "--pack-destination", d], cwd=JS,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120, check=True)
        info = json.loads(out.stdout)[0]
        files = sorted(f["path"] for f in info["files"])
        assert files == ["README.md", "chatd-client.d.ts", "chatd-client.js", "package.json"], files
        app = os.path.join(d, "app")
        os.mkdir(app)
        with open(os.path.join(app, "package.json"), "w") as f:
            json.dump({"name": "app", "private": True, "type": "module"}, f)
        subprocess.run(["npm", "install", "--offline", "--no-audit", "--no-fund", os.path.join(d, info["filename"])],
                       cwd=app, check=True, timeout=120, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Installed with no dependencies of its own, and importable by name.
        assert sorted(n for n in os.listdir(os.path.join(app, "node_modules")) if not n.startswith(".")) == ["chatd-client"]
        probe = ("import { ChatClient, ChatError, ErrorCode } from 'chatd-client';"
                 "const e = new ChatError(ErrorCode.NOT_MEMBER, 'x');"
                 "console.log(typeof ChatClient, e.code, e instanceof Error)")
        r = subprocess.run(["node", "--input-type=module", "-e", probe], cwd=app, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        assert r.stdout.strip() == "function not_member true", r.stdout


def test_js_client_types():
    _require_deps()
    r = subprocess.run([os.path.join(JS, "node_modules", ".bin", "tsc"), "--noEmit", "-p", JS],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert r.returncode == 0, r.stdout


def test_js_client_logic():
    """The cluster-free tests (a scripted fake socket) on their own, so a
    failure there names itself."""
    _require_deps()
    r = subprocess.run(["node", "--test", "test/fake.test.mjs"], cwd=JS, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-8000:]


def test_js_client_doc_page(browser_cluster):
    """The page of docs/CLIENT.md, as printed, works in chromium (doc_page.mjs)."""
    _require_deps()
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    assert os.access(chromium, os.X_OK), f"{chromium} missing (scripts/deps.sh installs it)"
    assert os.path.isdir(os.path.join(HERE, "node_modules", "playwright-core")), "run `make browser-deps`"
    env = dict(os.environ, CHATD_GW0=str(browser_cluster.gw_ports[0]), CHROMIUM=chromium)
    r = subprocess.run(["node", os.path.join(HERE, "doc_page.mjs")], cwd=HERE, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=180)
    assert r.returncode == 0 and "doc page ok" in r.stdout, r.stdout[-4000:]


def test_js_client_doc_bot_is_the_example():
    """The bot docs/CLIENT.md prints is examples/pingbot.mjs, which the cluster test runs."""
    with open(os.path.join(REPO, "docs", "CLIENT.md")) as f:
        doc = f.read()
    section = doc[doc.index("## A bot in ten lines"):]
    block = section[section.index("```js\n") + 6:section.index("```\n", section.index("```js\n") + 6)]
    with open(os.path.join(JS, "examples", "pingbot.mjs")) as f:
        assert block == f.read()
    assert len(block.strip().splitlines()) <= 10
