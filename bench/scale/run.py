#!/usr/bin/env python
"""How one furl-master copes with many workers.

    python -m bench.scale [--sizes 250,1000] [--children 4] [--idle 20]
                          [--bound 300] [--keys DIR] [--json FILE] [--keep]

For each size N (default 250 and 1000; ``--sizes 250,1000,2000`` for more,
10000 only when asked): a fresh master made with ``furl-master
create-master`` and started with ``furl-master start`` in a temp dir,
listening on 127.0.0.1 with its default settings (listen backlog, keepalive).
Worker w1 is added with ``furl-master create-worker``, w2..wN the same way
in-process (buildbot_furl.furlsfile.update, what create-worker runs; N
CLI processes would take N seconds).  N simulated workers, each a real
WorkerService with its own Tub key (cached in ``--keys``, default
~/.cache/buildbot_furl-bench/keys), run in ``--children`` processes
(bench/scale/children.py ``fleet``), each child many services in one
reactor, RLIMIT_NOFILE raised to the hard limit.  Measured, in order:

* cold start: every child starts all its workers at once; the time from
  ``go`` until the last worker's attach answer (connection failures and
  reconnect backoff included);
* RSS per idle worker: (VmRSS with N attached, 3 s after the last attach
  - VmRSS with 0 attached, same master, all N lines loaded) / N;
* idle CPU: utime+stime of the master over ``--idle`` s with N attached
  (keepalives only);
* run: ``furl-master run wK -- true`` wall time, median of 3 (a new CLI
  process each: about a second of it is Python start-up, so
  ``furl-master status`` is timed too, for comparison);
* reload +1: one line added to workers.furls (N+1 lines), SIGHUP, until
  the master logs ``worker ... added``; meanwhile a stall probe child times
  an admin call every 20 ms (bench/scale/children.py ``stall``): the
  longest one, and the longest before the reload for comparison;
* restart: ``furl-master stop``, ``furl-master start``; the time from the
  start command until every worker has attached again (they redial by
  themselves; their backoff is what it is);
* reload to 10 000 lines: as reload +1, lines added (no worker behind them)
  up to 10 000 in all.

Prints a table per size and how each figure grows with N; ``--json FILE``
writes the figures.  Exit code 1 if at some size not all workers attached
within ``--bound`` seconds (cold start or restart).  Loopback only; every
process it starts is stopped by pid (buildbot_furl.testing.procs).
The master and the CLI calls are buildbot_furl.testing.rig's Rig.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import resource
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results_file
from buildbot_furl.testing.linechild import LineChild
from buildbot_furl.testing.procs import HZ, Procs, proc_rss_kb, proc_ticks
from buildbot_furl.testing.rig import Rig, keep_or_remove, log_tail, pct, say

DEFAULT_KEYS = Path.home() / ".cache" / "buildbot_furl-bench" / "keys"
RELOAD_LINES = 10_000
SETTLE = 3.0
CHILDREN = "bench.scale.children"  # the fleet's and the stall probe's module


# -- pure helpers (tests/unit/test_bench_scale.py) --------------------------------------

def split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` dealt round-robin into at most ``parts`` non-empty lists."""
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


#: (key, label, unit) of each figure, in table order
FIGURES = [
    ("cold_s", "cold start: all N attached", "s"),
    ("cold_p50_s", "cold start: median worker attached", "s"),
    ("cold_failures", "cold start: failed connection attempts", ""),
    ("cold_max_delay_s", "cold start: longest reconnect delay", "s"),
    ("rss0_mib", "master RSS, 0 attached (N lines loaded)", "MiB"),
    ("rssN_mib", "master RSS, N attached", "MiB"),
    ("rss_per_worker_kib", "master RSS per idle worker", "KiB"),
    ("idle_cpu_pct", "master CPU, idle, N attached", "%"),
    ("run_s", "furl-master run wK -- true (median of 3)", "s"),
    ("status_s", "furl-master status (median of 3)", "s"),
    ("reload1_s", "reload, +1 line (N+1 lines), to logged", "s"),
    ("reload1_stall_ms", "longest admin call during it", "ms"),
    ("probe_base_ms", "longest admin call before reloads", "ms"),
    ("restart_stop_s", "furl-master stop", "s"),
    ("restart_s", "restart: start command to all attached", "s"),
    ("restart_after_listen_s", "restart: start returned to all attached", "s"),
    ("restart_failures", "restart: failed connection attempts", ""),
    ("restart_max_delay_s", "restart: longest reconnect delay", "s"),
    ("rss_restart_per_worker_kib", "RSS per worker after the restart", "KiB"),
    ("reload10k_s", "reload to 10 000 lines, to last logged", "s"),
    ("reload10k_stall_ms", "longest admin call during it", "ms"),
]


