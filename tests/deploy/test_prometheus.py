"""chatd's /metrics checked by the real tools: `promtool check metrics` on
every role, the naming conventions, then a real Prometheus (Debian's)
scraping the cluster while traffic flows; the counters are read back through
Prometheus's HTTP API, and every query of the Grafana dashboard
(k8s/monitoring/chatd-dashboard.json) is run against it.
"""
import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from chatlib import Proc, arun, free_port, http_request, uid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DASHBOARD = os.path.join(REPO, "k8s", "monitoring", "chatd-dashboard.json")
ALERTS = os.path.join(REPO, "k8s", "monitoring", "chatd-alerts.yml")
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SCRAPE_S = 1
N_MSGS = 25

# Every label chatd may put on a series, and the values each may take: a label
# outside this table (a user, a room, a connection id) would grow without bound.
LABELS = {
    "result": {"ok", "unauthorized", "unavailable", "forbidden_origin", "too_many_user_conns"},
    "code": {"bad_request", "not_member", "too_large", "rate_limited", "forbidden",
             "unavailable", "internal"},
    "consumer": {"assigned", "group"},
    "le": None,  # histogram buckets, fixed at registration
    # lib/slab.h users (SLAB_INIT in net/, store/, roles/): one series per slab
    "slab": {"socket", "http_req", "ws_conn", "ws_queue", "ws_write", "redis_cmd", "routes_op",
             "gw_conn", "gw_member", "gw_user", "gw_user_long", "gw_room", "gw_pending"},
    # chatd_classifier_step_seconds (roles/classifier.c enum cl_step)
    "step": {"since_produced", "queue", "fence", "lookup", "sequence", "store", "route", "order",
             "produce", "retry"},
}


def role_of(name):
    return re.sub(r"\d+$", "", name.split("~")[0])


def targets(cluster):
    return [(p.name, port, role_of(p.name)) for p, port in cluster.procs]


def exposition(port):
    st, hdrs, body = http_request(port, "GET", "/metrics")
    assert st == 200, f"/metrics on {port}: HTTP {st}"
    assert hdrs.get("content-type", "").startswith("text/plain; version=0.0.4"), hdrs
    return body.decode()


def parse_exposition(text):
    """{name: type}, [(sample name, {label: value})]"""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
        elif line and not line.startswith("#"):
            head = line.rsplit(" ", 1)[0]
            name, _, rest = head.partition("{")
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
            samples.append((name, labels))
    return types, samples


def test_promtool_check_metrics_every_role(cluster):
    async def traffic():  # so that histograms and labelled counters have samples
        a = await cluster.client(uid("pt"), gw=0)
        room = uid("pt-room")
        await a.join(room)
        await a.send(room, "hello promtool")
        await a.close()
    arun(traffic())
    for name, port, role in targets(cluster):
        text = exposition(port)
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        assert r.returncode == 0 and not r.stdout.strip(), \
            f"promtool check metrics on {name} ({role}):\n{r.stdout.decode()}"


def test_metric_names_and_labels_follow_conventions(cluster):
    before = {}
    for name, port, _ in targets(cluster):
        types, samples = parse_exposition(exposition(port))
        assert types, f"{name}: no metrics"
        for metric, typ in types.items():
            assert metric.startswith("chatd_"), f"{name}: {metric} lacks the chatd_ prefix"
            if typ == "counter":
                assert metric.endswith("_total"), f"{name}: counter {metric} must end in _total"
            else:
                assert not metric.endswith("_total"), f"{name}: {typ} {metric} ends in _total"
            if typ == "histogram":
                assert metric.endswith("_seconds"), f"{name}: histogram {metric} not in _seconds"
        for sample, labels in samples:
            for k, v in labels.items():
                assert k in LABELS, f"{name}: {sample} has unexpected label {k}={v!r}"
                if LABELS[k] is not None:
                    assert v in LABELS[k], f"{name}: {sample} label {k}={v!r} not a known value"
        before[name] = len(samples)

    # Many distinct users and rooms must not add a single series.
    async def many():
        clients = [await cluster.client(uid("card"), gw=i % 2) for i in range(6)]
        for i, c in enumerate(clients):
            room = uid(f"card-room{i}")
            await c.join(room)
            await c.send(room, f"m{i}")
            await c.expect_error({"op": "send", "room": uid("not-joined"), "text": "x"},
                                 "not_member")
        for c in clients:
            await c.close()
    arun(many())
    after = {name: len(parse_exposition(exposition(port))[1]) for name, port, _ in targets(cluster)}
    assert after == before, f"series count changed with new users/rooms: {before} -> {after}"


