"""chatd's alerts reach a receiver: Debian's Prometheus evaluates
k8s/monitoring/chatd-alerts.yml against a running chatd and sends to Debian's
Alertmanager (the version k8s/monitoring/alertmanager.yaml pins), which runs
k8s/monitoring/alertmanager.yml as shipped except for two substitutions: the
`operators` receiver's URL is a webhook this test serves, and every rule's
`for:` is 0s (the shipped holds are minutes; promtool test rules checks
them in make k8s-check). Redis of a standalone chatd is stopped; the page
must arrive at the webhook as the shipped routing sends it.
"""
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from chatlib import Proc, free_port, wait_http_status

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
MON = os.path.join(REPO, "k8s", "monitoring")
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"


class Webhook(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Webhook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def wait_ready(proc, port, what):
    try:
        wait_http_status(port, "/-/ready", 200, 30)
    except AssertionError as e:
        pytest.fail(f"{what} did not start: {e}\n{proc.tail()}", pytrace=False)


def shipped_alertmanager_config(webhook_url):
    text = open(os.path.join(MON, "alertmanager.yml")).read()
    text, n = re.subn(r"(webhook_configs:\n\s+- url: )\S+", r"\g<1>" + webhook_url, text)
    assert n == 1, "alertmanager.yml: the operators receiver's webhook URL was not found"
    return text


def test_redis_down_pages_the_operators_receiver(start_all_instance, workdir):
    d = os.path.join(workdir, "alerting")
    os.makedirs(d, exist_ok=True)
    inst = start_all_instance("alerting")

    Webhook.received = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    procs = []
    try:
        amcfg = os.path.join(d, "alertmanager.yml")
        with open(amcfg, "w") as f:
            f.write(shipped_alertmanager_config(f"http://127.0.0.1:{hook.server_port}/hook"))
        r = subprocess.run([AMTOOL, "check-config", amcfg], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        assert r.returncode == 0, r.stdout.decode()
        am_port = free_port()
        am = Proc("alertmanager", [ALERTMANAGER, f"--config.file={amcfg}",
                                   f"--storage.path={os.path.join(d, 'am')}",
                                   f"--web.listen-address=127.0.0.1:{am_port}",
                                   "--cluster.listen-address=", "--log.level=warn"], d)
        procs.append(am)
        wait_ready(am, am_port, "alertmanager")

        rules = os.path.join(d, "chatd-alerts.yml")
        with open(rules, "w") as f:
            f.write(re.sub(r"for: \S+", "for: 0s", open(os.path.join(MON, "chatd-alerts.yml")).read()))
        cfg = os.path.join(d, "prometheus.yml")
        with open(cfg, "w") as f:
            json.dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [rules],
                "alerting": {"alertmanagers": [{"static_configs": [
                    {"targets": [f"127.0.0.1:{am_port}"]}]}]},
                "scrape_configs": [{"job_name": "chatd", "static_configs": [
                    {"targets": [f"127.0.0.1:{inst.port}"],
                     "labels": {"role": "all", "pod": "alerting"}}]}],
            }, f)
        prom_port = free_port()
        prom = Proc("prometheus", [PROMETHEUS, f"--config.file={cfg}",
                                   f"--storage.tsdb.path={os.path.join(d, 'prom')}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}",
                                   "--log.level=warn"], d)
        procs.append(prom)
        wait_ready(prom, prom_port, "prometheus")

        time.sleep(3)  # a few healthy evaluations first: nothing may page
        assert Webhook.received == [], f"a healthy chatd paged: {Webhook.received}"
        inst.redis.stop(timeout=10)
        # Scrape + evaluation (1 s each), the critical route's group_wait (10 s).
        deadline = time.monotonic() + 45
        while not Webhook.received and time.monotonic() < deadline:
            time.sleep(0.5)
        assert Webhook.received, "no notification reached the webhook within 45 s"
        note = Webhook.received[0]
        assert note["receiver"] == "operators", note
        firing = [a for a in note["alerts"] if a["status"] == "firing"]
        names = {a["labels"]["alertname"] for a in firing}
        assert "ChatdRedisDown" in names, note
        a = next(a for a in firing if a["labels"]["alertname"] == "ChatdRedisDown")
        assert a["labels"]["severity"] == "critical" and a["labels"]["pod"] == "alerting", a
        assert a["annotations"]["summary"].startswith("chatd alerting has no Redis connection"), a
    finally:
        hook.shutdown()
        for p in reversed(procs):
            p.stop(timeout=20)
