"""The master's side of one running command: its update batches and completion."""

from __future__ import annotations

from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from buildbot_furl.errors import ConnectionLost, RemoteError
from buildbot_furl.protocol import RICommandStatus, remote_method
from buildbot_furl.protocol.messages import check_seq, decode_failure, decode_updates


@implementer(RICommandStatus)
class CommandStatus(Referenceable):
    """Feeds a command's updates to Buildbot's ``RemoteCommand`` (or anything
    with ``remote_update(updates)`` and ``remote_complete(failure)``).

    Applies each batch at most once and in order: a batch whose sequence
    number is not above the highest applied one (a replay after a reattach)
    is acknowledged without being applied again.
    """

    def __init__(self, remote_command: Any) -> None:
        self.remote_command = remote_command
        self.applied = 0
        self.completed = False
        #: fires once the command's completion has been handed on
        self.finished: defer.Deferred[None] = defer.Deferred()
        self._lock = defer.DeferredLock()

    def _finish(self) -> None:
        if not self.finished.called:
            self.finished.callback(None)

    def lost(self, why: str) -> None:
        """The worker no longer has the command: complete it as failed."""
        if self.completed:
            return
        self.completed = True
        d = defer.maybeDeferred(self.remote_command.remote_complete,
                                Failure(ConnectionLost(why)))
        d.addErrback(lambda f: None)
        self._finish()

    @remote_method
    async def remote_update(self, seq: int, batch: bytes) -> int:
        seq = check_seq(seq)
        updates = [[u, 0] for u in decode_updates(batch)]
        await self._lock.acquire()
        try:
            if seq <= self.applied or self.completed:
                return self.applied
            # counted before applying: Buildbot's remote_update is not
            # idempotent, so a batch that failed halfway is not tried again
            self.applied = seq
            if updates:
                result = self.remote_command.remote_update(updates)
                if isinstance(result, defer.Deferred):
                    await result
            return self.applied
        finally:
            self._lock.release()

    @remote_method
    async def remote_complete(self, seq: int, failure: bytes) -> int:
        seq = check_seq(seq)
        text = decode_failure(failure)
        await self._lock.acquire()
        try:
            if self.completed:
                return seq
            self.completed = True
            # Buildbot raises a str failure as-is only on its msgpack path;
            # a Failure works with every RemoteCommand implementation
            why = Failure(RemoteError(text)) if text is not None else None
            try:
                result = self.remote_command.remote_complete(why)
                if isinstance(result, defer.Deferred):
                    await result
            finally:
                self._finish()
            return seq
        finally:
            self._lock.release()
