"""What a running command sends and receives, kept until the master has it.

Each of these talks to one master-side object through the current
connection.  When a call fails because the connection went
(:class:`~buildbot_furl.errors.ConnectionLost`), nothing is dropped: what
the master has not acknowledged is kept, and once the worker has
reattached, :meth:`rebind` hands over the master's fresh reference and how
far the master got, and the rest is sent again, in order.  Memory stays
bounded: past a window of unacknowledged bytes the command's process is
paused (updates) or the command waits (file chunks).

* :class:`UpdateSender` — sequence-numbered batches of a command's output
  and status, then its completion;
* :class:`ChunkWriter` — an upload, in offset-tagged chunks;
* :class:`ReadAhead` — a download, read ahead by offset.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from foolscap.eventual import fireEventually
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from buildbot_furl.errors import ConnectionLost
from buildbot_furl.protocol import call
from buildbot_furl.protocol.interfaces import UPDATE_WINDOW
from buildbot_furl.protocol.messages import encode_updates, items_size
from buildbot_furl.protocol.transfer import CONTRACT, Contract
from buildbot_furl.worker.metrics import NO_METRICS, WorkerEvents

log = Logger()

BATCH_BYTES = 256 * 1024


class SessionEnded(ConnectionLost):
    """The worker's session with its master is over: this command is orphaned."""


class _Link:
    """The current reference to one master-side object, and waiters for it
    to be back after the connection dropped."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref
        self.down = False
        self.ended: Exception | None = None
        self.generation = 0  # counts rebinds: a late failure from an old link is ignored
        self._waiters: list[defer.Deferred[None]] = []

    def lost(self, generation: int | None = None) -> None:
        if generation is None or generation == self.generation:
            self.down = True

    def wait_up(self) -> defer.Deferred[None]:
        """Fires once rebound; fails once the session ended."""
        if self.ended is not None:
            return defer.fail(self.ended)
        if not self.down:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def rebind(self, ref: Any, wake: bool = True) -> None:
        self.ref = ref
        self.down = False
        self.generation += 1
        if wake:
            self.wake()

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def end(self, why: Exception) -> None:
        self.ended = why
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(why)

    async def call(self, method: str, *args: Any) -> Any:
        """``method`` on the current reference; across a reattach, again on
        the new one (for calls the master applies once however often sent)."""
        while True:
            await self.wait_up()
            generation = self.generation
            try:
                return await call(self.ref, method, *args)
            except ConnectionLost:
                if self.ended is not None:
                    raise
                self.lost(generation)


def _consume(d: defer.Deferred[Any]) -> None:
    d.addErrback(lambda f: None)


class UpdateSender:
    """Sequence-numbered, windowed delivery of one command's updates."""

    def __init__(self, status: Any, pause: Callable[[], None],
                 resume: Callable[[], None],
                 clock: IReactorTime = reactor,  # type: ignore[assignment]
                 events: WorkerEvents = NO_METRICS) -> None:
        self.link = _Link(status)
        self.events = events  # counts the bytes of each batch, once
        #: updates added in one turn of the reactor leave in one batch, at its end
        self.clock = clock
        self.pause = pause
        self.resume = resume
        self.seq = 0
        self.acked = 0
        self.pending: list[list[Any]] = []
        self.pending_bytes = 0
        self.unacked: OrderedDict[int, tuple[bytes, int]] = OrderedDict()  # seq -> (payload, size)
        self.unacked_bytes = 0
        self.paused = False
        self._flush_call: Any = None
        self._completion: bytes | None = None  # the complete() payload, once the command ended
        #: fires once the master has the command's completion
        self.completed: defer.Deferred[None] = defer.Deferred()

    def add(self, items: list[list[Any]]) -> None:
        for item in items:
            size = items_size([item])
            if self.pending and self.pending_bytes + size > BATCH_BYTES:
                self.flush()
            self.pending.append(item)
            self.pending_bytes += size
        if self.pending_bytes >= BATCH_BYTES:
            self.flush()
        elif self.pending and self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self.pending:
            return
        payload, size = encode_updates(self.pending), self.pending_bytes
        self.pending, self.pending_bytes = [], 0
        self.seq += 1
        self.unacked[self.seq] = (payload, size)
        self.unacked_bytes += size
        self.events.update_sent(len(payload))
        if self.unacked_bytes > UPDATE_WINDOW and not self.paused:
            self.paused = True
            self.pause()
        self._send(self.seq, payload)

    def _send(self, seq: int, payload: bytes) -> None:
        if self.link.down or self.link.ended is not None:
            return  # kept in self.unacked: sent again after the reattach
        d = defer.Deferred.fromCoroutine(call(self.link.ref, "update", seq, payload))
        d.addCallbacks(self._acked, self._failed, errbackArgs=(self.link.generation,))

    def _acked(self, highest: Any) -> None:
        if isinstance(highest, int):
            self._forget_upto(highest)

    def _forget_upto(self, highest: int) -> None:
        self.acked = max(self.acked, highest)
        while self.unacked and next(iter(self.unacked)) <= self.acked:
            _, (_, size) = self.unacked.popitem(last=False)
            self.unacked_bytes -= size
        if self.paused and self.unacked_bytes <= UPDATE_WINDOW // 2:
            self.paused = False
            self.resume()

    def _failed(self, f: Failure, generation: int) -> None:
        if f.check(ConnectionLost):
            self.link.lost(generation)  # kept; sent again after the reattach
            return
        # the master refused the batch itself (it is malformed or out of
        # bounds): sending it again cannot help
        log.error("the master refused an update batch: {err}", err=str(f.value))
        self._forget_upto(self.seq)

    def complete(self, payload: bytes) -> defer.Deferred[None]:
        """Send the completion after every batch; fires once it is acknowledged."""
        self.flush()
        self._completion = payload
        self._send_completion()
        return self.completed

    def _send_completion(self) -> None:
        if self._completion is None or self.completed.called:
            return
        if self.link.down or self.link.ended is not None:
            return
        d = defer.Deferred.fromCoroutine(
            call(self.link.ref, "complete", self.seq + 1, self._completion))
        generation = self.link.generation

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                if result.check(ConnectionLost):
                    self.link.lost(generation)
                    return
                log.error("the master refused a command's completion: {err}",
                          err=str(result.value))
            if not self.completed.called:
                self.completed.callback(None)

        d.addBoth(done)

    def rebind(self, status: Any, applied: int, completed: bool) -> None:
        """The reattached master's object, and what it has applied: send the
        rest first (in order), and only then let anything new go."""
        self.link.rebind(status, wake=False)
        self.acked = max(self.acked, applied)
        if completed:
            self._forget_upto(self.seq)
            if not self.completed.called:
                self.completed.callback(None)
            return
        for seq, (payload, _size) in list(self.unacked.items()):
            if seq > self.acked:
                self._send(seq, payload)
        self._send_completion()
        self._forget_upto(applied)
        self.link.wake()

    def end(self, why: Exception) -> None:
        """The session is over: nothing more will be sent."""
        self.link.end(why)
        self.unacked.clear()
        self.unacked_bytes = 0
        if self.paused:
            self.paused = False
            self.resume()
        if not self.completed.called:
            self.completed.callback(None)


