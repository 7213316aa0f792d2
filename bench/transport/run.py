#!/usr/bin/env python
"""Side-by-side transport benchmark: buildbot_furl vs Buildbot PB vs raw TLS.

    python -m bench.transport [--quick] [--json [FILE]] [--transports LIST]

This process is the *master* side of every transport (sides/), with
one Twisted reactor; each worker runs in its own child process
(child.py) with its own reactor.  The transports are compared in the
same run, interleaved run by run, and reported as ratios (report.py);
the metrics are in metrics.py.  Numbers are for comparing transports
*in one run*; see docs/performance.md.  Nothing here is a test: no timing
is ever asserted.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.python.failure import Failure

from bench import results_file
from bench.transport import report
from bench.transport.children import Children
from bench.transport.clock import now
from bench.transport.metrics import METRICS, PROFILES, ConnectAttach, Samples
from bench.transport.progress import note
from bench.transport.sides import DEFAULT_TRANSPORTS, SIDES, TRANSPORTS, Side
from bench.transport.testfiles import MiB, make_cert, make_test_data
from buildbot_furl.testing.rig import keep_or_remove


async def bench(args: argparse.Namespace, tmp: Path, children: Children) -> dict[str, Any]:
    """One whole run; returns its report."""
    load_before = os.getloadavg()[0]
    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    note(f"creating test files ({profile['stream']} MiB text, "
         f"{max(profile['upload'], profile['download'])} MiB binary) in {tmp}")
    data = make_test_data(tmp / "data", profile)
    sides = await start_sides(args.transports, tmp, children, args.runs)
    samples = Samples(args.transports)
    await ConnectAttach(profile).run_all(sides, children, args.runs, samples)
    for side in sides.values():
        await side.prepare()
    for metric in [m(profile) for m in METRICS[1:] if m.key in args.only]:
        for run in range(args.runs):
            for side in sides.values():
                if metric.key in side.supports:
                    await metric.sample(side, data, run, samples)
        note(samples.summary(metric))
    await children.stop_all()
    for side in sides.values():
        with contextlib.suppress(Exception):
            await side.teardown()
    return report.build(profile_name, profile, args.runs, args.transports, samples,
                        load_before)


async def start_sides(keys: list[str], tmp: Path, children: Children, runs: int
                      ) -> dict[str, Side]:
    """Each transport's master side, listening for ``runs`` workers."""
    need_cert = any(SIDES[k].needs_cert for k in keys)
    cert = make_cert(tmp) if need_cert else None
    sides = {}
    for key in keys:
        sides[key] = SIDES[key](tmp, children, cert)
        await sides[key].setup(runs)
    return sides


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 60 s)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per metric (median)")
    parser.add_argument("--json", metavar="FILE", nargs="?", const=results_file("transport"),
                        help="also write the results as JSON "
                             "(FILE; default bench/results/transport.json)")
    parser.add_argument("--transports", default=DEFAULT_TRANSPORTS,
                        help=f"comma-separated, from: {','.join(TRANSPORTS)} "
                             f"(default {DEFAULT_TRANSPORTS}; the *nd ones are PB with "
                             "TCP_NODELAY on both ends, a diagnostic)")
    parser.add_argument("--profile-workers", action="store_true",
                        help="run each worker under cProfile (stats in the kept tmpdir); "
                             "numbers are then not comparable")
    parser.add_argument("--only", default=",".join(m.key for m in METRICS[1:]),
                        help="comma-separated metrics to run besides connect "
                             "(stream,upload,download,stat,true)")
    parser.add_argument("--tmpdir", default=None,
                        help="where test files go (default: /dev/shm if it has room, so "
                             "that disk writeback does not add noise; else $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    args.only = {m.strip() for m in args.only.split(",") if m.strip()}
    bad = [t for t in args.transports if t not in TRANSPORTS]
    bad += [m for m in args.only if m not in {x.key for x in METRICS[1:]}]
    if bad or not args.transports or args.runs < 1:
        parser.error(f"unknown transport(s)/metric(s) {bad}" if bad else "nothing to run")
    args.keep = args.keep or args.profile_workers
    return args


def default_tmpdir() -> str | None:
    """/dev/shm when it is writable with room for the files (about 0.75 GiB
    at peak for the full profile): the benchmark is about transports, and
    page-cache writeback of the copies is the largest source of noise."""
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize > 3 * 1024 * MiB:
        return shm
    return None


def run_reactor(args: argparse.Namespace, tmp: Path, children: Children) -> dict[str, Any]:
    """Run the benchmark under the reactor.  Every child is stopped by pid
    whatever happens: at the end of the run, at reactor shutdown (Ctrl-C),
    and at exit.  Returns {"report": ...} or {"error": ..., "traceback": ...}."""
    atexit.register(children.kill_all_now)
    reactor.addSystemEventTrigger("before", "shutdown", children.kill_all_now)
    outcome: dict[str, Any] = {}

    async def run() -> None:
        t0 = now()
        try:
            outcome["report"] = await bench(args, tmp, children)
            outcome["report"]["wall_seconds"] = round(now() - t0, 1)
        except BaseException as e:  # reported by the caller, after every process is gone
            outcome["error"] = e
            outcome["traceback"] = Failure().getTraceback()
        finally:
            await children.stop_all()

    reactor.callWhenRunning(
        lambda: defer.Deferred.fromCoroutine(run()).addBoth(lambda _: reactor.stop()))
    reactor.run()
    children.kill_all_now()
    return outcome


def remove_test_files(tmp: Path) -> None:
    """Everything but the logs: the files are large and may sit in RAM (/dev/shm)."""
    for entry in tmp.iterdir():
        if entry.name != "logs":
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(OSError):
                entry.unlink()


def main() -> int:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="furlbench-", dir=args.tmpdir or default_tmpdir()))
    tmp.chmod(0o700)
    (tmp / "logs").mkdir()
    outcome = run_reactor(args, tmp, Children(tmp / "logs", args.profile_workers))
    if "report" not in outcome:
        note(outcome.get("traceback", "interrupted"))
        if not args.keep:
            remove_test_files(tmp)
        note(f"benchmark failed: {outcome.get('error', 'interrupted')}; "
             f"logs kept in {tmp / 'logs'}")
        return 1
    print(report.tables(outcome["report"]))
    note(f"({outcome['report']['runs']} runs per metric, median; "
         f"{outcome['report']['wall_seconds']} s in all)")
    if args.json:
        report.write_json(outcome["report"], args.json)
    keep_or_remove(tmp, args.keep, note)
    return 0

