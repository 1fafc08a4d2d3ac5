#!/usr/bin/env bash
# Installs the Debian packages chatd needs to build, run and test.
# Idempotent: installs only what is missing; runs apt-get update at most once.
set -euo pipefail

PKGS=(
  build-essential pkg-config
  libuv1-dev librdkafka-dev libhiredis-dev libpq-dev
  libcjson-dev libjwt-dev libssl-dev libhttp-parser-dev libcmocka-dev uthash-dev
  redis-server postgresql
  python3 python3-pytest python3-websockets python3-redis python3-psycopg2 python3-yaml
  python3-jwt python3-cryptography
  # the venv the server API's schema test installs schemathesis into (scripts/api-venv.sh)
  python3-venv
  curl procps
  prometheus prometheus-alertmanager
  clang libclang-rt-14-dev
  kcat
  chromium firefox-esr
  # Real Apache Kafka for the second test pass (scripts/kafka.py): a JRE to
  # run the broker, Maven to fetch the jars scripts/kafka/pom.xml pins.
  openjdk-17-jre-headless maven
  # The partition suite's hosts (tests/partitions): network namespaces,
  # veths and a bridge (ip), faults as iptables rules, netem delay (tc).
  iproute2 iptables
)
# Node.js for the browser test (tests/browser): Debian's nodejs and npm,
# unless a node with its npm is on PATH already (NodeSource's nodejs bundles
# npm and conflicts with Debian's npm package).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PKGS+=(nodejs npm)
fi

missing=()
for p in "${PKGS[@]}" "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
