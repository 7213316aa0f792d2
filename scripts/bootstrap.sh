#!/usr/bin/env bash
# Make (or refresh) the project virtualenv in .venv with the pinned versions.
# Sourced by demo.sh and test.sh; prints nothing when the venv is current.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FURL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp="$VENV/.furl-stamp"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up $VENV (first run only) ..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  log="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install -r "$ROOT/requirements-test.txt" &&
         "$VENV/bin/python" -m pip install --no-deps -e "$ROOT"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "error: installing the pinned requirements failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
