"""The soak: the product used as it is used, for a while, with faults.

One copy of the soak's machinery, used by ``tests/system/test_soak.py`` (a few
minutes in CI) and ``python -m bench.soak`` (``--minutes N``, figures for
docs/reliability.md):

* the workload: file sizes at every transfer boundary, the Buildbot build
  config (every worker-touching step Buildbot ships, and the
  ``CompositeStepMixin`` calls), the standalone ``run``/``put``/``get`` mix;
* the faults: a guesser hammering the master's address (forged FURLs from
  127.0.0.1, the workers' own address), a cut link (a FaultProxy in front of
  one worker), a revoked and rotated worker, a reconfigured master;
* the checks: results, byte-exact files and logs, no violation, refusal or
  cut-off line about a well-behaved worker, no unplanned detach, a flat RSS.

The Buildbot master runs in the caller's process (an unpatched Buildbot
``BuildMaster`` on the caller's reactor, its config written as a user's
``master.cfg`` would: FurlWorker through Buildbot's plugin namespace); every
FURL worker, the standalone master and the guesser are real processes, which
the caller starts through its own ``popen`` (and stops by pid).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildbot_furl.protocol import MAX_CHUNK
from buildbot_furl.testing.procs import child_env  # noqa: F401 - the soak's children's env

PY = sys.executable
CHUNK = MAX_CHUNK
#: bytes in flight in a transfer: the worker's FILE_WINDOW chunks (worker/streams.py;
#: tests/system/test_soak.py checks the two agree, this module may not import the worker side)
WINDOW = 4 * CHUNK
#: every boundary of a transfer: empty, one byte, around a chunk, around a window
SIZES = (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, WINDOW - 1, WINDOW, WINDOW + 1,
         2 * WINDOW - 1, 2 * WINDOW + 1)
#: Buildbot's blocksize (its default is 16 KiB): odd, default, unaligned, above a chunk
BLOCKSIZES = (4095, 16 * 1024, 64 * 1024 + 3, CHUNK + 7)
STRING_SIZES = (0, 1, CHUNK + 1)  # StringDownload
COMPOSITE_SIZES = (0, 1, CHUNK - 1, CHUNK + 1, WINDOW + 1)  # downloadFileContentToWorker...
BIG_LINES = 10_000  # ~0.9 MB of stdout per build
MiB = 1024 * 1024

PlannedFault = tuple[float, str]
#: when each fault comes, as a fraction of one cycle (the test runs one cycle,
#: the bench one every --cycle seconds); the guesser starts once and runs on
FAULTS: tuple[PlannedFault, ...] = (
    (0.10, "guess"), (0.30, "cut"), (0.50, "rotate"), (0.70, "reconfig"), (0.85, "cut"))


#: the standalone master's: a guesser and cuts
STANDALONE_FAULTS: tuple[PlannedFault, ...] = (
    (0.10, "guess"), (0.25, "cut"), (0.45, "cut"), (0.65, "cut"), (0.85, "cut"))


def schedule(seconds: float, cycle: float | None = None,
             faults: tuple[PlannedFault, ...] = FAULTS) -> list[tuple[float, str]]:
    """(second, fault) for a run of ``seconds``: ``faults`` once per ``cycle``
    (default: once over the whole run); 'guess' only in the first cycle."""
    cycle = cycle or seconds
    out: list[tuple[float, str]] = []
    start = 0.0
    while start < seconds:
        for frac, what in faults:
            at = start + frac * cycle
            if at < seconds and (what != "guess" or start == 0):
                out.append((at, what))
        start += cycle
    return sorted(out)


# -- the data -------------------------------------------------------------------------


def payload(size: int, tag: str = "src") -> bytes:
    """``size`` reproducible random bytes (the same in any process)."""
    return random.Random(f"{tag}:{size}").randbytes(size)


def text(size: int, tag: str = "txt") -> str:
    """``size`` characters of reproducible ASCII text, in lines."""
    line = f"{tag} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 2 + "\n"
    return (line * (size // len(line) + 1))[:size]


def big_output_script(lines: int = BIG_LINES) -> str:
    """A program whose stdout and stderr are big_output(lines)."""
    return ("import sys\n"
            f"for i in range({lines}):\n"
            "    sys.stdout.write('line %06d ' % i + 'x' * 80 + '\\n')\n"
            "    if i % 997 == 0:\n"
            "        sys.stdout.flush(); sys.stderr.write('err %06d\\n' % i); sys.stderr.flush()\n"
            "sys.stdout.flush()\n")


def big_output(lines: int = BIG_LINES) -> tuple[str, str]:
    out = "".join(f"line {i:06d} " + "x" * 80 + "\n" for i in range(lines))
    err = "".join(f"err {i:06d}\n" for i in range(0, lines, 997))
    return out, err


#: what TREE_SCRIPT makes under t/tree (relative path -> content)
def tree_files() -> dict[str, bytes]:
    return {
        "a.txt": text(50_000, "a").encode(),
        "c.txt": b"",
        "one": b"1",
        "sub/b.bin": payload(CHUNK + 1, "tree"),
        "sub/w.bin": payload(WINDOW - 1, "tree"),
        "sub/deeper/empty": b"",
    }


TREE_SCRIPT = (
    "import os, random, sys\n"
    "sys.path.insert(0, {root!r})\n"
    "from buildbot_furl.testing.soak import tree_files\n"
    "for name, data in tree_files().items():\n"
    "    p = os.path.join('t', 'tree', name)\n"
    "    os.makedirs(os.path.dirname(p), exist_ok=True)\n"
    "    open(p, 'wb').write(data)\n"
)
SLOW_SCRIPT = ("import time; print('started', flush=True); time.sleep(30); "
               "print('finished', flush=True)")


def tree_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_sources(data: Path) -> None:
    """The master-side files the builds download (data/size-N.bin)."""
    data.mkdir(parents=True, exist_ok=True)
    for n in SIZES:
        p = data / f"size-{n}.bin"
        if not p.exists() or p.stat().st_size != n:
            p.write_bytes(payload(n))


def streams(content: str) -> dict[str, str]:
    """A Buildbot stdio log's text by stream: 'o' stdout, 'e' stderr, 'h' header."""
    out: dict[str, list[str]] = {"o": [], "e": [], "h": []}
    for line in content.splitlines(keepends=True):
        if line[:1] in out:
            out[line[:1]].append(line[1:])
    return {k: "".join(v) for k, v in out.items()}


