"""A helper process driven by lines: both ends.

The parent (:class:`LineChild`) starts ``python -m MODULE ROLE`` with a JSON
config in ``$LINE_CHILD_CONFIG``, writes commands to its stdin (``go``,
``quit``, anything else the child understands) and reads JSON lines from its
stdout on a thread.  The child (:func:`config`, :func:`emit`, :func:`serve`)
runs its work under its own reactor, so that what it measures or does never
shares an event loop with the parent; it calls ``procs.die_with_parent()``
first and stops at ``quit`` or EOF.  Used by bench/attack (the
attacker, the prober) and bench/scale (the fleet, the stall probe).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from buildbot_furl.testing.procs import ROOT, Procs

CONFIG_VAR = "LINE_CHILD_CONFIG"


class LineChild:
    """``python -m module role`` under ``procs``; its JSON lines go to ``lines``
    (``{"kind": "eof"}`` last), its stderr to ``logfile``."""

    def __init__(self, procs: Procs, role: str, cfg: dict[str, Any], logfile: Path,
                 module: str) -> None:
        self.log = open(logfile, "wb")
        self.proc = procs.popen(sys.executable, "-m", module, role,
                                env={CONFIG_VAR: json.dumps(cfg)}, cwd=str(ROOT),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(raw))
        self.lines.put({"kind": "eof"})

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next line of ``kind`` (others are dropped); an error if the child
        ends, reports an error, or says nothing of the kind in ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {kind!r} from the child in {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line["kind"] == kind:
                return line
            if line["kind"] in ("eof", "error"):
                raise RuntimeError(f"the child ended or failed before {kind!r}: {line}")

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def stop(self) -> None:
        """``quit``; SIGKILL (by its pid, not yet reaped) if it has not gone in 8 s."""
        self.send("quit")
        try:
            self.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


# -- the child's end --------------------------------------------------------------------

def config() -> dict[str, Any]:
    """In the child: the parent's config."""
    return json.loads(os.environ[CONFIG_VAR])


#: where emit writes: the control channel's transport once it is up
_out: list[Any] = []


def emit(kind: str, **fields: Any) -> None:
    """In the child: one JSON line to the parent."""
    line = (json.dumps({"kind": kind, **fields}) + "\n").encode()
    if _out:
        _out[0].write(line)
    else:
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def serve(worker: Any, autostart: bool, stop_when_done: bool) -> None:
    """In the child: run ``worker`` (``run()``, ``stop()`` coroutines; optional
    ``command(line)``) under the control channel on stdin/stdout: ``ready``
    once the channel is up, ``go`` starts ``run()`` (at once with
    ``autostart``), ``quit`` or EOF stops it and the reactor; any other line
    goes to ``worker.command``.  Blocks until the reactor stops."""
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineOnlyReceiver

    stopping: list[bool] = []

    def shutdown() -> None:
        if stopping:
            return
        stopping.append(True)
        d = defer.Deferred.fromCoroutine(worker.stop())
        d.addTimeout(5, reactor)
        d.addBoth(lambda _: reactor.stop())

    def go() -> None:
        d = defer.Deferred.fromCoroutine(worker.run())
        d.addErrback(lambda f: emit("error", error=f.getErrorMessage()))
        if stop_when_done:  # the result line goes out before the reactor stops
            d.addBoth(lambda _: reactor.callLater(0.2, shutdown))

    class Control(LineOnlyReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            _out.append(self.transport)
            emit("ready")
            if autostart:
                go()

        def lineReceived(self, line: bytes) -> None:
            if line == b"go" and not autostart:
                go()
            elif line == b"quit":
                shutdown()
            elif hasattr(worker, "command"):
                worker.command(line)

        def connectionLost(self, reason: Any) -> None:
            shutdown()

    reactor.callWhenRunning(stdio.StandardIO, Control())
    reactor.run()
