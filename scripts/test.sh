#!/usr/bin/env bash
# Run the test suite in the project virtualenv (made on first use).
#   scripts/test.sh            both tiers: tests/unit and tests/system
#   scripts/test.sh unit       tests/unit only: no process started, well under a minute
#   scripts/test.sh ARGS...    pytest ARGS (e.g. a file, -k, -n), as before
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
if [ "${1:-}" = unit ]; then
  shift
  # one process: the unit tier is quicker than starting pytest-xdist's workers
  exec python -m pytest -n 0 tests/unit "$@"
fi
exec python -m pytest "$@"
