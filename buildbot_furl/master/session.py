"""One attached worker: its bot reference, what it said at attach, its peer."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from buildbot_furl.protocol.messages import AttachInfo

log = Logger()


def peer_of(rref: Any) -> str:
    """``host:port`` of the far end of a RemoteReference, or '?'."""
    try:
        p = rref.getPeer()
        host = getattr(p, "host", None)
        return f"{host}:{p.port}" if host is not None else str(p)
    except Exception:
        return "?"


class WorkerSession:
    """A worker's attachment.  ``drop()`` severs the TCP connection itself:
    foolscap keeps a held reference working until its connection goes."""

    def __init__(self, name: str, bot: Any, info: AttachInfo, protocol: int,
                 peer: str) -> None:
        self.name = name
        self.bot = bot
        self.info = info
        self.protocol = protocol
        self.peer = peer
        self.session_id = secrets.token_hex(16)
        self.connected_at = time.time()
        self.dropped = False  # drop() was asked for
        self.gone = False  # the connection is closed
        self._callbacks: list[Callable[[], None]] = []
        self._marker = bot.notifyOnDisconnect(self._disconnected)

    @property
    def worker_info(self) -> dict[str, Any]:
        """What the worker said of itself (buildbot-worker's getWorkerInfo
        less its environment)."""
        return self.info.worker_info

    def add_disconnect_callback(self, cb: Callable[[], None]) -> Callable[[], None]:
        self._callbacks.append(cb)
        return cb

    def remove_disconnect_callback(self, cb: Callable[[], None]) -> None:
        if cb in self._callbacks:
            self._callbacks.remove(cb)

    def _disconnected(self) -> None:
        if self.gone:
            return
        self.gone = True
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.failure("disconnect callback of worker {name} failed", name=self.name)

    def drop(self, why: str) -> None:
        """Close the connection (idempotent)."""
        if self.dropped:
            return
        self.dropped = True
        log.info("dropping connection of worker {name} ({why})", name=self.name, why=why)
        try:
            self.bot.tracker.broker.transport.loseConnection()
        except Exception:
            log.failure("could not close the connection of worker {name}", name=self.name)
        # the disconnect notification fires on its own once the transport closes
