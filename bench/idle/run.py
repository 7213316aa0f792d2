"""Idle connections against a master's descriptors (issue 16 item 2).

    python -m bench.idle [--idle 1100] [--nofile 1024] [--hold 30]

A real master (the shared Rig of buildbot_furl/testing/rig.py, default settings) started with a soft
RLIMIT_NOFILE of ``--nofile``, one worker attached; then ``--idle`` TCP
connections that never send a byte, from 127.0.0-3.2-250, held ``--hold`` s.
Meanwhile a new worker starts (``furl-worker start``: returns once attached)
and ``furl-master status`` is timed.  Prints the master's descriptors before
and at the peak, the two timings, how long until the master closed every
idle connection, and the log lines it wrote about them.  Loopback only;
every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

from buildbot_furl.testing.procs import Procs
from buildbot_furl.testing.rig import Rig, say


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed(socks: list[socket.socket]) -> int:
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            n += s.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=1100, help="idle connections (default 1100)")
    ap.add_argument("--nofile", type=int, default=1024,
                    help="the master's soft RLIMIT_NOFILE (default 1024)")
    ap.add_argument("--hold", type=float, default=30,
                    help="seconds to wait for the master to close them all (default 30)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < args.idle + 100:
        ap.error(f"the hard open-files limit ({hard}) is too low for --idle {args.idle}")
    tmp = Path(tempfile.mkdtemp(prefix="furl-idle."))
    procs = Procs(tmp)
    socks: list[socket.socket] = []
    try:
        rig = Rig(tmp, procs, 1)
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))  # the daemons inherit it
        try:
            rig.setup(more_names=("late",))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, args.idle + 100), hard))
        pid = rig.master_pid
        log = rig.mdir / "master.log"
        start = log.stat().st_size
        before = fds(pid)
        say(f"master pid {pid}, soft RLIMIT_NOFILE {args.nofile}: {before} descriptors")
        t0 = time.monotonic()
        for i in range(args.idle):
            s = socket.socket()
            s.bind((f"127.0.{i % 4}.{2 + (i // 4) % 249}", 0))
            s.connect(("127.0.0.1", rig.port))
            socks.append(s)
        opened = time.monotonic() - t0
        time.sleep(0.5)
        peak = fds(pid)
        t1 = time.monotonic()
        rig.status()
        status_s = time.monotonic() - t1
        rig.cli("worker", "create-worker", str(rig.wdir("late")), "--furl-file",
                str(rig.furl_file("late")))
        t2 = time.monotonic()
        rig.start_worker("late")  # returns once it has attached
        attach_s = time.monotonic() - t2
        while closed(socks) < len(socks) and time.monotonic() - t0 < args.hold:
            time.sleep(0.2)
        all_closed = closed(socks)
        gone_s = time.monotonic() - t0
        st = rig.status()
        added = log.read_text()[start:]
        lines = [ln for ln in added.splitlines() if "closed" in ln and "connection" in ln]
        figures = {
            "idle": args.idle, "nofile": args.nofile, "opened_s": round(opened, 2),
            "fds_before": before, "fds_peak": peak, "status_s": round(status_s, 2),
            "worker_start_attached_s": round(attach_s, 2), "closed": all_closed,
            "all_closed_after_s": round(gone_s, 1), "log_lines": len(lines),
            "log_bytes": sum(len(ln) + 1 for ln in lines),
            "connections": st["refusals"].get("connections"),
        }
        print(json.dumps(figures, indent=2))
        return 0 if all_closed == len(socks) else 1
    finally:
        for s in socks:
            s.close()
        procs.cleanup()


if __name__ == "__main__":
    sys.exit(main())
