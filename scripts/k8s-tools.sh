#!/usr/bin/env bash
# Builds the Kubernetes manifest linter make k8s-check runs, pinned, from the
# Go module proxy, into .run/k8s-tools/ (ignored by git; the module cache and
# only the binary is kept: only the first run builds, about a minute).
# Prints the binary's path.
#  - kube-score (github.com/zegl/kube-score): the probes, security context,
#    PDB, anti-affinity, NetworkPolicy and resource checks an operator runs.
#    kube-linter's module path (golang.stackrox.io/kube-linter) is not served
#    by the Go module proxy, and kubeconform needs schemas downloaded from
#    GitHub at run time, so neither is used.
# Needs Go >= 1.22 (the module's go directive); Debian bookworm's golang
# (1.19) is too old, so a toolchain at /usr/local/go is preferred.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_SCORE_VERSION=v1.20.0

dir=$PWD/.run/k8s-tools
bin=$dir/bin/kube-score-$KUBE_SCORE_VERSION
if [ ! -x "$bin" ]; then
    GO=${GO:-}
    if [ -z "$GO" ]; then
        if [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
        elif command -v go >/dev/null; then GO=go
        else echo "k8s-tools: no Go toolchain (set GO=..., or install Go >= 1.22 at /usr/local/go)" >&2; exit 1
        fi
    fi
    mkdir -p "$dir/bin"
    echo "k8s-tools: building kube-score $KUBE_SCORE_VERSION with $($GO version)" >&2
    # GOFLAGS=-mod=mod: go install pkg@version ignores any go.mod around it;
    # GOTOOLCHAIN=local: never download another toolchain.
    GOBIN=$dir/gobin GOMODCACHE=$dir/gomod GOCACHE=$dir/gocache GOTOOLCHAIN=local GOFLAGS= CGO_ENABLED=0 \
        "$GO" install "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" >&2
    mv "$dir/gobin/kube-score" "$bin"
    # The binary is the cache; the module and build caches (~400 MB) are not kept.
    GOMODCACHE=$dir/gomod "$GO" clean -modcache
    rm -rf "$dir/gocache" "$dir/gobin"
fi
echo "$bin"
