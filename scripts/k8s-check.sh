#!/usr/bin/env bash
# make k8s-check: renders every kustomize overlay and validates what it
# renders, offline.
#  - render: `kubectl kustomize` (kubectl's built-in kustomize; this kind of
#    machine ships kubectl 1.32 / kustomize v5.5). Debian bookworm's only
#    kubectl (kubernetes-client 1.20) embeds kustomize v2.0.3, which cannot
#    read these kustomizations (labels:, patches:), so it is not a fallback.
#  - validate: scripts/k8s-validate (npm: kubernetes-models' compiled
#    Kubernetes 1.27 OpenAPI schemas + a strict unknown-field pass + chatd's
#    cross-object rules). kubeconform / kubeval are in neither Debian nor npm.
#  - the validator must reject scripts/k8s-validate/testdata/bad.yaml with
#    every problem of bad.expected (it cannot silently stop checking).
#  - promtool check config on the Prometheus config of the render (with the
#    alerting rules it loads), and promtool test rules on those rules;
#    amtool check-config on the render's Alertmanager config.
#  - scripts/k8s-assert.py: what the cluster would do with each render (the
#    image per workload, data on the volumes, spread, probes, PDB eviction
#    policy, Pod Security restricted, NetworkPolicies, secrets out of argv,
#    Redis maxmemory, Kafka = the version the project tests, ...).
#  - kube-score (pinned, built from the Go module proxy by scripts/k8s-tools.sh
#    into /var/tmp/chatd-k8s-tools/) on every render; its exceptions are below and in
#    kube-score/ignore annotations, each with its reason.
#  - scripts/psa-check (k8s.io/pod-security-admission, pinned by its go.sum,
#    built the same way): every pod template against Pod Security
#    "restricted" as the API server evaluates it.
#  - the Kafka readiness script's ISR rule on sample describe output, and the
#    rendered Redis container run against redis-server (tests/deploy/
#    test_k8s_redis.py). k8s/base's Kafka scripts against a real Kafka:
#    make k8s-kafka-test.
# Rendered files are left in build/k8s/ for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v kubectl >/dev/null || { echo "k8s-check: kubectl not found (it renders the kustomizations)" >&2; exit 1; }
kv=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
if [ -z "$kv" ] || [ "$kv" -lt 4 ]; then
    echo "k8s-check: needs kubectl with kustomize >= v4 (found: $(kubectl version --client 2>&1 | tr '\n' ' '))" >&2
    exit 1
fi
bash scripts/deps.sh prometheus prometheus-alertmanager python3-yaml
KUBE_SCORE=$(bash scripts/k8s-tools.sh kube-score)
PSA_CHECK=$(bash scripts/k8s-tools.sh psa-check)
# node + npm: the machine's own if it has them (NodeSource's nodejs carries
# npm and conflicts with Debian's npm package), else Debian's.
command -v npm >/dev/null || bash scripts/deps.sh nodejs npm
V=scripts/k8s-validate
if [ ! -d "$V/node_modules/kubernetes-models" ] || [ "$V/package-lock.json" -nt "$V/node_modules/.package-lock.json" ]; then
    (cd "$V" && npm ci --no-audit --no-fund --loglevel=error)
fi

out=build/k8s
rm -rf "$out"
mkdir -p "$out"
for dir in k8s/overlays/*/; do
    o=$(basename "$dir")
    kubectl kustomize "$dir" > "$out/$o.yaml"
    echo "k8s-check: rendered $o: $(grep -c '^kind:' "$out/$o.yaml") objects"
done

for dir in k8s/overlays/*/; do
    o=$(basename "$dir")
    /usr/bin/python3 scripts/k8s-assert.py "$out/$o.yaml" "$dir"
    # ... and its rules still see what they are for (one planted defect each).
    /usr/bin/python3 scripts/k8s-assert.py --self-test "$out/$o.yaml" "$dir"
    # Pod Security "restricted" (what the namespace enforces) as the API
    # server's own evaluator decides it.
    "$PSA_CHECK" -level restricted "$out/$o.yaml"
    # kube-score exceptions, for every overlay:
    #  - CPU limits: CFS quotas throttle an event loop in bursts (latency
    #    spikes for every client of the process); CPU requests are set.
    #  - imagePullPolicy Always: tags are pinned versions; IfNotPresent lets
    #    a kind/k3d cluster run an image loaded into it (local overlay).
    #  - ephemeral-storage requests/limits: root filesystems are read-only
    #    (Kafka's holds only its generated config), scratch is size-limited
    #    emptyDirs, data is on PVCs.
    #  - user/group id >= 10000: the backends run as their images' own users
    #    (redis/postgres 999, kafka 1000, grafana 472), who own the images'
    #    files; k8s-assert.py requires runAsNonRoot and Pod Security restricted.
    # Warnings are printed, not fatal: egress NetworkPolicies (egress stays
    # open: DNS, replication; ingress is what k8s-assert.py requires) and the
    # local overlay's single-replica HPA.
    extra=()
    # local: make image tags localhost/chatd:latest, loaded into kind.
    [ "$o" = local ] && extra+=(--ignore-test container-image-tag)
    if ! ks=$("$KUBE_SCORE" score --kubernetes-version v1.27 --output-format ci \
            --ignore-container-cpu-limit \
            --ignore-test container-image-pull-policy \
            --ignore-test container-ephemeral-storage-request-and-limit \
            --ignore-test container-security-context-user-group-id \
            "${extra[@]}" "$out/$o.yaml"); then
        grep -E '^\[(CRITICAL|WARNING)\]' <<<"$ks" >&2
        echo "k8s-check: kube-score fails the $o render" >&2
        exit 1
    fi
    echo "k8s-check: kube-score $o: $(grep -c '^\[OK\]' <<<"$ks") ok, $(grep -c '^\[WARNING\]' <<<"$ks") warning(s), no critical"
    grep '^\[WARNING\]' <<<"$ks" | sed 's/^/  /' || true
