#!/usr/bin/env bash
# Build the sdist and the wheel as a user would, check the wheel's contents,
# install it (not editable) into a fresh virtualenv and use it there: create
# a master and a worker on 127.0.0.1, attach, run one command, stop both.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/furl-wheel.XXXXXX")"
cleanup() {
  for pidfile in "$OUT/w/furl-worker.pid" "$OUT/m/furl-master.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$OUT"
}
trap cleanup EXIT
step() { printf 'wheel-check: %s\n' "$*" >&2; }

step "python -m build (sdist, then the wheel from the sdist)"
python -m build --outdir "$OUT/dist" "$ROOT" >"$OUT/build.log" 2>&1 ||
  { tail -n 30 "$OUT/build.log" >&2; exit 1; }
WHEEL="$(ls "$OUT"/dist/*.whl)"
step "check-wheel-contents $(basename "$WHEEL")"
check-wheel-contents "$WHEEL" >&2
step "every module of the source tree is in the wheel"
python - "$ROOT" "$WHEEL" <<'PY'
import pathlib, sys, zipfile
root, wheel = pathlib.Path(sys.argv[1]), sys.argv[2]
want = {str(p.relative_to(root)) for p in (root / "buildbot_furl").rglob("*.py")}
have = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
missing = sorted(want - have)
if missing:
    sys.exit(f"the wheel lacks: {', '.join(missing)}")
PY

step "install it into a fresh virtualenv"
python -m venv "$OUT/venv"
V="$OUT/venv/bin"
"$V/python" -m pip install -q -r "$ROOT/requirements.txt" >"$OUT/pip.log" 2>&1 &&
  "$V/python" -m pip install -q --no-deps "$WHEEL" >>"$OUT/pip.log" 2>&1 ||
  { tail -n 30 "$OUT/pip.log" >&2; exit 1; }

cd "$OUT"  # nothing of the checkout on sys.path from here on
unset PYTHONPATH
where="$("$V/python" -c 'import buildbot_furl, os; print(os.path.dirname(buildbot_furl.__file__))')"
case "$where" in "$OUT/venv/"*) ;; *) echo "imported from $where, not the wheel" >&2; exit 1;; esac
"$V/python" - <<'PY'
import importlib, pkgutil, buildbot_furl
for m in pkgutil.walk_packages(buildbot_furl.__path__, "buildbot_furl."):
    if not m.name.startswith("buildbot_furl.buildbot"):  # needs the [buildbot] extra
        importlib.import_module(m.name)
PY

step "smoke test from the installed wheel"
"$V/furl-master" --version >&2
"$V/furl-worker" --version >&2
PORT="$("$V/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$V/furl-master" create-master -d m --location "tcp:127.0.0.1:$PORT" \
  --port "tcp:$PORT:interface=127.0.0.1" 2>/dev/null
"$V/furl-master" create-worker -d m w1 -o w1.furl 2>/dev/null
"$V/furl-master" start -d m 2>/dev/null
"$V/furl-worker" create-worker w --furl-file w1.furl 2>/dev/null
"$V/furl-worker" start w 2>/dev/null
set +e
out="$("$V/furl-master" run -d m w1 -- sh -c 'echo smoke-ok; exit 7')"
rc=$?
set -e
"$V/furl-worker" stop w 2>/dev/null
"$V/furl-master" stop -d m 2>/dev/null
if [ "$out" != "smoke-ok" ] || [ "$rc" != 7 ]; then
  echo "wheel-check: run gave exit $rc and output '$out' (want 7 and 'smoke-ok')" >&2
  exit 1
fi
step "ok: the wheel installs and works"
