#!/usr/bin/env bash
# Builds the Kubernetes manifest checkers make k8s-check runs, pinned, from
# the Go module proxy, into /var/tmp/chatd-k8s-tools/ (CHATD_K8S_TOOLS to
# move it): outside the clone, like the image's base cache, so a fresh clone
# (CI) does not pay the build (3 min cold). Only the binaries are kept, named
# by version or source hash, so clones of any commit share them safely: the
# first run builds, later runs reuse them. Prints the binary's path.
#   k8s-tools.sh kube-score   github.com/zegl/kube-score at KUBE_SCORE_VERSION:
#                             the probes, security context, PDB, anti-affinity,
#                             NetworkPolicy and resource checks operators run.
#                             kube-linter's module path (golang.stackrox.io/
#                             kube-linter) is not served by the Go module proxy,
#                             and kubeconform downloads schemas from GitHub at
#                             run time, so neither is used.
#   k8s-tools.sh psa-check    scripts/psa-check (go.mod/go.sum pin
#                             k8s.io/pod-security-admission): the API server's
#                             own Pod Security evaluator, offline.
# Needs Go >= 1.23 (the modules' go directives); Debian bookworm's golang
# (1.19) is too old, so a toolchain at /usr/local/go is preferred.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_SCORE_VERSION=v1.20.0

tool=${1:?usage: k8s-tools.sh kube-score|psa-check}
dir=${CHATD_K8S_TOOLS:-/var/tmp/chatd-k8s-tools}
case "$tool" in
    kube-score) bin=$dir/bin/kube-score-$KUBE_SCORE_VERSION ;;
    psa-check) bin=$dir/bin/psa-check-$(cat scripts/psa-check/go.mod scripts/psa-check/go.sum scripts/psa-check/*.go | sha256sum | cut -c1-12) ;;
    *) echo "k8s-tools: unknown tool $tool" >&2; exit 2 ;;
esac
if [ ! -x "$bin" ]; then
    GO=${GO:-}
    if [ -z "$GO" ]; then
        if [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
        elif command -v go >/dev/null; then GO=go
        else echo "k8s-tools: no Go toolchain (set GO=..., or install Go >= 1.23 at /usr/local/go)" >&2; exit 1
        fi
    fi
    mkdir -p "$dir/bin"
    echo "k8s-tools: building $tool with $($GO version)" >&2
    # GOTOOLCHAIN=local: never download another toolchain.
    # Module and build caches of this build only (two clones may build at once).
    work=$(mktemp -d "$dir/build.XXXXXX")
    export GOMODCACHE=$work/gomod GOCACHE=$work/gocache GOTOOLCHAIN=local CGO_ENABLED=0
    if [ "$tool" = kube-score ]; then
        # go install pkg@version ignores any go.mod around it.
        GOBIN=$work/gobin GOFLAGS= "$GO" install "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" >&2
        mv "$work/gobin/kube-score" "$work/bin"
    else
        (cd scripts/psa-check && GOFLAGS=-mod=readonly "$GO" build -o "$work/bin" .) >&2
    fi
    mv "$work/bin" "$bin"
    # The binaries are the cache; the module and build caches (~400 MB) are not kept.
    "$GO" clean -modcache
    rm -rf "$work"
fi
echo "$bin"
