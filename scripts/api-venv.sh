#!/usr/bin/env bash
# Creates the virtual environment the server API's schema test runs
# schemathesis from (tests/integration/test_api_schema.py), with Debian's
# python3 and the exact versions of tests/api/requirements.txt. Idempotent:
# nothing to do when the installed list matches the requirements.
#   scripts/api-venv.sh VENV_DIR
set -euo pipefail
venv=${1:?usage: api-venv.sh VENV_DIR}
req=$(dirname "$0")/../tests/api/requirements.txt
if [ -x "$venv/bin/st" ] && cmp -s "$req" "$venv/.requirements"; then
  exit 0
fi
# python3-venv brings ensurepip (Debian splits it out).
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || bash "$(dirname "$0")/deps.sh" python3-venv
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$req"
cp "$req" "$venv/.requirements"
echo "api-venv: schemathesis $("$venv/bin/st" --version 2>/dev/null | tail -1) in $venv" >&2