done

# Kafka readiness: out of the ISR of a partition it replicates = unready.
r=k8s/base/kafka-ready.sh
row() { printf 'Topic: chat-send\tTopicId: x\tPartition: 0\tLeader: 1\tReplicas: %s\tIsr: %s\tElr: \tLastKnownElr: \n' "$1" "$2"; }
row 1,2,0 1,2 | bash "$r" --parse 0 >/dev/null && { echo "k8s-check: kafka-ready.sh says ready out of the ISR" >&2; exit 1; }
row 1,2,0 1,2 | bash "$r" --parse 2 >/dev/null || { echo "k8s-check: kafka-ready.sh says unready in the ISR" >&2; exit 1; }
row 10,2 10,2 | bash "$r" --parse 1 >/dev/null || { echo "k8s-check: kafka-ready.sh confuses broker 1 with 10" >&2; exit 1; }
bash "$r" --parse 1 </dev/null || { echo "k8s-check: kafka-ready.sh unready with nothing under-replicated" >&2; exit 1; }
bash -n k8s/base/ensure-topics.sh
# The rendered Redis container run against Debian's redis-server: password
# out of every argv, maxmemory from the limit, writes refused when full.
/usr/bin/python3 -m pytest -q -p no:cacheprovider tests/deploy/test_k8s_redis.py

# production expects chatd-secrets to be created by the operator (docs/DEPLOY.md).
node "$V/validate.mjs" "$out/local.yaml"
node "$V/validate.mjs" --external Secret/chatd-secrets "$out/production.yaml"
if grep -qE 'CHATD_DEV_TOKENS|CHATD_FAULT_INJECTION|kind: Secret$' "$out/production.yaml"; then
    echo "k8s-check: production render enables dev tokens / fault injection or carries a Secret" >&2
    exit 1
fi

# The validator must still catch what it is meant to catch.
set +e
bad=$(node "$V/validate.mjs" "$V/testdata/bad.yaml" 2>&1)
rc=$?
set -e
[ $rc -eq 1 ] || { echo "$bad"; echo "k8s-check: validator exit $rc on the known-bad file, want 1" >&2; exit 1; }
missing=0
while IFS= read -r want; do
    grep -qF -- "$want" <<<"$bad" || { echo "k8s-check: validator did not report: $want" >&2; missing=1; }
done < "$V/testdata/bad.expected"
[ $missing -eq 0 ] || { echo "$bad"; exit 1; }
echo "k8s-check: validator rejects the known-bad file ($(wc -l < "$V/testdata/bad.expected") expected problems found)"

# Prometheus config and alerting rules as rendered. Debian's promtool (2.42)
# is built without Kubernetes service discovery, so the kubernetes_sd_configs
# block is swapped for an equivalent static target; everything else
# (relabeling, regexes, globals, the rule file it loads) is checked by
# promtool itself.
for o in "$out"/*.yaml; do
    pd="$out/prometheus-$(basename "$o" .yaml)"
    mkdir -p "$pd"
    /usr/bin/python3 - "$o" "$pd" <<'PY'
import os, sys, re
text = open(sys.argv[1]).read()
docs = text.split("\n---\n")
cfg = [d for d in docs if "kind: ConfigMap" in d and "name: prometheus-config" in d]
assert len(cfg) == 1, "prometheus-config ConfigMap not found exactly once"

def key(name):
    m = re.search(r"  " + re.escape(name) + r": \|\n((?:    .*\n|\n)+)", cfg[0] + "\n")
    assert m, name + " key not found in prometheus-config"
    return "\n".join(l[4:] for l in m.group(1).splitlines()) + "\n"

body = key("prometheus.yml")
assert "kubernetes_sd_configs:" in body and "chatd-alerts.yml" in body
body = re.sub(r"kubernetes_sd_configs:\n(?:      .*\n)+", "static_configs:\n      - targets: ['127.0.0.1:9090']\n", body)
open(os.path.join(sys.argv[2], "prometheus.yml"), "w").write(body)
open(os.path.join(sys.argv[2], "chatd-alerts.yml"), "w").write(key("chatd-alerts.yml"))
PY
    promtool check config "$pd/prometheus.yml"
    cmp -s "$pd/chatd-alerts.yml" k8s/monitoring/chatd-alerts.yml ||
        { echo "k8s-check: rendered chatd-alerts.yml differs from k8s/monitoring/chatd-alerts.yml" >&2; exit 1; }
done
# The Alertmanager config as rendered (k8s-assert checks Prometheus sends to
# it and that its routes end at a receiver that notifies).
for o in "$out"/*.yaml; do
    ad="$out/alertmanager-$(basename "$o" .yaml)"
    mkdir -p "$ad"
    /usr/bin/python3 - "$o" "$ad" <<'PY'
import os, sys, yaml
cms = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ConfigMap"
       and d["metadata"]["name"].startswith("alertmanager-config")]
assert len(cms) == 1, "alertmanager-config ConfigMap not found exactly once"
open(os.path.join(sys.argv[2], "alertmanager.yml"), "w").write(cms[0]["data"]["alertmanager.yml"])
PY
    amtool check-config "$ad/alertmanager.yml"
done
# The alerts fire on their cases and stay quiet on a healthy cluster.
(cd k8s/monitoring && promtool test rules chatd-alerts.test.yml)
echo "k8s-check: ok"
