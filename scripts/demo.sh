#!/usr/bin/env bash
# The demo: a master and a worker on 127.0.0.1 in a temp dir, attached over a
# FURL, and a command run on the worker through it. Cleans up after itself.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
DEMO="$(mktemp -d "${TMPDIR:-/tmp}/furl-demo.XXXXXX")"
PORT="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cleanup() {
  for pidfile in "$DEMO/worker/furl-worker.pid" "$DEMO/master/furl-master.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 0.5
  rm -rf "$DEMO"
}
trap cleanup EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say furl-master create-master -d "$DEMO/master" --location "tcp:127.0.0.1:$PORT"
furl-master create-master -d "$DEMO/master" --location "tcp:127.0.0.1:$PORT" \
  --port "tcp:$PORT:interface=127.0.0.1"
# the FURL is a secret: it goes through a new 0600 file, never a command line
# (which 'ps' shows to every user), as the README advises
say furl-master create-worker -d "$DEMO/master" demo-worker -o "$DEMO/demo-worker.furl"
furl-master create-worker -d "$DEMO/master" demo-worker --comment "made by the demo" \
  -o "$DEMO/demo-worker.furl"
say furl-master start -d "$DEMO/master"
furl-master start -d "$DEMO/master"
say furl-worker create-worker "$DEMO/worker" --furl-file "$DEMO/demo-worker.furl" \
  '&&' rm "$DEMO/demo-worker.furl"
furl-worker create-worker "$DEMO/worker" --furl-file "$DEMO/demo-worker.furl"
rm "$DEMO/demo-worker.furl"  # the worker keeps its own 0600 copy, master.furl
say furl-worker start "$DEMO/worker"
furl-worker start "$DEMO/worker"
say furl-master list-workers -d "$DEMO/master"
furl-master list-workers -d "$DEMO/master"
if furl-master run --help >/dev/null 2>&1; then
  say "furl-master run -d $DEMO/master demo-worker -- sh -c 'echo \"hello from \$(hostname)\"; uname -sr; echo \"to stderr\" >&2; exit 3'"
  set +e
  furl-master run -d "$DEMO/master" demo-worker -- sh -c 'echo "hello from $(hostname)"; uname -sr; echo "to stderr" >&2; exit 3'
  rc=$?
  set -e
  echo "(exit code passed through: $rc)"
fi
say furl-worker stop "$DEMO/worker" '&&' furl-master stop -d "$DEMO/master"
furl-worker stop "$DEMO/worker"
furl-master stop -d "$DEMO/master"
echo
echo "demo finished: master and worker talked over an encrypted, key-pinned FURL."
