#!/usr/bin/env python
"""Guess FURLs at a real master by the thousand; measure what it costs everyone else.

    python -m bench.attack [--attempts N] [--connections C] [--addresses A | --same-address]
                           [--workers W] [--seconds S] [--refusal-limit L] [--json FILE]

One furl-master and W furl-workers (real daemons, on 127.0.0.1; created
with furl-master create-master/create-worker and started in a temp dir),
then three phases:

* before (``--baseline`` s): legitimate traffic only;
* the attack: N forged attach attempts (FURLs with the master's TUBID and a
  random swissnum, buildbot_furl.testing.forgery) over C concurrent
  connections, dialed from A source addresses (127.0.0.2, 127.0.0.3, ...),
  until N are made or S seconds pass.  The attacker runs in its own child
  process (bench/attack/children.py), so its CPU is not this process's;
  on a small machine it still competes with the master for cores;
* after (``--after`` s, and by default until the master has written its
  per-minute refusal summary, which comes 60 s after its start and every 60 s).

All the time, legitimate traffic is measured, in three ways:

* attach: a prober child process builds a fresh WorkerService (what the
  furl-worker daemon runs) for an extra worker ``probe`` every 0.25 s and
  times it from ``startService()`` (TCP connect) to the master's attach
  answer, then leaves; TLS, foolscap negotiation, the name lookup and the
  attach call are all in it, process start-up and key generation are not;
* run: ``furl-master run wK -- true`` wall time, a new CLI process each
  time (so about a second of Python start-up is in every sample);
* start: every 4th CLI step a real worker daemon is stopped and
  ``furl-worker start`` is timed (it returns once the new daemon has
  attached; two Python start-ups are in it).

Printed: attempts made, accepted (must be 0), how the rest were turned away
(as the attacker saw it, and the master's counters from ``furl-master
status --json``), master.log bytes and lines added (its refusal lines in
full), latency median/p95 before, during and after, the master's RSS
(/proc/PID/status VmRSS) before, at peak and after, its CPU, and the
attack rate.  Loopback only (every address is in 127.0.0.0/8); every
process it starts is stopped by pid, also on Ctrl-C or an error.  Exit
code 1 if a forged FURL was accepted or a legitimate operation failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import re
import signal
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import results_file
from buildbot_furl.testing.linechild import LineChild
from buildbot_furl.testing.procs import HZ, Procs, proc_rss_kb, proc_ticks
from buildbot_furl.testing.rig import Rig, Sample, keep_or_remove, log_tail, pct, say

SUMMARY_RE = re.compile(r"refused \d+ (more )?attach attempts from")
RESTART_EVERY = 4  # every 4th CLI step restarts a worker daemon instead of a run
CHILDREN = "bench.attack.children"  # the attacker's and the prober's module


class Sampler(threading.Thread):
    """Every 0.2 s: the master's RSS and CPU ticks, the attacker's CPU ticks."""

    def __init__(self, stop: threading.Event, master_pid: int) -> None:
        super().__init__(daemon=True)
        self.stop_event = stop
        self.master_pid = master_pid
        self.attacker_pid: int | None = None
        self.rows: list[dict[str, Any]] = []

    def take(self) -> dict[str, Any]:
        row = {"wall": time.time(), "rss_kb": proc_rss_kb(self.master_pid),
               "master_ticks": proc_ticks(self.master_pid),
               "attacker_ticks": proc_ticks(self.attacker_pid) if self.attacker_pid else None}
        self.rows.append(row)
        return row

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.take()
            self.stop_event.wait(0.2)


def cli_loop(rig: Rig, stop: threading.Event, out: list[Sample]) -> None:
    """``furl-master run`` on each worker in turn; every RESTART_EVERY-th step a
    worker daemon restart instead."""
    i = 0
    while not stop.is_set():
        restart = i % RESTART_EVERY == RESTART_EVERY - 1
        try:
            s = rig.restart_worker(rig.names[(i // RESTART_EVERY) % len(rig.names)]) \
                if restart else rig.run_true(rig.names[i % len(rig.names)])
        except Exception as e:  # noqa: BLE001 - recorded, and the loop goes on
            s = Sample("run", time.time(), 0.0, False, f"{type(e).__name__}: {e}")
        if not stop.is_set() or s.ok:  # a step cut short by the end of the bench is not data
            out.append(s)
        i += 1
        stop.wait(0.1)


def probe_loop(child: LineChild, stop: threading.Event, out: list[Sample]) -> None:
    while not stop.is_set():
        try:
            line = child.lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line["kind"] == "attach":
            why = f"{line['failures']} failed connection(s): {line['why']}" if line["failures"] \
                else ""
            out.append(Sample("attach", line["wall"], line["seconds"], line["ok"], why))
        elif line["kind"] == "eof":
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attempts", type=int, default=5000, help="forged attempts (default 5000)")
    ap.add_argument("--connections", type=int, default=16,
                    help="concurrent attacker connections (default 16)")
    ap.add_argument("--addresses", type=int, default=4,
                    help="attacker source addresses 127.0.0.2... (default 4)")
    ap.add_argument("--same-address", action="store_true",
                    help="the attacker dials from 127.0.0.1, the address of the workers, "
                    "the prober and the CLI (a NAT, a shared build host)")
    ap.add_argument("--workers", type=int, default=2, help="real furl-workers (default 2)")
    ap.add_argument("--seconds", type=float, default=30,
                    help="the attack stops after this long even if N are not made (default 30)")
    ap.add_argument("--baseline", type=float, default=10,
                    help="seconds measured before the attack (default 10)")
    ap.add_argument("--after", type=float, default=5,
                    help="seconds measured after the attack, at least (default 5)")
    ap.add_argument("--no-summary-wait", action="store_true",
                    help="do not wait for the master's per-minute refusal summary line")
    ap.add_argument("--refusal-limit", type=int, default=None, metavar="L",
                    help="refusal_limit in furl-master.conf (default: not set, i.e. the "
                    "master's default of 100; 0: no pre-TLS gate)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    ap.add_argument("--json", metavar="FILE", nargs="?", const=results_file("attack"),
                    help="also write the figures and samples as JSON "
                    "(FILE; default bench/results/attack.json)")
    args = ap.parse_args()
    if not 1 <= args.addresses <= 250:
        ap.error("--addresses must be 1 to 250 (127.0.0.2 to 127.0.0.251)")
    if args.attempts < 1 or args.connections < 1 or args.workers < 1 or args.seconds <= 0:
        ap.error("--attempts, --connections, --workers and --seconds must be positive")
    if args.refusal_limit is not None and args.refusal_limit < 0:
        ap.error("--refusal-limit must be 0 or more")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="furl-attack."))
    procs = Procs(tmp)
    stop = threading.Event()
    samples: list[Sample] = []
    marks: dict[str, Any] = {}
    children: list[LineChild] = []
    sampler: Sampler | None = None
    threads: list[threading.Thread] = []
    try:
        rig = Rig(tmp, procs, args.workers)
        rig.setup(more_names=["probe"], refusal_limit=args.refusal_limit)
        log = rig.mdir / "master.log"
        say(f"master pid {rig.master_pid} on 127.0.0.1:{rig.port}, {args.workers} worker(s) "
            f"attached; temp dir {tmp}")
        (tmp / "probe").mkdir(mode=0o700)
        prober = LineChild(procs, "probe", {"furl": rig.furl("probe"), "interval": 0.25,
                                            "dir": str(tmp / "probe")},
                           tmp / "prober.log", CHILDREN)
        children.append(prober)
        addresses = (["127.0.0.1"] if args.same_address
                     else [f"127.0.0.{2 + i}" for i in range(args.addresses)])
        attacker = LineChild(procs, "attack", {
            "tubid": rig.tubid, "host": "127.0.0.1", "port": rig.port,
            "attempts": args.attempts, "connections": args.connections,
            "addresses": addresses, "seconds": args.seconds}, tmp / "attacker.log", CHILDREN)
        children.append(attacker)
        prober.expect("ready", 60)
        attacker.expect("ready", 120)  # its Tubs' keys are made by now
        sampler = Sampler(stop, rig.master_pid)
        sampler.attacker_pid = attacker.proc.pid
        sampler.start()
        threads += [threading.Thread(target=cli_loop, args=(rig, stop, samples), daemon=True),
                    threading.Thread(target=probe_loop, args=(prober, stop, samples),
                                     daemon=True)]
        for t in threads:
            t.start()
        marks["baseline_start"] = time.time()
        marks["log_baseline"] = log.stat().st_size
        say(f"before: {args.baseline:.0f} s of legitimate traffic only")
        time.sleep(args.baseline)

        marks["status_before"] = rig.status()
        marks["log_before"] = log.stat().st_size
        marks["row_before"] = sampler.take()
        say(f"attack: {args.attempts} attempts, {args.connections} connections from "
            f"{', '.join(addresses)} (at most {args.seconds:.0f} s)")
        attacker.send("go")
        marks["attack_start"] = attacker.expect("started", 30)["wall"]
        result = None
        deadline = time.monotonic() + args.seconds + 30
        while result is None:
            line = attacker.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line["kind"] == "progress":
                say(f"  {line['seconds']:5.1f} s: {line['done']} done, {line['refused']} "
                    f"refused, {line['hung_up']} hung up, {line['closed_early']} closed early, "
                    f"{line['accepted']} accepted, {line['connections']} connections")
            elif line["kind"] == "result":
                result = line
            elif line["kind"] in ("eof", "error"):
                raise RuntimeError(f"the attacker ended without a result: {line}")
        marks["attack_end"] = result["wall_ended"]
        marks["row_attack_end"] = sampler.take()
        marks["log_attack_end"] = log.stat().st_size
        marks["status_attack_end"] = rig.status()

        at_least = time.time() + args.after
        at_most = at_least
        if not args.no_summary_wait:
            # the first summary the master writes after the attack began: its
            # interval runs from its start (about status's "started")
            started = marks["status_before"]["started"]
            interval = marks["status_before"]["refusals"]["interval_seconds"]
            due = started + (int((marks["attack_start"] - started) // interval) + 1) * interval
            at_most = max(at_least, due + 5)
            say(f"after: at least {args.after:.0f} s, and until the master's refusal summary "
                f"(due in about {due - time.time():.0f} s)")
        else:
            say(f"after: {args.after:.0f} s")
        while time.time() < at_most:
            if time.time() >= at_least and (args.no_summary_wait or any(
                    SUMMARY_RE.search(x) for x in log_tail(log, marks["log_before"]).splitlines())):
                break
            time.sleep(0.5)
        marks["status_after"] = rig.status()
        marks["row_after"] = sampler.take()
        marks["log_after"] = log.stat().st_size
        marks["end"] = time.time()
        stop.set()
        for t in threads:
            t.join(timeout=70)
        marks["log_text"] = log_tail(log, marks["log_before"])
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        return 130
    finally:
        stop.set()
        procs.close()  # the loops start nothing more; let a step under way end
        for t in threads:
            t.join(timeout=10)
        for c in children:
            with contextlib.suppress(Exception):
                c.stop()
        procs.cleanup()
        keep_or_remove(tmp, args.keep)

    assert sampler is not None
    summary = summarize(args, result, marks, samples, sampler.rows)
    print(table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"summary": summary, "samples": [asdict(s) for s in samples],
             "resources": sampler.rows}, indent=2) + "\n")
    legit_failed = sum(1 for s in samples if not s.ok)
    return 0 if result["accepted"] == 0 and legit_failed == 0 else 1


def summarize(args: argparse.Namespace, result: dict[str, Any], marks: dict[str, Any],
              samples: list[Sample], rows: list[dict[str, Any]]) -> dict[str, Any]:
    t_a, t_e = marks["attack_start"], marks["attack_end"]

    def phase(wall: float) -> str:
        if wall < marks["baseline_start"]:
            return "setup"
        return "before" if wall < t_a else "during" if wall < t_e else "after"

    for s in samples:
        s.phase = phase(s.wall)
    latency: dict[str, dict[str, Any]] = {}
    for kind in ("attach", "run", "start"):
        for ph in ("before", "during", "after"):
            these = [s for s in samples if s.kind == kind and s.phase == ph]
            ok = [s.seconds for s in these if s.ok]
            latency[f"{kind}/{ph}"] = {
                "n": len(these), "failed": len(these) - len(ok),
                "retried": sum(1 for s in these if s.ok and s.detail),
                "median": pct(ok, 50), "p95": pct(ok, 95), "max": max(ok) if ok else None,
                "failures": [s.detail for s in these if not s.ok][:5]}

    def cpu(who: str, a: dict[str, Any], b: dict[str, Any]) -> float | None:
        if a.get(who) is None or b.get(who) is None or b["wall"] <= a["wall"]:
            return None
        return 100.0 * (b[who] - a[who]) / HZ / (b["wall"] - a["wall"])

    base_rows = [r for r in rows if marks["baseline_start"] <= r["wall"] < t_a]
    first = base_rows[0] if base_rows else marks["row_before"]
    attack_rows = [r for r in rows if t_a <= r["wall"] <= marks["row_after"]["wall"]]
    rss = [r["rss_kb"] for r in attack_rows if r["rss_kb"]]
    rb, ra, rf = marks["row_before"], marks["row_attack_end"], marks["row_after"]
    st0, st1, st2 = marks["status_before"], marks["status_attack_end"], marks["status_after"]
    r0, r1, r2 = st0["refusals"], st1["refusals"], st2["refusals"]
    text = marks["log_text"]
    during_bytes = marks["log_attack_end"] - marks["log_before"]
    attack_s = max(1e-9, t_e - t_a)
    base_s = max(1e-9, t_a - marks["baseline_start"])
    lines = text.splitlines()
    refusal_lines = [x for x in lines if "refusals#" in x]
    return {
        "settings": {"attempts": args.attempts, "connections": args.connections,
                     "addresses": "127.0.0.1 (same as the workers)" if args.same_address
                     else args.addresses, "workers": args.workers,
                     "seconds": args.seconds,
                     "refusal_limit": args.refusal_limit if args.refusal_limit is not None
                     else "default (100)"},
        "attack": {k: result[k] for k in ("attempts", "accepted", "refused", "hung_up",
                                          "closed_early", "timed_out", "other",
                                          "connections")}
        | {"seconds": attack_s, "rate_per_s": result["attempts"] / attack_s,
           "by_address": result["by_address"], "other_errors": result["other_errors"],
           "attacker_cpu_percent": cpu("attacker_ticks", rb, ra)},
        "master_counters": {
            "refused_during_attack": r1["total"] - r0["total"],
            "closed_before_tls_during_attack": r1["closed_before_tls"] - r0["closed_before_tls"],
            "refused_total_at_end": r2["total"],
            "closed_before_tls_total_at_end": r2["closed_before_tls"],
            "cut_unanswered_during_attack": r1.get("cut_unanswered", 0)
            - r0.get("cut_unanswered", 0),
            "addresses": r2["addresses"], "top": r2["top"][:5]},
        "log": {"bytes_during_attack": during_bytes,
                "bytes_per_minute_during_attack": during_bytes / attack_s * 60,
                "bytes_per_minute_before": (marks["log_before"] - marks["log_baseline"])
                / base_s * 60,
                "bytes_attack_start_to_end": marks["log_after"] - marks["log_before"],
                "lines_attack_start_to_end": len(lines),
                "refusal_line_bytes": sum(len(x.encode()) + 1 for x in refusal_lines),
                "lines_by_source": _by_source(lines),
                "refusal_lines": refusal_lines},
        "latency": latency,
        "master": {"rss_kb_before": rb["rss_kb"], "rss_kb_peak": max(rss) if rss else None,
                   "rss_kb_after": rf["rss_kb"],
                   "cpu_percent_before": cpu("master_ticks", first, rb),
                   "cpu_percent_during": cpu("master_ticks", rb, ra),
                   "cpu_percent_after": cpu("master_ticks", ra, rf)},
        "seconds": {"before": base_s, "attack": attack_s, "after": marks["end"] - t_e},
    }


def _by_source(lines: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in lines:
        m = re.match(r"\S+ \[([^\]]+)\]", x)
        key = m.group(1) if m else "(continuation)"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def table(s: dict[str, Any]) -> str:
    a, m, lg, ms = s["attack"], s["master_counters"], s["log"], s["master"]
    st = s["settings"]
    rows = [
        f"settings: {st['attempts']} attempts, {st['connections']} connections, "
        f"{st['addresses']} address(es), {st['workers']} worker(s), at most {st['seconds']:g} s, "
        f"refusal_limit {st['refusal_limit']}",
        "", "| | |", "|---|---|",
        f"| attempts made | {a['attempts']} in {a['seconds']:.1f} s "
        f"({a['rate_per_s']:.0f}/s) |",
        f"| **accepted** (must be 0) | **{a['accepted']}** |",
        f"| refused (\"no such name\") | {a['refused']} |",
        f"| hung up (pending when the master hung up) | {a['hung_up']} |",
        f"| closed while connecting (no answer) | {a['closed_early']} |",
        f"| timed out / other | {a['timed_out']} / {a['other']} |",
        f"| attacker connections opened | {a['connections']} |",
        f"| attacker CPU (its own process) | {_pc(a['attacker_cpu_percent'])} |",
        f"| master: refused (status --json, during the attack) | {m['refused_during_attack']} |",
        f"| master: closed before TLS (during the attack) | "
        f"{m['closed_before_tls_during_attack']} |",
        f"| master: cut unanswered, over the limit (during the attack) | "
        f"{m['cut_unanswered_during_attack']} |",
        f"| master: totals at the end (refused / closed before TLS / addresses) | "
        f"{m['refused_total_at_end']} / {m['closed_before_tls_total_at_end']} / "
        f"{m['addresses']} |",
        f"| master.log bytes added during the attack | {lg['bytes_during_attack']} "
        f"({lg['bytes_per_minute_during_attack']:.0f}/min; before it "
        f"{lg['bytes_per_minute_before'] or 0:.0f}/min) |",
        f"| master.log, attack start to the end | {lg['bytes_attack_start_to_end']} bytes, "
        f"{lg['lines_attack_start_to_end']} lines; of them about refusals: "
        f"{len(lg['refusal_lines'])} lines, {lg['refusal_line_bytes']} bytes (the rest: the "
        f"bench's own legitimate attaches and runs) |",
        f"| master RSS before / peak / after | {_kb(ms['rss_kb_before'])} / "
        f"{_kb(ms['rss_kb_peak'])} / {_kb(ms['rss_kb_after'])} |",
        f"| master CPU before / during / after | {_pc(ms['cpu_percent_before'])} / "
        f"{_pc(ms['cpu_percent_during'])} / {_pc(ms['cpu_percent_after'])} |",
    ]
    names = {"attach": "attach (fresh WorkerService, connect to attached)",
             "run": "furl-master run wK -- true (CLI wall time)",
             "start": "furl-worker start (daemon start to attached)"}
    rows += ["", "| latency: median / p95 (n, failed) | before | during | after |",
             "|---|---|---|---|"]
    for kind, label in names.items():
        cells = []
        for ph in ("before", "during", "after"):
            x = s["latency"][f"{kind}/{ph}"]
            cells.append(f"{_ms(x['median'])} / {_ms(x['p95'])} ({x['n']}, {x['failed']})"
                         if x["n"] else "-")
        rows.append(f"| {label} | {' | '.join(cells)} |")
    rows += ["", f"phases: before {s['seconds']['before']:.1f} s, attack "
             f"{s['seconds']['attack']:.1f} s, after {s['seconds']['after']:.1f} s",
             "master.log lines from the attack's start, by source: " + ", ".join(
                 f"{k} {v}" for k, v in lg["lines_by_source"].items()),
             "master.log refusal lines:"]
    rows += [f"    {x}" for x in lg["refusal_lines"]] or ["    (none)"]
    retried = {k: x["retried"] for k, x in s["latency"].items() if x["retried"]}
    if retried:
        rows.append("legitimate samples that succeeded only after a failed connection: "
                    + ", ".join(f"{k} {n}" for k, n in retried.items()))
    fails = [f for x in s["latency"].values() for f in x["failures"]]
    if fails:
        rows += ["legitimate failures:"] + [f"    {f}" for f in fails]
    if a["other_errors"]:
        rows += ["attacker's other errors:"] + [f"    {n} {e}" for e, n in
                                                a["other_errors"].items()]
    return "\n".join(rows)


def _kb(v: int | None) -> str:
    return "-" if v is None else f"{v / 1024:.1f} MiB"


def _pc(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"

