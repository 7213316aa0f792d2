#!/usr/bin/env python
"""Cut the worker's connection hundreds of times; count what survives.

    python -m bench.faults [--cuts N] [--grace S] [--seed N] [--json FILE]

One furl-master and one furl-worker (real daemons, on 127.0.0.1) with a
fault-injecting proxy between them (buildbot_furl.testing.faultproxy).
Jobs of three kinds run one after another: a command streaming numbered
lines (``run``), a file sent to the worker (``put``), a file and a
directory tree fetched from it (``get``).  Each kind first runs three times
undisturbed (the median is its baseline wall time), then again and again
with its connection reset after a
random number of bytes, 2 to 4 times while it runs, until at least N cuts
(default 200) have landed in a job.  Printed: jobs that survived (right
exit code, every byte, nothing twice), bytes lost and duplicated, and the
extra wall time per cut.  See docs/reliability.md.  Loopback only; every
process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import results_file
from buildbot_furl.testing.faultproxy import FaultProxy
from buildbot_furl.testing.procs import Procs, free_port
from buildbot_furl.testing.rig import Rig, say
from buildbot_furl.tree import manifest_path

LINES = 4000
WORKER = "w1"


@dataclass
class Outcome:
    kind: str
    cuts: int
    seconds: float
    ok: bool
    lost: int = 0  # bytes missing from what arrived
    duplicated: int = 0  # bytes that arrived more than once
    detail: str = ""


class Faults:
    """The shared Rig (a master, worker w1) with the proxy between them."""

    def __init__(self, tmp: Path, procs: Procs, proxy: FaultProxy, grace: float) -> None:
        self.proxy = proxy
        self.grace = grace
        # the master listens on the proxy's target; w1's FURL dials the proxy
        self.rig = Rig(tmp, procs, 1, port=proxy.target[1], dial=proxy.port)
        self.wdir = self.rig.wdir(WORKER)

    def start(self) -> None:
        self.rig.setup("--session-grace", str(self.grace))

    def master_argv(self, command: str, *args: str) -> list[str]:
        return self.rig.master_argv(command, *args)

    def popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return self.rig.procs.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def done(self, p: subprocess.Popen[bytes]) -> None:
        self.rig.procs.forget(p)


def _cutting(rig: Faults, proc: subprocess.Popen[bytes], cuts: int, low: int, high: int) -> int:
    """Reset the connection after random byte counts while ``proc`` runs."""
    return rig.proxy.cut_several(cuts, low, high, proc, timeout=None, interval=0.005)


def job_run(rig: Faults, cuts: int) -> Outcome:
    script = (f"i=0; while [ $i -lt {LINES} ]; do echo line$i; i=$((i+1)); "
              "case $i in *00) sleep 0.02;; esac; done; exit 3")
    t0 = time.monotonic()
    p = rig.popen(rig.master_argv("run", WORKER, "--", "sh", "-c", script))
    done = _cutting(rig, p, cuts, 500, 30_000) if cuts else 0
    out, err = p.communicate(timeout=300)
    rig.done(p)
    seconds = time.monotonic() - t0
    want = [f"line{i}" for i in range(LINES)]
    got = out.decode(errors="replace").splitlines()
    lost = sum(len(w) + 1 for w in set(want) - set(got))
    dup = sum(len(g) + 1 for g in got) - sum(len(g) + 1 for g in set(got))
    ok = p.returncode == 3 and got == want
    return Outcome("run", done, seconds, ok, lost, dup,
                   "" if ok else f"rc {p.returncode}: {err.decode()[-200:]}")


def _transfer(rig: Faults, cuts: int, kind: str, argv: list[str], check: Any) -> Outcome:
    t0 = time.monotonic()
    p = rig.popen(argv)
    done = _cutting(rig, p, cuts, 200_000, 8_000_000) if cuts else 0
    _, err = p.communicate(timeout=300)
    rig.done(p)
    seconds = time.monotonic() - t0
    ok, lost, dup = check() if p.returncode == 0 else (False, 0, 0)
    return Outcome(kind, done, seconds, ok, lost, dup,
                   "" if ok else f"rc {p.returncode}: {err.decode()[-200:]}")


def _compare(want: Path, got: Path) -> tuple[bool, int, int]:
    if not got.exists():
        return False, want.stat().st_size, 0
    a, b = want.stat().st_size, got.stat().st_size
    same = hashlib.sha256(want.read_bytes()).digest() == hashlib.sha256(got.read_bytes()).digest()
    return same, max(0, a - b), max(0, b - a)


def job_put(rig: Faults, cuts: int, src: Path, n: int) -> Outcome:
    dest = f"in/put{n}.bin"
    return _transfer(rig, cuts, "put", rig.master_argv("put", WORKER, str(src), dest),
                     lambda: _compare(src, rig.wdir / dest))


def job_get(rig: Faults, cuts: int, n: int, tmp: Path) -> Outcome:
    back = tmp / f"get{n}.bin"
    src = rig.wdir / "in" / "put0.bin"
    out = _transfer(rig, cuts, "get", rig.master_argv("get", WORKER, "in/put0.bin", str(back)),
                    lambda: _compare(src, back))
    back.unlink(missing_ok=True)
    return out


def job_tree(rig: Faults, cuts: int, n: int, tmp: Path) -> Outcome:
    dest = tmp / f"tree{n}"

    def check() -> tuple[bool, int, int]:
        same = manifest_path(str(dest)) == manifest_path(str(rig.wdir / "tree"))
        return same, 0, 0

    out = _transfer(rig, cuts, "tree", rig.master_argv("get", WORKER, "tree", str(dest)), check)
    shutil.rmtree(dest, ignore_errors=True)
    return out


def make_data(rig: Faults, tmp: Path) -> Path:
    src = tmp / "payload.bin"
    with open(src, "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    tree = rig.wdir / "tree"
    for i in range(4):
        (tree / f"d{i}").mkdir(parents=True)
        with open(tree / f"d{i}" / "blob.bin", "wb") as f:
            f.write(os.urandom(6 << 20))
        (tree / f"d{i}" / "note.txt").write_text(f"tree part {i}\n")
    return src


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuts", type=int, default=200, help="cuts to land (default 200)")
    ap.add_argument("--grace", type=float, default=60, help="the master's session_grace")
    ap.add_argument("--seed", type=int, default=None, help="random seed (reproducible cuts)")
    ap.add_argument("--json", metavar="FILE", nargs="?", const=results_file("faults"),
                    help="also write every job's figures as JSON "
                    "(FILE; default bench/results/faults.json)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    tmp = Path(tempfile.mkdtemp(prefix="furl-faults."))
    procs = Procs(tmp)
    outcomes: list[Outcome] = []
    with FaultProxy(free_port()) as proxy:
        rig = Faults(tmp, procs, proxy, args.grace)
        try:
            rig.start()
            src = make_data(rig, tmp)
            jobs = [lambda c, n: job_run(rig, c), lambda c, n: job_put(rig, c, src, n),
                    lambda c, n: job_get(rig, c, n, tmp), lambda c, n: job_tree(rig, c, n, tmp)]
            kinds = ["run", "put", "get", "tree"]
            # the baseline: the median of three undisturbed runs of each kind
            baseline = {k: sorted(job(0, 0).seconds for _ in range(3))[1]
                        for k, job in zip(kinds, jobs)}
            n, landed = 0, 0
            while landed < args.cuts:
                kind = kinds[n % len(kinds)]
                out = jobs[n % len(jobs)](random.randint(2, 4), n + 1)
                outcomes.append(out)
                landed += out.cuts
                n += 1
                say(f"{n:4d} {kind:<4} cuts {out.cuts} {out.seconds:6.2f} s "
                    f"{'ok' if out.ok else 'FAILED ' + out.detail}")
        except RuntimeError as e:  # a CLI step failed: one line, as the CLI said it
            say(f"faults: {e}")
            return 1
        finally:
            procs.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)
    summary = _summary(outcomes, baseline, seed)
    print(_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"summary": summary, "jobs": [o.__dict__ for o in outcomes]}, indent=2) + "\n")
    return 0 if summary["survived"] == summary["jobs"] else 1


def _summary(outcomes: list[Outcome], baseline: dict[str, float], seed: int) -> dict[str, Any]:
    cut_jobs = [o for o in outcomes if o.cuts]
    extra = [(o.seconds - baseline[o.kind]) / o.cuts for o in cut_jobs]
    extra.sort()
    return {
        "seed": seed,
        "jobs": len(outcomes),
        "cuts": sum(o.cuts for o in outcomes),
        "survived": sum(1 for o in outcomes if o.ok),
        "bytes_lost": sum(o.lost for o in outcomes),
        "bytes_duplicated": sum(o.duplicated for o in outcomes),
        "extra_seconds_per_cut_median": extra[len(extra) // 2] if extra else None,
        "extra_seconds_per_cut_p90": extra[int(len(extra) * 0.9)] if extra else None,
        "baseline_seconds": baseline,
        "by_kind": {k: {"jobs": sum(1 for o in outcomes if o.kind == k),
                        "cuts": sum(o.cuts for o in outcomes if o.kind == k),
                        "survived": sum(1 for o in outcomes if o.kind == k and o.ok)}
                    for k in ("run", "put", "get", "tree")},
    }


def _table(s: dict[str, Any]) -> str:
    rows = [
        "| | |", "|---|---|",
        f"| jobs survived / total | {s['survived']} / {s['jobs']} |",
        f"| cuts landed in a job | {s['cuts']} |",
        f"| bytes lost | {s['bytes_lost']} |",
        f"| bytes duplicated | {s['bytes_duplicated']} |",
        f"| extra wall time per cut, median | {s['extra_seconds_per_cut_median']:.3f} s |",
        f"| extra wall time per cut, 90th percentile | {s['extra_seconds_per_cut_p90']:.3f} s |",
    ]
    for kind, k in s["by_kind"].items():
        rows.append(f"| {kind}: survived / jobs (cuts) | {k['survived']} / {k['jobs']} "
                    f"({k['cuts']}) |")
    base = ", ".join(f"{k} {v:.2f} s" for k, v in s["baseline_seconds"].items())
    rows.append(f"| baseline (no cut) | {base} |")
    rows.append(f"| seed | {s['seed']} |")
    return "\n".join(rows)

