#!/usr/bin/env bash
# The Buildbot tier of the tests against every version line of
# supported-versions.txt other than the pinned one (scripts/test.sh runs that):
# one cached virtualenv per line in $FURL_MATRIX_CACHE (default
# ~/.cache/buildbot_furl-matrix), requirements*.txt with the line's versions
# instead of the pins, this tree installed editable. Remade only when
# requirements*.txt, setup.py or the line change (a stamp, as bootstrap.sh).
# One summary line per version; exit 1 if any line fails.
#   scripts/buildbot-matrix.sh [PYTEST ARGS...]    (-n 2 unless you give -n)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FURL_MATRIX_CACHE:-$HOME/.cache/buildbot_furl-matrix}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
cd "$ROOT"

# The Buildbot tier: every test file that imports Buildbot's master code or the
# plugin (tests/unit/test_versions.py keeps this list complete), and the
# worker's builder list. Not test_cluster.py (crossbar and PostgreSQL, slow) nor
# test_soak.py (a minute of builds by design).
TIER=(
  tests/unit/test_builder_list.py
  tests/unit/test_cluster_heartbeat.py
  tests/unit/test_connection_interface.py
  tests/unit/test_transfer_contract.py
  tests/system/test_buildbot_detach.py
  tests/system/test_buildbot_drain.py
  tests/system/test_buildbot_names.py
  tests/system/test_buildbot_plugin.py
  tests/system/test_buildbot_refused_worker.py
  tests/system/test_buildbot_side_by_side.py
  tests/system/test_connection.py
  tests/system/test_logfiles.py
  tests/system/test_transfer_e2e.py
)
args=("$@")
case " $* " in *" -n "*|*" -n"[0-9]*) ;; *) args=(-n 2 "${args[@]}");; esac

# NAME==VERSION pins of both requirements files, lower-cased names
pins="$(grep -hiE '^[a-z0-9_.-]+==' requirements.txt requirements-test.txt |
        tr 'A-Z' 'a-z' | sort)"

# make (or reuse) the virtualenv for a line; its path on stdout
venv_for() {
  local line="$1" venv tag want req
  tag="$(echo "$line" | tr -s ' ' | tr ' ' '-')"
  venv="$CACHE/$tag"
  want="$( { cat requirements.txt requirements-test.txt setup.py; echo "$ROOT $line"; } |
          sha256sum | cut -d' ' -f1)"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.furl-stamp" 2>/dev/null)" = "$want" ]; then
    echo "$venv"; return 0
  fi
  echo "buildbot-matrix: setting up $venv ..." >&2
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # the pins, with this line's NAME VERSION pairs in place of the pinned ones
  req="$venv/requirements.txt"
  grep -hvE '^\s*(#|-r|$)' requirements.txt requirements-test.txt > "$req"
  set -- $line
  while [ $# -ge 2 ]; do
    sed -i -E "/^$1==/Id" "$req"
    echo "$1==$2" >> "$req"
    shift 2
  done
  if ! { "$venv/bin/python" -m pip install -r "$req" &&
         "$venv/bin/python" -m pip install --no-deps -e "$ROOT"; } >"$venv/pip-install.log" 2>&1; then
    tail -n 20 "$venv/pip-install.log" >&2
    echo "buildbot-matrix: installing $line failed (log: $venv/pip-install.log)" >&2
    return 1
  fi
  echo "$want" > "$venv/.furl-stamp"
  echo "$venv"
}

rc=0
summary=()
while read -r line; do
  # the pinned line is the main suite's (scripts/test.sh)
  mine="$(set -- $line; while [ $# -ge 2 ]; do echo "$1==$2" | tr 'A-Z' 'a-z'; shift 2; done)"
  if [ -z "$(comm -23 <(echo "$mine" | sort) <(echo "$pins"))" ]; then
    continue
  fi
  start=$SECONDS
  if ! venv="$(venv_for "$line" </dev/null)"; then
    summary+=("FAILED  $line: could not be installed")
    rc=1
    continue
  fi
  log="$venv/pytest.log"
  set +e
  (unset PYTHONPATH; "$venv/bin/python" -m pytest -q -rfEs -p no:cacheprovider "${args[@]}" \
      "${TIER[@]}" </dev/null >"$log" 2>&1)
  status=$?
  set -e
  result="$(grep -E '^=*\s*[0-9]+ (passed|failed|error)' "$log" | tail -n 1 | tr -d '=' |
            sed 's/^ *//;s/ *$//')"
  if [ "$status" = 0 ]; then
    summary+=("ok      $line: ${result:-no result} ($((SECONDS - start)) s)")
  else
    rc=1
    summary+=("FAILED  $line: ${result:-pytest exit $status} ($((SECONDS - start)) s; log: $log)")
    grep -E '^(FAILED|ERROR) ' "$log" | head -n 20 >&2 || true
  fi
done < <(grep -E '^\s*buildbot(-worker)?\s' supported-versions.txt | sed 's/#.*//')

for s in "${summary[@]}"; do
  echo "buildbot-matrix: $s"
done
exit "$rc"
