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
#    alerting rules it loads), and promtool test rules on those rules.
# Rendered files are left in build/k8s/ for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v kubectl >/dev/null || { echo "k8s-check: kubectl not found (it renders the kustomizations)" >&2; exit 1; }
kv=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
if [ -z "$kv" ] || [ "$kv" -lt 4 ]; then
    echo "k8s-check: needs kubectl with kustomize >= v4 (found: $(kubectl version --client 2>&1 | tr '\n' ' '))" >&2
    exit 1
fi
bash scripts/deps.sh prometheus
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
# The alerts fire on their cases and stay quiet on a healthy cluster.
(cd k8s/monitoring && promtool test rules chatd-alerts.test.yml)
echo "k8s-check: ok"