# -- what the logs may not say ------------------------------------------------------------

#: a line about a worker that says it was refused, broke the protocol, was cut off or lost
BAD_WORDS = re.compile(r"refused|violation|cut off|skips bytes|too far back|detached|"
                       r"lost|failed to kill|gave up|giving up", re.I)
ANYWHERE = re.compile(r"Traceback|Unhandled [Ee]rror|Unhandled error in Deferred")


def cut_line(worker: str) -> Callable[[str], bool]:
    """The lines a planned cut of ``worker``'s link leaves in the master's log."""
    pattern = re.compile(rf"\b{re.escape(worker)}\b.*(lost; keeping its session|session resumed)")
    return lambda line: bool(pattern.search(line))


def bad_lines(text_: str, workers: tuple[str, ...],
              expected: Callable[[str], bool] = lambda line: False) -> list[str]:
    """Lines about one of ``workers`` (named as a word) that BAD_WORDS
    matches, and every traceback line, less those ``expected`` accepts."""
    names = re.compile(r"\b(" + "|".join(map(re.escape, workers)) + r")\b")
    out = []
    for line in text_.splitlines():
        if expected(line):
            continue
        if ANYWHERE.search(line) or (names.search(line) and BAD_WORDS.search(line)):
            out.append(_short(line))
    return out


def worker_bad_lines(text_: str, expected: Callable[[str], bool] = lambda line: False
                     ) -> list[str]:
    """In a worker's own log every line is about that worker (each kind of
    line once, with its count)."""
    return _dedup([_short(ln) for ln in text_.splitlines()
            if not expected(ln) and (ANYWHERE.search(ln) or re.search(
                r"refused|violation|cut off|skips bytes|too far back|failed to kill|gave up",
                ln, re.I))])


def _short(line: str) -> str:
    """A log line cut to its start and its end (where the message is, after
    a command line that buildbot-worker echoes in front of it)."""
    line = line.strip()
    return line if len(line) <= 300 else f"{line[:80]} ... {line[-200:]}"


def _dedup(lines: list[str]) -> list[str]:
    """Each distinct line once, with how many times it came (numbers masked)."""
    seen: dict[str, int] = {}
    for ln in lines:
        key = re.sub(r"\d+", "N", ln)
        seen[key] = seen.get(key, 0) + 1
    return [f"{k} (x{n})" if n > 1 else k for k, n in seen.items()]


# -- memory -------------------------------------------------------------------------------


def rss_kib(pid: int | None = None) -> int:
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


WARM_UP = 0.35  # the first 35% of a run is warm-up for the RSS check
SETTLE = 5.0  # seconds after the first fault of a kind before RSS counts again


def warm_up_until(report: "Report") -> float:
    """When a run's warm-up ends, for the RSS check: WARM_UP of the run, or
    later, SETTLE s after the first fault of each kind (a first reconfig
    builds Buildbot's new configuration, a first rotation a new login: memory
    kept for good, not a leak; a second one of the kind must not grow it) --
    unless that would leave fewer than three samples to judge by."""
    until = WARM_UP * report.seconds
    firsts: dict[str, float] = {}
    for t, what, _ in report.faults:
        firsts.setdefault(what, t)
    later = max([until, *(t + SETTLE for t in firsts.values())])
    if sum(1 for t, _ in report.rss if t > later) >= 3:
        return later
    return until


