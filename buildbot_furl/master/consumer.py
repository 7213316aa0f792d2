"""What the master host hands its workers to, and what it answers about them.

A :class:`~buildbot_furl.master.host.MasterHost` serves one consumer: the
standalone runner (:class:`~buildbot_furl.master.standalone.Standalone`)
or the Buildbot plugin (:class:`~buildbot_furl.buildbot.hub.FurlHub`).
The host makes one :class:`~buildbot_furl.master.connection.FurlConnection`
per worker session, keeps the one table of them, and tells the consumer
(:class:`WorkerConsumer`).  The consumer asks the host about workers
through :class:`Workers`; nothing outside the host reads the registry.

A drained worker is told to stop in one place: its connection's
``remoteShutdown`` (Buildbot calls it once the worker is idle; the
standalone runner once its last command ends).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.session import WorkerSession


class WorkerConsumer(Protocol):
    """What a master does with its attached workers."""

    def attached(self, session: WorkerSession,
                 connection: FurlConnection) -> Awaitable[None] | None:
        """A worker attached; raising a WireError refuses it (the host then
        forgets the session and calls :meth:`detached`)."""

    def detached(self, session: WorkerSession, connection: FurlConnection) -> None:
        """The session ended (or was refused); ``connection`` has been told."""

    def drain_started(self, session: WorkerSession, connection: FurlConnection) -> int:
        """A graceful stop was asked (by either side): give the worker no new
        work, stop it once idle.  How many commands (or builds) still run."""


class Workers(Protocol):
    """What the host answers about its workers (implemented by MasterHost)."""

    def knows(self, name: str) -> bool:
        """Whether workers.furls lists ``name`` (re-read if it changed)."""

    def session_of(self, name: str) -> WorkerSession | None:
        """The worker's live session, if it has one."""

    def connection_of(self, session: WorkerSession) -> FurlConnection | None:
        """The connection the host made for ``session`` (None once it ended)."""

    def drain(self, session: WorkerSession, who: str) -> int:
        """Start a graceful stop of ``session``, asked by ``who``."""


#: how a host gets its consumer: made from the host's :class:`Workers`
ConsumerFactory = Callable[[Workers], WorkerConsumer]
