"""Worker processes: started, stopped by pid, and made to die with us.

Every process the benchmark starts is recorded in :class:`Children` and
stopped by its pid (``quit`` on its stdin, SIGKILL if it does not go),
also when a run fails or is interrupted.  The other half of that promise
runs in the child: ``die_with_parent`` (buildbot_furl.testing.procs) asks
the kernel to SIGTERM the child when the benchmark dies, and the child also
exits at EOF on stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor

from bench.transport.clock import within
from buildbot_furl.testing.procs import child_env

CHILD = "bench.transport.child"  # run with -m: child_env puts the checkout on PYTHONPATH


class Child(protocol.ProcessProtocol):
    """One worker process; see child.py for its control lines."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended = False
        self._end_waiters: list[defer.Deferred[None]] = []
        self.buf = b""
        self.pid: int | None = None

    def wait(self) -> defer.Deferred[None]:
        """A new Deferred that fires when the process has ended."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.ended:
            d.callback(None)
        else:
            self._end_waiters.append(d)
        return d

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line == b"ready" and not self.ready.called:
                self.ready.callback(None)

    def send(self, line: bytes) -> None:
        with contextlib.suppress(Exception):
            self.transport.write(line + b"\n")

    def processEnded(self, reason: Any) -> None:
        self.pid = None
        self.ended = True
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"worker process {self.label} exited early"))
        waiters, self._end_waiters = self._end_waiters, []
        for d in waiters:
            d.callback(None)


class Children:
    """Every process this benchmark starts; all are stopped by pid."""

    def __init__(self, logdir: Path, profile: bool = False) -> None:
        self.logdir = logdir
        self.profile = profile
        self.all: list[Child] = []

    def spawn(self, label: str, cfg: dict[str, Any], env: dict[str, str] | None = None
              ) -> Child:
        """Start child.py with ``cfg`` (see there) and ``env``, in ``cfg["basedir"]``."""
        child = Child(label)
        with open(self.logdir / f"{label}.log", "wb") as log:
            reactor.spawnProcess(child, sys.executable, [sys.executable, "-m", CHILD],
                                 env=self._env(label, cfg, env), path=cfg["basedir"],
                                 childFDs={0: "w", 1: "r", 2: log.fileno()})
        self.all.append(child)
        return child

    def _env(self, label: str, cfg: dict[str, Any], env: dict[str, str] | None
             ) -> dict[str, str]:
        full_env = child_env({"BENCH_CHILD": json.dumps(cfg), **(env or {})})
        if self.profile:
            full_env["BENCH_PROFILE"] = str(self.logdir / f"{label}.prof")
        return full_env

    async def stop(self, child: Child, grace: float = 5.0) -> None:
        """``quit``, then SIGKILL by pid after ``grace`` seconds."""
        if child.ended:
            return
        child.send(b"quit")
        with contextlib.suppress(Exception):
            await within(child.wait(), grace, "")
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await within(child.wait(), 5, "")

    async def stop_all(self) -> None:
        await defer.DeferredList([defer.Deferred.fromCoroutine(self.stop(c))
                                  for c in self.all], consumeErrors=True)

    def kill_all_now(self) -> None:
        """Synchronous last resort (reactor shutdown, atexit)."""
        for child in self.all:
            if child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