def fmt(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        s = f"{v:.0f}" if abs(v) >= 100 or unit == "ms" else f"{v:.2f}" if abs(v) < 10 \
            else f"{v:.1f}"
    else:
        s = str(v)
    return f"{s} {unit}".strip() if unit not in ("%",) else f"{s}%"


def growth(first: Any, last: Any, n0: int, n1: int) -> str:
    """How a figure grew from size n0 to n1, next to how N grew."""
    if not isinstance(first, (int, float)) or not isinstance(last, (int, float)) or n1 == n0:
        return "-"
    if first == 0:
        return "from 0" if last else "0 → 0"
    return f"×{last / first:.2f} (N ×{n1 / n0:g})"


def table(results: list[dict[str, Any]]) -> str:
    sizes = [r["n"] for r in results]
    head = "| figure | " + " | ".join(f"N = {n}" for n in sizes) + \
        (" | growth |" if len(sizes) > 1 else " |")
    rows = [head, "|---" * (len(sizes) + 1 + (len(sizes) > 1)) + "|"]
    for key, label, unit in FIGURES:
        cells = [fmt(r.get(key), unit) for r in results]
        g = [growth(results[0].get(key), results[-1].get(key), sizes[0], sizes[-1])] \
            if len(sizes) > 1 else []
        rows.append(f"| {label} | " + " | ".join(cells + g) + " |")
    return "\n".join(rows)


# -- one size -------------------------------------------------------------------------

class Fleet:
    """The fleet children; sums their ``count`` lines."""

    def __init__(self, procs: Procs, tmp: Path, names: list[str], furls: dict[str, str],
                 children: int, keys: Path) -> None:
        self.children: list[LineChild] = []
        self.last: dict[int, dict[str, Any]] = {}
        for i, part in enumerate(split(names, children)):
            spec = tmp / f"fleet{i}.json"
            spec.write_text(json.dumps([[n, furls[n]] for n in part]))
            self.children.append(LineChild(procs, "fleet", {
                "spec": str(spec), "keys": str(keys), "dir": str(tmp / f"fleet{i}")},
                tmp / f"fleet{i}.log", CHILDREN))

    def ready(self, timeout: float) -> None:
        for c in self.children:
            c.expect("ready", timeout)

    def go(self) -> float:
        for c in self.children:
            c.send("go")
        wall = time.time()
        for c in self.children:
            c.expect("started", 60)
        return wall

    def poll(self) -> None:
        for i, c in enumerate(self.children):
            while True:
                try:
                    line = c.lines.get_nowait()
                except queue.Empty:
                    break
                if line["kind"] == "count":
                    self.last[i] = line
                elif line["kind"] in ("eof", "error"):
                    raise RuntimeError(f"fleet child {i} ended or failed: {line}")

    def report(self, since: float) -> dict[str, Any]:
        """Every child's attach times after ``since``, failures, longest delay."""
        attached: list[float | None] = []
        failures, delay, why = 0, 0.0, set()
        for c in self.children:
            c.send(f"report {since!r}")
        for c in self.children:
            r = c.expect("report", 30)
            attached += r["attached"]
            failures += r["failures"]
            delay = max(delay, r["max_delay"])
            why |= set(r["why"])
        return {"attached": attached, "failures": failures, "max_delay": delay,
                "why": sorted(why)[:5]}

    def wait_all(self, since: float, n: int, bound: float) -> dict[str, Any]:
        """Until all n have attached after ``since`` (or ``bound`` s pass)."""
        deadline = since + bound
        next_say = time.time() + 5
        while True:
            self.poll()
            r = self.report(since)
            got = sum(1 for t in r["attached"] if t is not None)
            if got == n or time.time() > deadline:
                break
            if time.time() >= next_say:
                say(f"    {time.time() - since:5.1f} s: {got}/{n} attached, "
                    f"{r['failures']} failed attempts, longest delay {r['max_delay']:.1f} s")
                next_say += 5
            time.sleep(0.5)
        times = sorted(t - since for t in r["attached"] if t is not None)
        return {"all": got == n, "got": got, "last": times[-1] if got == n else None,
                "p50": pct(times, 50), "failures": r["failures"], "max_delay": r["max_delay"],
                "why": r["why"]}

    def stop(self) -> None:
        for c in self.children:
            with contextlib.suppress(Exception):
                c.stop()


def add_lines(rig: Rig, names: list[str], template: Any) -> None:
    """Append workers to workers.furls as create-worker does (one locked, atomic write)."""
    from buildbot_furl import furlsfile
    from buildbot_furl.furl import Furl, new_swissnum

    with furlsfile.update(str(rig.mdir / "workers.furls"), template.tubid) as ff:
        for name in names:
            ff.add(name, Furl(template.tubid, template.hints, new_swissnum()))


def timed_reload(rig: Rig, names: list[str], template: Any, stall: LineChild,
                 timeout: float = 300) -> tuple[float, float]:
    """Add ``names``, SIGHUP; (seconds until the master logged the last one added,
    longest stall-probe call from the write until 1 s after that)."""
    log = rig.mdir / "master.log"
    offset = log.stat().st_size
    t0 = time.time()
    add_lines(rig, names, template)
    os.kill(rig.master_pid, signal.SIGHUP)
    # one by one ("worker NAME added") for a few, summed up ("... to NAME)") for many
    wants = (f"worker {names[-1]} added", f" to {names[-1]})")
    want = wants[0]
    deadline = time.monotonic() + timeout
    seen = ""
    while not any(w in seen for w in wants):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the master did not log {want!r} in {timeout:.0f} s")
        time.sleep(0.005)
        end = log.stat().st_size
        seen = seen[-200:] + log_tail(log, offset, end)
        offset = end
    took = time.time() - t0
    time.sleep(1.0)
    return took, longest(stall, t0)


def longest(stall: LineChild, since: float) -> float:
    """The longest stall-probe call that began at or after ``since`` (s) — calls
    still pending count from their start until now."""
    worst = 0.0
    last_end = since
    while True:
        try:
            line = stall.lines.get_nowait()
        except queue.Empty:
            break
        if line["kind"] == "lat" and line["wall"] >= since:
            worst = max(worst, line["seconds"])
            last_end = max(last_end, line["wall"] + line["seconds"])
    return max(worst, time.time() - last_end - 0.02 if last_end > since else 0.0)


def run_size(n: int, args: argparse.Namespace, keys: Path) -> dict[str, Any]:
    from buildbot_furl.furl import parse_furl

    tmp = Path(tempfile.mkdtemp(prefix=f"furl-scale{n}."))
    procs = Procs(tmp)
    rig = Rig(tmp, procs, n)
    out: dict[str, Any] = {"n": n, "children": min(args.children, n)}
    fleet: Fleet | None = None
    stall: LineChild | None = None
    try:
        rig.create_master()
        template = parse_furl(rig.create_worker(rig.names[0]))
        add_lines(rig, rig.names[1:], template)
        from buildbot_furl import furlsfile
        furls = {e.name: str(e.furl) for e in
                 furlsfile.read(str(rig.mdir / "workers.furls"), template.tubid).entries}
        pid = rig.start_master()
        say(f"N = {n}: master pid {pid} on 127.0.0.1:{rig.port}, {len(furls)} lines; "
            f"temp dir {tmp}")
        t = time.monotonic()
        fleet = Fleet(procs, tmp, rig.names, furls, args.children, keys)
        fleet.ready(max(300.0, n * 0.2))
        out["fleet_ready_s"] = time.monotonic() - t
        say(f"  {len(fleet.children)} fleet children ready in {out['fleet_ready_s']:.1f} s "
            "(keys cached or made)")
        time.sleep(1.0)
        rss0 = proc_rss_kb(pid) or 0

        say("  cold start: all workers at once")
        go = fleet.go()
        cold = fleet.wait_all(go, n, args.bound)
        out.update(cold_all=cold["all"], cold_attached=cold["got"], cold_s=cold["last"],
                   cold_p50_s=cold["p50"], cold_failures=cold["failures"],
                   cold_max_delay_s=cold["max_delay"], cold_why=cold["why"])
        if not cold["all"]:
            say(f"  only {cold['got']}/{n} attached within {args.bound:.0f} s")
            return out
        say(f"  all {n} attached in {cold['last']:.1f} s ({cold['failures']} failed attempts)")
        time.sleep(SETTLE)
        rssn = proc_rss_kb(pid) or 0
        out.update(rss0_mib=rss0 / 1024, rssN_mib=rssn / 1024,
                   rss_per_worker_kib=(rssn - rss0) / n)

        say(f"  idle: {args.idle:.0f} s")
        t0, c0 = time.monotonic(), proc_ticks(pid) or 0
        time.sleep(args.idle)
        out["idle_cpu_pct"] = 100.0 * ((proc_ticks(pid) or 0) - c0) / HZ / \
            (time.monotonic() - t0)

        say("  run and status, 3 each")
        runs = [rig.run_true(name) for name in (rig.names[0], rig.names[n // 2], rig.names[-1])]
        if not all(s.ok for s in runs):
            out["run_failures"] = [s.detail for s in runs if not s.ok]
        out["run_s"] = statistics.median(s.seconds for s in runs if s.ok) \
            if any(s.ok for s in runs) else None
        st = []
        for _ in range(3):
            t = time.monotonic()
            rig.status()
            st.append(time.monotonic() - t)
        out["status_s"] = statistics.median(st)

        say("  reload +1 line, stall probe on")
        stall = LineChild(procs, "stall", {"master": str(rig.mdir), "interval": 0.02},
                          tmp / "stall.log", CHILDREN)
        stall.expect("ready", 60)
        stall.expect("connected", 60)
        base_from = time.time()
        time.sleep(3.0)
        out["probe_base_ms"] = longest(stall, base_from) * 1000
        took, worst = timed_reload(rig, ["extra1"], template, stall)
        out.update(reload1_s=took, reload1_stall_ms=worst * 1000)
        stall.stop()
        stall = None

        say("  restart: furl-master stop, furl-master start")
        t = time.monotonic()
        rig.cli("master", "stop", "-d", str(rig.mdir))
        out["restart_stop_s"] = time.monotonic() - t
        fleet.poll()
        start_wall = time.time()
        pid = rig.start_master()
        listening = time.time() - start_wall
        back = fleet.wait_all(start_wall, n, args.bound)
        out.update(restart_all=back["all"], restart_attached=back["got"],
                   restart_s=back["last"],
                   restart_after_listen_s=back["last"] - listening if back["all"] else None,
                   restart_failures=back["failures"], restart_max_delay_s=back["max_delay"],
                   restart_why=back["why"])
        if not back["all"]:
            say(f"  only {back['got']}/{n} back within {args.bound:.0f} s")
            return out
        say(f"  all back in {back['last']:.1f} s ({back['failures']} failed attempts, "
            f"longest delay {back['max_delay']:.1f} s)")
        time.sleep(SETTLE)
        # a fresh master: its RSS with 0 attached is not known; take rss0 of this run
        out["rss_restart_per_worker_kib"] = ((proc_rss_kb(pid) or 0) - rss0) / n

        say(f"  reload to {RELOAD_LINES} lines, stall probe on")
        stall = LineChild(procs, "stall", {"master": str(rig.mdir), "interval": 0.02},
                          tmp / "stall2.log", CHILDREN)
        stall.expect("ready", 60)
        stall.expect("connected", 60)
        time.sleep(2.0)
        longest(stall, time.time())  # drop the samples so far
        more = [f"bulk{i}" for i in range(RELOAD_LINES - n - 1)]
        if more:
            took, worst = timed_reload(rig, more, template, stall)
            out.update(reload10k_s=took, reload10k_stall_ms=worst * 1000)
        return out
    finally:
        if stall is not None:
            with contextlib.suppress(Exception):
                stall.stop()
        if fleet is not None:
            fleet.stop()
        procs.cleanup()
        keep_or_remove(tmp, args.keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250,1000",
                    help="comma-separated worker counts (default 250,1000)")
    ap.add_argument("--children", type=int, default=4,
                    help="fleet processes the workers are spread over (default 4)")
    ap.add_argument("--idle", type=float, default=20, help="idle CPU window, s (default 20)")
    ap.add_argument("--bound", type=float, default=300,
                    help="seconds all workers get to attach, cold or after the restart "
                    "(default 300)")
    ap.add_argument("--keys", default=str(DEFAULT_KEYS),
                    help=f"the worker key cache (default {DEFAULT_KEYS})")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs)")
    ap.add_argument("--json", metavar="FILE", nargs="?", const=results_file("scale"),
                    help="also write the figures as JSON "
                    "(FILE; default bench/results/scale.json)")
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        ap.error("--sizes: comma-separated integers")
    if not sizes or min(sizes) < 1 or max(sizes) >= RELOAD_LINES or args.children < 1:
        ap.error(f"sizes must be 1 to {RELOAD_LINES - 1}; --children at least 1")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the master daemon inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    say(f"RLIMIT_NOFILE {soft} -> {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} "
        f"(hard {hard}); somaxconn {Path('/proc/sys/net/core/somaxconn').read_text().strip()}")
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for n in sizes:
            t = time.monotonic()
            results.append(run_size(n, args, Path(args.keys)))
            results[-1]["bench_seconds"] = time.monotonic() - t
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    print(table(results))
    say(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2) + "\n")
    ok = all(r.get("cold_all") and r.get("restart_all") for r in results)
    return 0 if ok else 1

