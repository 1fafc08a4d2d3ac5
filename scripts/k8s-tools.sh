#!/usr/bin/env bash
# Builds the Kubernetes manifest checkers make k8s-check runs, pinned, from
# the Go module proxy, into .run/k8s-tools/ (ignored by git). Only the
# binaries are kept (named by version or source hash): the first run builds
# (1-2 minutes), later runs reuse them. Prints the binary's path.
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
dir=$PWD/.run/k8s-tools
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
    export GOMODCACHE=$dir/gomod GOCACHE=$dir/gocache GOTOOLCHAIN=local CGO_ENABLED=0
    if [ "$tool" = kube-score ]; then
        # go install pkg@version ignores any go.mod around it.
        GOBIN=$dir/gobin GOFLAGS= "$GO" install "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" >&2
        mv "$dir/gobin/kube-score" "$bin.tmp"
    else
        (cd scripts/psa-check && GOFLAGS=-mod=readonly "$GO" build -o "$bin.tmp" .) >&2
    fi
    mv "$bin.tmp" "$bin"
    # The binaries are the cache; the module and build caches (~400 MB) are not kept.
    "$GO" clean -modcache
    rm -rf "$dir/gocache" "$dir/gobin"
fi
echo "$bin"
