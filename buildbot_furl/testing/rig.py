"""A real furl-master with real furl-workers, driven through the CLI.

One :class:`Rig` for the bench tools (bench/attack, bench/scale,
bench/faults): a master made with ``furl-master create-master`` and started
with ``furl-master start`` in a temp dir, listening on 127.0.0.1; workers
made with ``create-worker`` on both sides and started with ``furl-worker
start``; every CLI call a new process (tracked by :class:`Procs`, so Ctrl-C
stops it too), every daemon's pidfile handed to ``procs`` for the cleanup.
:class:`~buildbot_furl.testing.farm.Farm` is the same idea for the tests
(and runs the same command lines).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildbot_furl.testing.farm import argv
from buildbot_furl.testing.procs import Procs, free_port

@dataclass
class Sample:
    """One timed legitimate operation."""

    kind: str  # attach | run | start (what the bench calls it)
    wall: float  # when it began (time.time())
    seconds: float
    ok: bool
    detail: str = ""
    phase: str = ""  # set by the bench when it sorts samples into phases


class Rig:
    """The master in ``tmp/master``, workers ``w1..wN`` in ``tmp/worker-NAME``.

    ``port``: where the master listens (default a free one); ``dial``: the
    port in the FURLs' location, where workers connect (default ``port``; a
    FaultProxy's port to put one between them)."""

    def __init__(self, tmp: Path, procs: Procs, workers: int, port: int | None = None,
                 dial: int | None = None) -> None:
        self.tmp = tmp
        self.procs = procs
        self.port = port if port is not None else free_port()
        self.dial = dial if dial is not None else self.port
        self.mdir = tmp / "master"
        self.names = [f"w{i + 1}" for i in range(workers)]
        self.master_pid = 0

    # -- the CLI --------------------------------------------------------------------

    def argv(self, prog: str, *args: str) -> list[str]:
        """``furl-master ARGS`` (prog ``master``) or ``furl-worker ARGS`` (``worker``)."""
        return argv(f"furl-{prog}", *args)

    def master_argv(self, command: str, *args: str) -> list[str]:
        """``furl-master COMMAND -d MASTERDIR ARGS``."""
        return self.argv("master", command, "-d", str(self.mdir), *args)

    def cli(self, prog: str, *args: str, check: bool = True, timeout: float = 120
            ) -> tuple[int, str, str]:
        """Run ``furl-master``/``furl-worker`` (``prog`` ``master``/``worker``) to
        its end: (exit code, stdout, stderr).  ``check``: a RuntimeError with its
        stderr if it failed."""
        p = self.procs.popen(*self.argv(prog, *args), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            err += f"\n(timed out after {timeout:.0f} s)"
        finally:
            self.procs.forget(p)
        if check and p.returncode != 0:
            raise RuntimeError(f"furl-{prog} {' '.join(args)}: {err.strip()}")
        return p.returncode, out, err

    # -- set-up ---------------------------------------------------------------------

    def wdir(self, name: str) -> Path:
        return self.tmp / f"worker-{name}"

    def furl_file(self, name: str) -> Path:
        return self.tmp / f"{name}.furl"

    def furl(self, name: str) -> str:
        """The FURL ``create_worker(name)`` wrote."""
        return self.furl_file(name).read_text().strip()

    @property
    def tubid(self) -> str:
        """The master's TUBID (from w1's FURL, or any made so far)."""
        made = sorted(self.tmp.glob("*.furl"))
        if not made:
            raise RuntimeError("no worker created yet: the TUBID is in its FURL")
        return made[0].read_text().strip().split("//", 1)[1].split("@", 1)[0]

    def create_master(self, *extra: str, **settings: object) -> None:
        """``furl-master create-master`` (options ``extra``), then ``key = value``
        lines in furl-master.conf for ``settings`` whose value is not None."""
        self.cli("master", "create-master", "-d", str(self.mdir), "--location",
                 f"tcp:127.0.0.1:{self.dial}", "--port",
                 f"tcp:{self.port}:interface=127.0.0.1", *extra)
        lines = [f"{k} = {v}\n" for k, v in settings.items() if v is not None]
        if lines:
            with open(self.mdir / "furl-master.conf", "a") as f:
                f.writelines(lines)

    def create_worker(self, name: str) -> str:
        """``furl-master create-worker NAME -o tmp/NAME.furl``; the FURL."""
        self.cli("master", "create-worker", "-d", str(self.mdir), name, "-o",
                 str(self.furl_file(name)))
        return self.furl(name)

    def start_master(self) -> int:
        """``furl-master start`` (it returns once the master listens); its pid."""
        pidfile = self.mdir / "furl-master.pid"
        self.procs.track_pidfile(pidfile)
        self.cli("master", "start", "-d", str(self.mdir))
        pid = self.procs.track_pidfile(pidfile)
        if pid is None:
            raise RuntimeError("the master started but wrote no pidfile")
        self.master_pid = pid
        return pid

    def start_worker(self, name: str) -> None:
        """``furl-worker create-worker`` (first time) and ``furl-worker start``
        (it returns once the worker has attached)."""
        wdir = self.wdir(name)
        if not wdir.exists():
            self.cli("worker", "create-worker", str(wdir), "--furl-file",
                     str(self.furl_file(name)))
        self.procs.track_pidfile(wdir / "furl-worker.pid")
        self.cli("worker", "start", str(wdir))
        self.procs.track_pidfile(wdir / "furl-worker.pid")

    def setup(self, *extra_master: str, more_names: Iterable[str] = (),
              **settings: object) -> None:
        """The master (``extra_master`` options, ``settings``), a FURL for every
        worker and for each of ``more_names`` (left to the caller), the master
        started, every worker started and attached."""
        self.create_master(*extra_master, **settings)
        for name in [*self.names, *more_names]:
            self.create_worker(name)
        self.start_master()
        for name in self.names:
            self.start_worker(name)

    # -- what runs on it ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``furl-master status --json``."""
        _, out, _ = self.cli("master", "status", "-d", str(self.mdir), "--json")
        return json.loads(out)

    def run_true(self, name: str) -> Sample:
        """``furl-master run NAME -- true``, timed (a new CLI process)."""
        wall, t0 = time.time(), time.monotonic()
        rc, _, err = self.cli("master", "run", "-d", str(self.mdir), name, "--", "true",
                              check=False, timeout=60)
        return Sample("run", wall, time.monotonic() - t0, rc == 0,
                      "" if rc == 0 else f"{name}: rc {rc}: {err.strip()[-200:]}")

    def restart_worker(self, name: str) -> Sample:
        """``furl-worker stop``, then ``furl-worker start`` timed (to attached)."""
        self.cli("worker", "stop", str(self.wdir(name)), check=False)
        wall, t0 = time.time(), time.monotonic()
        rc, _, err = self.cli("worker", "start", str(self.wdir(name)), check=False, timeout=60)
        self.procs.track_pidfile(self.wdir(name) / "furl-worker.pid")
        return Sample("start", wall, time.monotonic() - t0, rc == 0,
                      "" if rc == 0 else f"{name}: rc {rc}: {err.strip()[-200:]}")


def log_tail(path: Path, offset: int, end: int | None = None) -> str:
    """A log's text from byte ``offset`` (to ``end``)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read() if end is None else f.read(max(0, end - offset))
    return data.decode(errors="replace")


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile, nearest rank (the ceil(q/100 * n)-th smallest);
    None for no values."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v) / 100) - 1))]


def say(msg: str) -> None:
    """A progress line on stderr (the results go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def keep_or_remove(tmp: Path, keep: bool, tell: Callable[[str], None] = say) -> None:
    """A tool's scratch directory at its end: kept (and where said) when the
    user asked to keep it (``--keep``), else removed."""
    if keep:
        tell(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
