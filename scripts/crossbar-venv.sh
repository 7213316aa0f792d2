#!/usr/bin/env bash
# Make the crossbar router's own virtualenv for tests/system/test_cluster.py (a router
# is deployed on its own, not in the masters' virtualenv): crossbar 26.10.1 in
# $FURL_CROSSBAR_VENV (default ~/.cache/buildbot_furl-crossbar). About 3 minutes
# and 377 MB the first time; nothing when it is there already.
set -euo pipefail
VENV="${FURL_CROSSBAR_VENV:-$HOME/.cache/buildbot_furl-crossbar}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ -x "$VENV/bin/crossbar" ] &&
   [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("crossbar"))' 2>/dev/null)" = 26.10.1 ]; then
  exit 0
fi
echo "setting up crossbar in $VENV (a few minutes) ..." >&2
"$PY" -m venv "$VENV"
log="$VENV/pip-install.log"
if ! "$VENV/bin/python" -m pip install crossbar==26.10.1 >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "error: installing crossbar failed (full log: $log)" >&2
  exit 1
fi
