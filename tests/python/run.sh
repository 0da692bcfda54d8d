#!/usr/bin/env bash
# The official Triton client (tritonclient.http) against a real wasm-host.
#
#   bash tests/python/run.sh [PYTEST ARGS...]
#
# Expects the host and the digits model to be built already (`make test` builds both). Creates or
# reuses a virtualenv in tests/python/.venv, installs requirements.txt into it, runs pytest, and
# exits with pytest's exit code. PYTHON picks the interpreter (default python3, 3.11 or newer).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

missing=()
for f in target/release/wasm-host target/wasm32-wasip2/release/guest_model.wasm; do
    [[ -f "$f" ]] || missing+=("$f")
done
if ((${#missing[@]})); then
    echo "tests/python: not built: ${missing[*]}" >&2
    echo "tests/python: build the host and the guests first: \`make test\` (or \`make guests host\`)" >&2
    exit 2
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "tests/python: need Python 3.11 or newer as \`$python\` (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi

venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "tests/python: creating virtualenv $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

# No `exec`, so that the exit code below is pytest's whatever `set -e` thinks of it.
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$here" "$@"
status=$?
exit $status
