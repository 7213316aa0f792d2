#!/usr/bin/env bash
# A real Buildbot master with a FURL worker, on 127.0.0.1, in a temp dir:
# create both, start both, run one build, print its result, stop both.
#
# Run it inside the project's virtualenv (buildbot, furl-master and
# furl-worker on PATH):   bash examples/buildbot-demo.sh
# KEEP=1 keeps the temp dir (logs, state.sqlite) for a look afterwards.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for tool in python buildbot furl-master furl-worker; do
  command -v "$tool" >/dev/null || { echo "error: $tool not on PATH (activate the venv)" >&2; exit 1; }
done

DEMO="$(mktemp -d "${TMPDIR:-/tmp}/buildbot-furl-demo.XXXXXX")"
MASTER="$DEMO/master"
WORKER="$DEMO/worker"
read -r PORT CHANGE_PORT < <(python - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
MASTER_PID=""
WORKER_PID=""

stop_pid() {  # stop_pid PID NAME: SIGTERM, wait up to 15 s, then SIGKILL
  local pid="$1" name="$2"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || { echo "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  echo "killed $name (pid $pid)"
}

cleanup() {
  local rc=$?
  [ -z "$WORKER_PID" ] && [ -f "$WORKER/furl-worker.pid" ] && WORKER_PID="$(cat "$WORKER/furl-worker.pid")"
  [ -z "$MASTER_PID" ] && [ -f "$MASTER/twistd.pid" ] && MASTER_PID="$(cat "$MASTER/twistd.pid")"
  stop_pid "$WORKER_PID" furl-worker
  stop_pid "$MASTER_PID" "buildbot master"
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
    echo "kept $DEMO (master log: $MASTER/twistd.log, worker log: $WORKER/worker.log)"
  else
    rm -rf "$DEMO"
  fi
}
trap cleanup EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say buildbot create-master "$MASTER"
buildbot create-master -q "$MASTER"

say furl-master create-master -d "$MASTER" --location "tcp:127.0.0.1:$PORT" --port "tcp:$PORT:interface=127.0.0.1"
furl-master create-master -d "$MASTER" --location "tcp:127.0.0.1:$PORT" \
  --port "tcp:$PORT:interface=127.0.0.1"

say cp examples/buildbot-master.cfg "$MASTER/master.cfg"
cp "$HERE/buildbot-master.cfg" "$MASTER/master.cfg"

say 'furl-master create-worker -d '"$MASTER"' demo-worker -o furl.txt'
furl-master create-worker -d "$MASTER" demo-worker --comment "buildbot demo" \
    -o "$DEMO/furl.txt"
echo "FURL: $(sed 's#/[^/]*$#/<secret>#' "$DEMO/furl.txt")"

export BUILDBOT_CHANGE_PORT="$CHANGE_PORT"  # master.cfg's optional PBChangeSource
say buildbot checkconfig "$MASTER"
buildbot checkconfig "$MASTER"
say buildbot start "$MASTER"
buildbot start "$MASTER"
MASTER_PID="$(cat "$MASTER/twistd.pid")"

say furl-worker create-worker "$WORKER" --furl-file furl.txt '&&' furl-worker start "$WORKER"
furl-worker create-worker "$WORKER" --furl-file "$DEMO/furl.txt"
furl-worker start "$WORKER"
WORKER_PID="$(cat "$WORKER/furl-worker.pid")"

say buildbot sendchange --master "127.0.0.1:$CHANGE_PORT" --auth demo:demo --who demo --branch main --vc git README
buildbot sendchange --master "127.0.0.1:$CHANGE_PORT" --auth demo:demo --who demo \
  --branch main --vc git --comments "demo change" README

say "waiting for the build (reading $MASTER/state.sqlite)"
python - "$MASTER/state.sqlite" <<'EOF'
import sqlite3, sys, time
from buildbot.db.logs import LogsConnectorComponent
from buildbot.process.results import Results

db = sqlite3.connect(sys.argv[1], timeout=10)
deadline = time.monotonic() + 90
while True:
    row = db.execute("SELECT id, number, results, state_string FROM builds "
                     "WHERE complete_at IS NOT NULL ORDER BY id LIMIT 1").fetchone()
    if row:
        break
    if time.monotonic() > deadline:
        sys.exit("no build finished within 90 s")
    time.sleep(0.5)
buildid, number, result, state = row
print(f"build #{number} on builder 'hello': {Results[result].upper()} ({state})")
for stepid, name, res, text in db.execute(
        "SELECT id, name, results, state_string FROM steps WHERE buildid=? ORDER BY number",
        (buildid,)):
    print(f"  step {name:20} {Results[res] if res is not None else '-':9} {text}")
    for logid, in db.execute("SELECT id FROM logs WHERE stepid=? AND name='stdio'", (stepid,)):
        for content, comp in db.execute(
                "SELECT content, compressed FROM logchunks WHERE logid=? ORDER BY first_line",
                (logid,)):
            text = LogsConnectorComponent.COMPRESSION_BYID[comp].read(content).decode()
            for line in text.splitlines():
                if line[:1] == "o":  # stdout lines only
                    print(f"      | {line[1:]}")
sys.exit(0 if result == 0 else 1)
EOF
say ls "$MASTER/results"
ls "$MASTER/results" && cat "$MASTER"/results/*.txt
