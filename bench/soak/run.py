#!/usr/bin/env python
"""Soak the product for a while, the way it is used, with faults; write the figures.

    python -m bench.soak [--minutes N] [--mode buildbot|standalone|both]
                         [--cycle SECONDS] [--docs] [--json FILE]

``buildbot``: a real Buildbot master (in this process) and FURL workers
running the soak build back to back (every worker-touching step Buildbot
ships, files at every transfer boundary), while a guesser forges FURLs from
the workers' own address, w1's link is cut, w3 is revoked and rotated, and
the master is reconfigured by SIGHUP, once per ``--cycle`` seconds.
``standalone``: a furl-master daemon and two workers, ``run``/``put``/``get``
interleaved with a streaming command on each worker, a guesser and cuts.
``both`` (the default) gives each half the time.  The machinery, and every
check, is buildbot_furl/testing/soak*.py, which tests/system/test_soak.py runs for
about a minute in CI.

Printed: builds (operations), the ones that passed every check, bytes
checked, the faults and when, the guesser's counts, median durations, the
master's RSS over time, and each problem found.  ``--docs`` writes the
figures between the soak markers of docs/reliability.md.  Exit code 1 if
any check failed.  Every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results_file
from buildbot_furl.testing.procs import Procs
from buildbot_furl.testing.soak import MiB, Report

ROOT = Path(__file__).resolve().parents[2]

DOCS = ROOT / "docs" / "reliability.md"
BEGIN = "<!-- soak figures: begin (python -m bench.soak --docs) -->"
END = "<!-- soak figures: end -->"


def run_buildbot(tmp: Path, seconds: float, cycle: float | None) -> Report:
    from twisted.internet import defer, task

    from buildbot_furl.testing.soak_buildbot import BuildbotSoak

    procs = Procs(grace=15)
    out: list[Report] = []

    async def main(reactor: Any) -> None:
        soak = BuildbotSoak(tmp, procs, seconds=seconds, cycle=cycle, build_timeout=180,
                            say=say)
        try:
            out.append(await soak.run())
        finally:
            await soak.close()
            procs.cleanup()

    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(main(r)))
    except SystemExit as e:
        if e.code not in (0, None) and not out:
            raise
    finally:
        procs.cleanup()
    return out[0]


def run_standalone(tmp: Path, seconds: float, cycle: float | None) -> Report:
    from buildbot_furl.testing.soak_standalone import StandaloneSoak

    procs = Procs(grace=15)
    soak = StandaloneSoak(tmp, procs, seconds=seconds, cycle=cycle, say=say)
    try:
        return soak.run()
    finally:
        procs.cleanup()
        soak.close()


def say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def markdown(reports: list[Report], minutes: float) -> str:
    out = [BEGIN, "",
           f"`python -m bench.soak --minutes {minutes:g}` on {platform.node() and 'this'} "
           f"machine ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end), "
           f"{time.strftime('%Y-%m-%d')}:", "",
           "| mode | seconds | builds / operations | passed every check | MiB checked "
           "| faults | guesser attempts (accepted) | problems |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in reports:
        faults = ", ".join(f"{w} {t:.0f} s" for t, w, _ in r.faults)
        out.append(f"| {r.mode} | {r.seconds:.0f} | {r.builds} | {r.ok} | "
                   f"{r.bytes / MiB:.0f} | {faults} | {r.guesser.get('attempts', 0)} "
                   f"({r.guesser.get('accepted', 0)}) | {len(r.problems)} |")
    for r in reports:
        out += ["", f"{r.mode}: master RSS over time (s: MiB): " + ", ".join(
            f"{t:.0f}: {k / 1024:.0f}" for t, k in r.rss[:: max(1, len(r.rss) // 12)]),
            f"median seconds: {r.medians()}"]
        if r.problems:
            out += ["", f"{r.mode}: the first problems found (of {len(r.problems)}):", ""]
            out += [f"- `{p[:220]}`" for p in _kinds(r.problems)[:12]]
    out += ["", END]
    return "\n".join(out)


def _kinds(problems: list[str]) -> list[str]:
    """One problem of each kind (digits masked), first seen first."""
    import re
    seen: dict[str, str] = {}
    for p in problems:
        seen.setdefault(re.sub(r"\d+", "N", p.split("] ", 1)[-1]), p)
    return list(seen.values())


def write_docs(text: str) -> None:
    doc = DOCS.read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n## Soak figures\n\n" + text + "\n"
    DOCS.write_text(doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--mode", choices=("buildbot", "standalone", "both"), default="both")
    ap.add_argument("--cycle", type=float, default=300.0,
                    help="seconds between rounds of faults (default 300)")
    ap.add_argument("--docs", action="store_true", help="write the figures to " + str(DOCS))
    ap.add_argument("--json", metavar="FILE", type=Path, nargs="?",
                    const=Path(results_file("soak")),
                    help="also write the reports as JSON (FILE; default bench/results/soak.json)")
    ap.add_argument("--keep", type=Path, help="work in this new directory and keep it "
                    "(logs of every process), instead of a temporary one")
    args = ap.parse_args()
    seconds = args.minutes * 60
    halves = ["buildbot", "standalone"] if args.mode == "both" else [args.mode]
    each = seconds / len(halves)
    reports = []
    if args.keep:
        args.keep.mkdir(parents=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep
          else tempfile.TemporaryDirectory(prefix="furl-soak-")) as tmp:
        for mode in halves:
            d = Path(tmp) / mode
            d.mkdir()
            say(f"{mode}: {each:.0f} s")
            cycle = min(args.cycle, each)
            r = (run_buildbot(d, each, cycle) if mode == "buildbot"
                 else run_standalone(d, each, cycle))
            say(r.summary())
            reports.append(r)
    text = markdown(reports, args.minutes)
    print(text)
    if args.docs:
        write_docs(text)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in reports], indent=1, default=str))
    return 1 if any(r.problems for r in reports) else 0

