"""docs/api.yaml against a live gateway: schemathesis (pinned in
tests/api/requirements.txt, installed by `make api-deps` into a venv)
generates requests for every operation, valid and invalid, and checks each
answer: a documented status, its schema, its content type and headers, and
never a 5xx. Afterwards every process of the cluster must still be alive and
clean (the suite's process guard), and the gateway must still answer.

Kept near a minute: a fixed number of examples per operation, one seed."""
import os
import subprocess

import pytest

from chatlib import http_request
from itconf import API_KEY, REPO

VENV = os.environ.get("CHATD_API_VENV") or os.path.join(REPO, "build", "venv-api")
ST = os.path.join(VENV, "bin", "st")
EXAMPLES = os.environ.get("CHATD_API_SCHEMA_EXAMPLES", "25")


def test_api_matches_openapi_document(cluster, tmp_path):
    if not os.access(ST, os.X_OK):
        msg = f"schemathesis not found at {ST}: run `make api-deps`"
        if os.environ.get("CHATD_REQUIRE_SCHEMATHESIS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    port = cluster.api_ports[0]
    cmd = [ST, "run", os.path.join(REPO, "docs", "api.yaml"),
           "--base-url", f"http://127.0.0.1:{port}",
           "-H", f"Authorization: Bearer {API_KEY}",
           "--checks", "all",
           "--data-generation-method", "all",
           "--hypothesis-max-examples", EXAMPLES,
           "--hypothesis-seed", "20",
           "--hypothesis-database", "none",
           "--hypothesis-suppress-health-check", "all",
           "--request-timeout", "10000",
           "--workers", "1",
           "--no-color"]
    env = dict(os.environ, HOME=str(tmp_path), SCHEMATHESIS_HOOKS="")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=300)
    out = r.stdout.decode(errors="replace")
    print(out[-6000:])
    assert r.returncode == 0, f"schemathesis found problems:\n{out[-12000:]}"
    # The gateway still serves, on both ports.
    assert http_request(cluster.gw_ports[0], "GET", "/readyz")[0] == 200
    st, _, _ = http_request(port, "GET", "/v1/users/after-schemathesis/rooms",
                            headers={"Authorization": f"Bearer {API_KEY}"})
    assert st == 200


def test_api_doc_lists_every_operation():
    """docs/API.md's table names exactly the operations of docs/api.yaml."""
    import re
    import yaml
    with open(os.path.join(REPO, "docs", "api.yaml")) as f:
        spec = yaml.safe_load(f)
    in_yaml = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops
               if m in ("get", "put", "post", "delete", "patch")}
    with open(os.path.join(REPO, "docs", "API.md")) as f:
        doc = f.read()
    in_doc = set(re.findall(r"^\| `(GET|PUT|POST|DELETE|PATCH) (/[^`?]*)", doc, re.M))
    assert in_yaml and in_doc == in_yaml, (sorted(in_yaml - in_doc), sorted(in_doc - in_yaml))