class ChunkWriter:
    """An upload to one master-side file writer: coalesced into chunk-sized
    writes tagged with their offset, the contract's window of them
    unacknowledged at most (:mod:`buildbot_furl.protocol.transfer`)."""

    def __init__(self, writer: Any, contract: Contract = CONTRACT) -> None:
        self.contract = contract
        self.link = _Link(writer)
        self.buf = bytearray()
        self.offset = 0  # where the next chunk starts
        self.unacked: OrderedDict[int, bytes] = OrderedDict()  # offset -> chunk
        self.error: Exception | None = None
        self._room: list[defer.Deferred[None]] = []
        self._acked_waiters: list[defer.Deferred[None]] = []

    @property
    def written(self) -> int:
        return self.offset - sum(len(c) for c in self.unacked.values())

    def write(self, data: bytes) -> defer.Deferred[None]:
        if self.error is not None:
            return defer.fail(self.error)
        self.buf += data
        size = self.contract.chunk
        while len(self.buf) >= size:
            chunk = bytes(self.buf[:size])
            del self.buf[:size]
            self._queue(chunk)
        if len(self.unacked) < self.contract.window:
            return fireEventually(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._room.append(d)
        return d

    def _queue(self, chunk: bytes) -> None:
        self.unacked[self.offset] = chunk
        self.offset += len(chunk)
        self._send(self.offset - len(chunk), chunk)

    def _send(self, offset: int, chunk: bytes) -> None:
        if self.link.down or self.link.ended is not None:
            return
        d = defer.Deferred.fromCoroutine(call(self.link.ref, "write", offset, chunk))
        d.addCallbacks(self._acked, self._failed, errbackArgs=(self.link.generation,))

    def _acked(self, written: Any) -> None:
        if isinstance(written, int):
            self._forget_upto(written)

    def _forget_upto(self, written: int) -> None:
        for offset in list(self.unacked):
            if offset + len(self.unacked[offset]) <= written:
                del self.unacked[offset]
        self._wake()

    def _failed(self, f: Failure, generation: int) -> None:
        if f.check(ConnectionLost):
            self.link.lost(generation)
            return
        if self.error is None:
            self.error = f.value
        self._wake()

    def _wake(self) -> None:
        while self._room and (len(self.unacked) < self.contract.window or self.error):
            d = self._room.pop(0)
            d.errback(self.error) if self.error is not None else d.callback(None)
        if not self.unacked or self.error is not None:
            waiters, self._acked_waiters = self._acked_waiters, []
            for d in waiters:
                d.errback(self.error) if self.error is not None else d.callback(None)

    async def flush_acknowledged(self) -> None:
        """Send what is buffered and wait until the master has every byte."""
        if self.buf:
            chunk, self.buf = bytes(self.buf), bytearray()
            self._queue(chunk)
        if self.error is not None:
            raise self.error
        if self.unacked:
            d: defer.Deferred[None] = defer.Deferred()
            self._acked_waiters.append(d)
            await d

    async def finish(self, method: str, *args: Any) -> Any:
        """Drain, then ``close``/``unpack``/``utime`` (which the master does once)."""
        try:
            await self.flush_acknowledged()
        except Exception:
            # still let the master close its side (e.g. remove its temp file)
            if method == "close" and self.link.ended is None:
                _consume(defer.Deferred.fromCoroutine(self.link.call("close")))
            raise
        return await self.link.call(method, *args)

    def rebind(self, writer: Any, written: int) -> None:
        """The reattached master's writer, and how much it has: send the rest
        first (in order), and only then let the command write more."""
        self.link.rebind(writer, wake=False)
        for offset in list(self.unacked):
            if offset + len(self.unacked[offset]) <= written:
                del self.unacked[offset]
        for offset, chunk in list(self.unacked.items()):
            skip = max(0, written - offset)
            self._send(offset + skip, chunk[skip:])
        self.link.wake()
        self._wake()

    def end(self, why: Exception) -> None:
        self.link.end(why)
        if self.error is None:
            self.error = why
        self._wake()


class ReadAhead:
    """A download from one master-side file reader, read ahead by offset
    as far as the transfer contract lets a reader ask
    (:meth:`~buildbot_furl.protocol.transfer.Contract.next_reads`)."""

    def __init__(self, reader: Any, contract: Contract = CONTRACT) -> None:
        self.contract = contract
        self.link = _Link(reader)
        self.buf = bytearray()
        self.received = 0  # bytes delivered into buf, from offset 0 on
        self.requested = 0  # where the next read asks from
        self.inflight: deque[tuple[int, defer.Deferred[Any], int]] = deque()
        self.eof = False

    def _fill(self) -> None:
        if self.eof or self.link.down or self.link.ended is not None:
            return
        size = self.contract.chunk
        for offset in list(self.contract.next_reads(self.received, self.requested)):
            d = defer.Deferred.fromCoroutine(call(self.link.ref, "read", offset, size))
            self.inflight.append((offset, d, self.link.generation))
            self.requested = offset + size

    async def read(self, length: int) -> bytes:
        while not self.buf and not self.eof:
            self._fill()
            if not self.inflight:
                await self.link.wait_up()
                continue
            offset, d, generation = self.inflight[0]
            try:
                data = await d
            except ConnectionLost:
                if self.link.ended is not None:
                    raise
                self.link.lost(generation)
                self._forget_inflight()
                continue
            except Exception:
                self._forget_inflight()
                self.eof = True
                raise
            self.inflight.popleft()
            if offset != self.received:
                continue  # an answer from before a reattach
            if not data:
                self.eof = True
                self._forget_inflight()
                break
            self.buf += data
            self.received += len(data)
            if len(data) < self.contract.chunk:  # a short read is the end: wait for no more
                self.eof = True
                self._forget_inflight()
        out = bytes(self.buf[:length])
        del self.buf[:length]
        await fireEventually(None)
        return out

    def _forget_inflight(self) -> None:
        for _, d, _ in self.inflight:
            _consume(d)
        self.inflight.clear()
        self.requested = self.received

    async def close(self) -> Any:
        self.eof = True
        self._forget_inflight()
        return await self.link.call("close")

    def rebind(self, reader: Any, sent: int) -> None:
        """``sent``: what the master had read from its source; the worker asks
        again from what it received (the master replays the difference)."""
        self._forget_inflight()
        self.link.rebind(reader)

    def end(self, why: Exception) -> None:
        self._forget_inflight()
        self.link.end(why)