@dataclasses.dataclass
class RssCheck:
    """RSS after warm-up against RSS at the end: 'flat' is growth within
    max(``slack_kib``, ``slack_ratio`` of the warm figure)."""
    samples: list[tuple[float, int]]  # (seconds since start, KiB)
    warm_until: float  # seconds since the start
    slack_kib: int = 32 * 1024
    slack_ratio: float = 0.10

    def figures(self) -> tuple[int, int]:
        warm = [k for t, k in self.samples if t <= self.warm_until] or [self.samples[0][1]]
        tail = [k for _, k in self.samples[-max(3, len(self.samples) // 10):]]
        return max(warm), min(tail)

    def problem(self) -> str | None:
        if len(self.samples) < 4:
            return f"too few RSS samples ({len(self.samples)})"
        warm, end = self.figures()
        allowed = max(self.slack_kib, int(warm * self.slack_ratio))
        if end - warm > allowed:
            return (f"RSS grew after warm-up: {warm // 1024} MiB -> {end // 1024} MiB "
                    f"(allowed +{allowed // 1024} MiB)")
        return None


# -- the guesser ----------------------------------------------------------------------------


def guesser_argv(tubid: str, port: int, source: str = "127.0.0.1",
                 concurrency: int = 4) -> list[str]:
    """A process that forges FURLs at the master until SIGTERM; then it
    prints one JSON line of counts (forgery.ForgeryResult's fields)."""
    cfg = json.dumps({"tubid": tubid, "port": port, "source": source,
                      "concurrency": concurrency})
    return [PY, "-m", "buildbot_furl.testing.soak", "guess", cfg]


def _guess_main(cfg: dict[str, Any]) -> None:
    from twisted.internet import defer, reactor

    from buildbot_furl.testing.forgery import ForgeryResult, forge

    total = ForgeryResult()

    async def loop() -> None:
        while reactor.running:
            r = await forge(cfg["tubid"], "127.0.0.1", cfg["port"], 20, source=cfg["source"],
                            concurrency=cfg["concurrency"])
            for f in dataclasses.fields(r):
                setattr(total, f.name, getattr(total, f.name) + getattr(r, f.name))

    def report() -> None:
        print(json.dumps(dataclasses.asdict(total)), flush=True)

    reactor.addSystemEventTrigger("before", "shutdown", report)  # SIGTERM stops the reactor
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(loop()))
    reactor.run()


# -- faults and the report --------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """What a soak did and what went wrong."""
    mode: str
    seconds: float = 0.0
    builds: int = 0  # or standalone operations
    ok: int = 0
    bytes: int = 0  # file bytes moved and checked, both ways
    faults: list[tuple[float, str, str]] = dataclasses.field(default_factory=list)
    rss: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    guesser: dict[str, int] = dataclasses.field(default_factory=dict)
    results: dict[str, int] = dataclasses.field(default_factory=dict)
    durations: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # by kind

    def took(self, kind: str, seconds: float) -> None:
        self.durations.setdefault(kind, []).append(round(seconds, 2))

    def medians(self) -> dict[str, float]:
        return {k: sorted(v)[len(v) // 2] for k, v in sorted(self.durations.items()) if v}

    def problem(self, what: str) -> None:
        self.problems.append(what)

    def fault(self, t: float, what: str, detail: str = "") -> None:
        self.faults.append((round(t, 1), what, detail))

    def summary(self, limit: int = 60) -> str:
        lines = [f"{self.mode}: {self.ok}/{self.builds} ok in {self.seconds:.0f} s, "
                 f"{self.bytes / MiB:.0f} MiB checked, faults "
                 f"{[f[1] for f in self.faults]}, guesser {self.guesser}",
                 f"median seconds: {self.medians()}"]
        if self.rss:
            lines.append(f"RSS KiB (t, KiB): {self.rss[:: max(1, len(self.rss) // 12)]}")
        lines += [f"  - {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def furl_via(furl: str, port: int) -> str:
    """The same FURL, dialing 127.0.0.1:``port`` (a FaultProxy) instead."""
    head, rest = furl.split("@", 1)
    _hints, swiss = rest.split("/", 1)
    return f"{head}@tcp:127.0.0.1:{port}/{swiss}"


def tubid_of(furl: str) -> str:
    return furl.split("//", 1)[1].split("@", 1)[0]


def cli_argv(prog: str, *args: str) -> list[str]:
    mod = {"furl-master": "buildbot_furl.cli.master", "furl-worker": "buildbot_furl.cli.worker"}
    return [PY, "-m", mod[prog], *args]


def run_cli(prog: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv(prog, *args), capture_output=True, text=True,
                          env=child_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def must(p: subprocess.CompletedProcess[str], what: str) -> str:
    if p.returncode != 0:
        raise AssertionError(f"{what} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return p.stdout


Popen = Callable[..., "subprocess.Popen[bytes]"]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "guess":
        _guess_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m buildbot_furl.testing.soak guess JSON")
