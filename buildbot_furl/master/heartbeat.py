"""The master's heartbeat record in the cluster directory (buildbot_furl/cluster.py).

:class:`Heartbeat` writes the record every ``interval`` seconds, and soon
after a worker attaches or detaches (``changed()``, at most once per
``debounce`` seconds), on the host's clock; it removes the record at a
clean stop.  A write that fails (the shared directory gone, full, not ours)
is logged once, not every interval, and tried again at the next heartbeat:
the master serves its workers either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from buildbot_furl.cluster import SUFFIX, MasterRecord
from buildbot_furl.privatefiles import write_private

log = Logger()

#: at most one write per this many seconds for attaches and detaches
DEBOUNCE = 1.0


class Heartbeat(service.Service):
    """Writes ``snapshot(now)`` to ``directory/<its master_id>.json``."""

    def __init__(self, directory: str, snapshot: Callable[[float], MasterRecord],
                 clock: IReactorTime, interval: float, debounce: float = DEBOUNCE) -> None:
        self.directory = directory
        self.snapshot = snapshot
        self.clock = clock
        self.interval = interval
        self.debounce = debounce
        self.path: str | None = None  # once written
        self.failing: str | None = None  # why the last write failed (logged once)
        self._last = float("-inf")  # when the last write was
        self._soon: IDelayedCall | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        loop = LoopingCall(self.write)
        loop.clock = self.clock
        self._loop = loop
        loop.start(self.interval, now=True)  # (write() never raises: the loop goes on)

    def changed(self) -> None:
        """A worker attached, detached or started a graceful stop: write
        soon (now, unless a write was less than ``debounce`` seconds ago)."""
        if not self.running or self._soon is not None:
            return
        delay = max(0.0, self._last + self.debounce - self.clock.seconds())
        self._soon = self.clock.callLater(delay, self._write_soon)

    def _write_soon(self) -> None:
        self._soon = None
        self.write()

    def write(self) -> None:
        """Write the record now (atomic, 0600); a failure is logged, not raised."""
        now = self.clock.seconds()
        self._last = now
        record = self.snapshot(now)
        path = os.path.join(self.directory, record.master_id + SUFFIX)
        try:
            if not os.path.isdir(self.directory):
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
            # atomic, but not fsynced: the write is on the reactor, maybe to a
            # network file system, every few seconds; a record lost in a crash
            # of this host is a stale record, which is what it should say then
            write_private(path, record.to_json(), sync=False)
        except OSError as e:
            why = f"{e.strerror or e}: {e.filename or self.directory}"
            if why != self.failing:
                log.error("cluster heartbeat: cannot write {path}: {why} (tried again every "
                          "{n:g} s; list-workers --cluster on the other masters will say this "
                          "master is gone)", path=path, why=why, n=self.interval)
            self.failing = why
            return
        if self.failing is not None:
            log.info("cluster heartbeat: {path} written again", path=path)
            self.failing = None
        self.path = path

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        if self.path is not None:  # a clean stop: no record, not a stale one
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None
        return super().stopService()
