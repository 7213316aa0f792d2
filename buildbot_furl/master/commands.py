"""The master's side of one running command: its update batches and completion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from buildbot_furl.errors import BadRequest, ConnectionLost, RemoteError
from buildbot_furl.protocol import RICommandStatus, remote_method
from buildbot_furl.protocol.interfaces import UPDATES_IN_FLIGHT
from buildbot_furl.protocol.messages import check_seq, decode_failure, decode_updates


@implementer(RICommandStatus)
class CommandStatus(Referenceable):
    """Feeds a command's updates to Buildbot's ``RemoteCommand`` (or anything
    with ``remote_update(updates)`` and ``remote_complete(failure)``).

    Applies each batch at most once and in order: a batch whose sequence
    number is not above the highest applied one (a replay after a reattach)
    is acknowledged without being applied again.
    """

    def __init__(self, remote_command: Any,
                 on_violation: Callable[[str], None] = lambda what: None) -> None:
        self.remote_command = remote_command
        self.on_violation = on_violation
        self.applied = 0
        self.completed = False
        #: how it ended (master/metrics.py's COMMAND_RESULTS), once it did
        self.result: str | None = None
        self.update_bytes = 0  # of the batches applied
        #: fires once the command's completion has been handed on
        self.finished: defer.Deferred[None] = defer.Deferred()
        self._lock = defer.DeferredLock()
        self._in_flight = 0  # bytes of update batches received and not answered yet

    def _finish(self) -> None:
        if not self.finished.called:
            self.finished.callback(None)

    def lost(self, why: str) -> None:
        """The worker no longer has the command: complete it as failed."""
        if self.completed:
            return
        self.completed, self.result = True, "lost"
        d = defer.maybeDeferred(self.remote_command.remote_complete,
                                Failure(ConnectionLost(why)))
        d.addErrback(lambda f: None)
        self._finish()

    async def refused(self, why: str) -> None:
        """The worker refused to start the command (its policy): end it as
        a failure whose error output says why, as a Buildbot step shows it."""
        await self._lock.acquire()
        try:
            if self.completed:
                return
            self.completed, self.result = True, "refused"
            try:
                result = self.remote_command.remote_update(
                    [[{"stderr": f"{why}\n"}, 0], [{"rc": 1}, 0]])
                if isinstance(result, defer.Deferred):
                    await result
                result = self.remote_command.remote_complete(None)
                if isinstance(result, defer.Deferred):
                    await result
            finally:
                self._finish()
        finally:
            self._lock.release()

    def _refuse(self, what: str) -> BadRequest:
        self.on_violation(what)
        return BadRequest(what)

    @remote_method
    async def remote_update(self, seq: int, batch: bytes) -> int:
        # Bounded before anything is decoded: an honest worker leaves at most
        # about UPDATE_WINDOW unacknowledged; a hostile one sending a hundred
        # 4 MB batches at once must not make the master hold them all.
        size = len(batch) if isinstance(batch, bytes) else 0
        if self._in_flight + size > UPDATES_IN_FLIGHT:
            raise self._refuse(f"more than {UPDATES_IN_FLIGHT} bytes of update batches "
                               "waiting at once (the worker ignores its window)")
        self._in_flight += size
        try:
            return await self._update(seq, batch)
        finally:
            self._in_flight -= size

    async def _update(self, seq: int, batch: bytes) -> int:
        await self._lock.acquire()
        try:
            try:  # decoded one at a time, under the lock: one decoded batch in memory
                seq = check_seq(seq)
                updates = [[u, 0] for u in decode_updates(batch)]
            except BadRequest as e:
                raise self._refuse(f"a malformed update batch ({e})") from None
            if self.completed:
                raise self._refuse(f"an update batch ({seq}) for a command that has ended")
            if seq <= self.applied:
                return self.applied  # sent again after a reattach: applied already
            if seq != self.applied + 1:
                raise self._refuse(f"update batch {seq} after batch {self.applied} (batches "
                                   "must come one after another)")
            # counted before applying: Buildbot's remote_update is not
            # idempotent, so a batch that failed halfway is not tried again
            self.applied = seq
            self.update_bytes += len(batch)
            if updates:
                result = self.remote_command.remote_update(updates)
                if isinstance(result, defer.Deferred):
                    await result
            return self.applied
        finally:
            self._lock.release()

    @remote_method
    async def remote_complete(self, seq: int, failure: bytes) -> int:
        try:
            seq = check_seq(seq)
            text = decode_failure(failure)
        except BadRequest as e:
            raise self._refuse(f"a malformed completion ({e})") from None
        await self._lock.acquire()
        try:
            if self.completed:
                return seq
            self.completed, self.result = True, "failed" if text is not None else "completed"
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