# --------------------------------------------------------------------------
# a real Prometheus

class Prometheus:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}{path}?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            pytest.fail(f"{path} {params}: HTTP {e.code} {e.read()[:500]!r}", pytrace=False)
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr):
        return self.api("/api/v1/query", query=expr)["result"]

    def scalar(self, expr):
        res = self.query(expr)
        assert len(res) == 1, f"{expr}: expected one series, got {res}"
        return float(res[0]["value"][1])

    def wait_value(self, expr, pred, timeout=30, what=""):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.scalar(expr)
                if pred(last):
                    return last
            except AssertionError as e:
                last = str(e)
            time.sleep(0.25)
        pytest.fail(f"{what or expr}: last value {last} after {timeout}s")


def prometheus_config(cluster):
    jobs = {}
    for name, port, role in targets(cluster):
        jobs.setdefault(role, []).append((name, port))
    static = [{"targets": [f"127.0.0.1:{port}"], "labels": {"role": role, "pod": name}}
              for role, lst in sorted(jobs.items()) for name, port in lst]
    # JSON is YAML: no YAML library needed.
    return json.dumps({
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [ALERTS],
        "scrape_configs": [{"job_name": "chatd", "static_configs": static}],
    }, indent=1)


@pytest.fixture(scope="module")
def prometheus(cluster, workdir):
    d = os.path.join(workdir, "prometheus")
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write(prometheus_config(cluster))
    r = subprocess.run([PROMTOOL, "check", "config", cfg], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    assert r.returncode == 0, r.stdout.decode()
    port = free_port()
    proc = Proc("prometheus", [PROMETHEUS, f"--config.file={cfg}",
                               f"--storage.tsdb.path={os.path.join(d, 'data')}",
                               f"--web.listen-address=127.0.0.1:{port}",
                               "--storage.tsdb.retention.time=1h", "--log.level=warn"], d)
    prom = Prometheus(proc, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            st, _, _ = http_request(port, "GET", "/-/ready", timeout=2)
            if st == 200:
                break
        except OSError:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            pytest.fail(f"prometheus did not start\n{proc.tail()}", pytrace=False)
        time.sleep(0.2)
    yield prom
    proc.stop(timeout=20)


def test_prometheus_scrapes_every_role(cluster, prometheus):
    want = {}
    for _, _, role in targets(cluster):
        want[role] = want.get(role, 0) + 1
    for role, n in want.items():
        prometheus.wait_value(f'count(up{{job="chatd",role="{role}"}} == 1)', lambda v, n=n: v == n,
                              what=f"{n} {role} target(s) up")
    active = prometheus.api("/api/v1/targets")["activeTargets"]
    bad = [(t["labels"], t["lastError"]) for t in active if t["health"] != "up"]
    assert not bad, bad


def test_prometheus_reads_counters_back_after_traffic(cluster, prometheus):
    def total(metric):
        return f"sum(last_over_time({metric}[1h]))"

    # Values as Prometheus last saw them, once every target was scraped and
    # every earlier send was sequenced (no resends here: the two are equal).
    prometheus.wait_value('count(up{job="chatd"} == 1)', lambda v: v == len(cluster.procs))
    prometheus.wait_value(f"{total('chatd_messages_in_total')} - {total('chatd_classifier_messages_total')}",
                          lambda v: v == 0, what="earlier sends all sequenced")
    time.sleep(2 * SCRAPE_S + 0.5)
    names = ["chatd_messages_in_total", "chatd_acks_total", "chatd_classifier_messages_total",
             "chatd_messages_out_total", "chatd_sequence_latency_seconds_count",
             "chatd_delivery_latency_seconds_count"]
    start = {n: prometheus.scalar(total(n)) for n in names}

    room = uid("prom")

    async def body():
        a = await cluster.client(uid("pa"), gw=0)
        b = await cluster.client(uid("pb"), gw=1)
        await a.join(room)
        await b.join(room)
        acks = await a.send_many(room, [f"p{i}" for i in range(N_MSGS)])
        assert len(acks) == N_MSGS
        await b.wait_seqs(room, list(range(1, N_MSGS + 1)), timeout=30)
        await a.wait_seqs(room, list(range(1, N_MSGS + 1)), timeout=30)
        await a.close()
        await b.close()
    arun(body(), timeout=90)

    for n in ["chatd_messages_in_total", "chatd_acks_total", "chatd_classifier_messages_total",
              "chatd_sequence_latency_seconds_count"]:
        prometheus.wait_value(total(n), lambda v, n=n: v - start[n] == N_MSGS,
                              what=f"{n} to grow by exactly {N_MSGS}")
    # Each message reached two sockets (a and b); joined events add more.
    prometheus.wait_value(total("chatd_messages_out_total"),
                          lambda v: v - start["chatd_messages_out_total"] >= 2 * N_MSGS,
                          what=f"chatd_messages_out_total to grow by >= {2 * N_MSGS}")
    # One end-to-end observation per destination gateway: a on 0, b on 1.
    prometheus.wait_value(total("chatd_delivery_latency_seconds_count"),
                          lambda v: v - start["chatd_delivery_latency_seconds_count"] >= 2 * N_MSGS,
                          what=f"chatd_delivery_latency_seconds_count to grow by >= {2 * N_MSGS}")
    by_role = {r["metric"]["role"]: float(r["value"][1]) for r in
               prometheus.query('sum by (role) (last_over_time(chatd_messages_in_total[1h]))')}
    assert set(by_role) == {"gateway"}, f"messages_in only on gateways: {by_role}"

    # Latency percentiles computed by Prometheus from chatd's buckets.
    for h in ["chatd_sequence_latency_seconds", "chatd_delivery_latency_seconds"]:
        p99 = prometheus.wait_value(
            f'histogram_quantile(0.99, sum by (le) (rate({h}_bucket[1m])))',
            lambda v: not math.isnan(v), what=f"p99 of {h}")
        assert 0 < p99 < 30, (h, p99)


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def test_dashboard_queries_run_on_prometheus(cluster, prometheus):
    """Every panel query is valid PromQL against chatd's real series, and the
    core panels have data (the traffic test ran before this one)."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    empty = []
    for title, expr in exprs:
        q = expr.replace("$__rate_interval", "1m").replace('"$role"', '".*"')
        assert "$" not in q, f"unhandled dashboard variable in {q}"
        res = prometheus.query(q)
        if not res:
            empty.append((title, q))
    titles_with_data = {t for t, _ in exprs} - {t for t, _ in empty}
    for must in ["Processes up, by role", "WebSocket connections", "Messages per second",
                 "End-to-end latency (p50 / p95 / p99) and its stages (p99)", "Kafka consumer lag (records)",
                 "Errors by code (replies to clients)",
                 "Connection state in slabs (bytes), by slab",
                 "Event loop busy (utilisation) and iteration p99, by pod"]:
        assert must in titles_with_data, f"dashboard panel {must!r} has no data; empty: {empty}"


def test_alert_rules_evaluate_on_real_series(cluster, prometheus):
    """k8s/monitoring/chatd-alerts.yml on a healthy cluster after traffic:
    every rule evaluates without error, none is pending or firing (so every
    expression is false here: none is true by construction), and every chatd
    metric the rules name exists (a renamed metric would leave its alert
    silently empty). promtool test rules (make k8s-check) shows each fires
    on its case."""
    with open(ALERTS) as f:
        text = f.read()
    used = set(re.findall(r"\b(chatd_[a-z_]+?)(?:_bucket|_sum|_count)?\b", text))
    prometheus.wait_value('count(up{job="chatd"} == 1)', lambda v: v == len(cluster.procs))
    # Every target has been scraped; let the rules (evaluated every
    # SCRAPE_S) run on that data a few times.
    time.sleep(3 * SCRAPE_S)
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.api("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = [r for r in rules if r.get("lastEvaluation", "").startswith("20")]
        if rules and len(evaluated) == len(rules) and all(r["health"] != "unknown" for r in rules):
            break
        assert time.monotonic() < deadline, f"rules not all evaluated: {rules}"
        time.sleep(0.5)
    assert len(rules) == text.count("- alert:") >= 10
    bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    active = [(r["name"], a["labels"], a["state"]) for r in rules for a in r.get("alerts", [])]
    assert not active, active
    exposed = set()
    for _, port, _ in targets(cluster):
        _, samples = parse_exposition(exposition(port))
        exposed |= {n for n, _ in samples}
    missing = sorted(m for m in used
                     if not any(e == m or e.startswith(m + "_") for e in exposed))
    assert not missing, f"alert rules name metrics no chatd process exposes: {missing}"
