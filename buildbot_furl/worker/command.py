"""buildbot-worker's commands over foolscap: the ProtocolCommand hooks.

The commands themselves (shell, stat, glob, uploadFile, ...) and the path
semantics are buildbot-worker's own (``ProtocolCommandPb``); this module
only replaces how their output and files travel:

* updates are batched, sequence-numbered and sent with several batches in
  flight; the master answers each with the highest number it has applied.
  While more than ``UPDATE_WINDOW`` bytes are unconfirmed the command's
  process is paused (backpressure), so worker memory stays bounded.
* uploads are coalesced into ``CHUNK``-sized writes, ``FILE_WINDOW`` in
  flight; downloads are read ahead the same way.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any

from buildbot_worker.pb import ProtocolCommandPb
from foolscap.eventual import fireEventually
from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python.failure import Failure

from buildbot_furl.protocol import MAX_CHUNK, call, encode
from buildbot_furl.protocol.messages import (
    encode_failure,
    encode_updates,
    items_size,
    update_items,
)

log = Logger()

BATCH_BYTES = 256 * 1024
UPDATE_WINDOW = 4 * 1024 * 1024
CHUNK = MAX_CHUNK
FILE_WINDOW = 4


class UpdateSender:
    """Sequence-numbered, windowed delivery of one command's updates."""

    def __init__(self, status: Any, pause: Any, resume: Any) -> None:
        self.status = status
        self.pause = pause
        self.resume = resume
        self.seq = 0
        self.acked = 0
        self.pending: list[list[Any]] = []
        self.pending_bytes = 0
        self.unacked: dict[int, int] = {}  # seq -> bytes
        self.unacked_bytes = 0
        self.paused = False
        self.failed: Exception | None = None
        self._flush_call: Any = None

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
            self._flush_call = reactor.callLater(0, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self.pending:
            return
        batch, size = self.pending, self.pending_bytes
        self.pending, self.pending_bytes = [], 0
        self.seq += 1
        seq = self.seq
        self.unacked[seq] = size
        self.unacked_bytes += size
        if self.unacked_bytes > UPDATE_WINDOW and not self.paused:
            self.paused = True
            self.pause()
        d = defer.Deferred.fromCoroutine(
            call(self.status, "update", seq, encode_updates(batch)))
        d.addCallbacks(self._acked, self._failed, callbackArgs=(seq,))

    def _acked(self, highest: Any, seq: int) -> None:
        highest = highest if isinstance(highest, int) else seq
        self.acked = max(self.acked, highest)
        for s in [s for s in self.unacked if s <= self.acked]:
            self.unacked_bytes -= self.unacked.pop(s)
        if self.paused and self.unacked_bytes <= UPDATE_WINDOW // 2:
            self.paused = False
            self.resume()

    def _failed(self, f: Any) -> None:
        if self.failed is None:
            self.failed = f.value
            log.info("sending updates failed: {err}", err=str(f.value))
        self.unacked.clear()
        self.unacked_bytes = 0
        if self.paused:
            self.paused = False
            self.resume()


class ChunkWriter:
    """Coalesced, windowed writes to one master-side file writer."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.buf = bytearray()
        self.inflight: deque[defer.Deferred[Any]] = deque()
        self.error: Exception | None = None
        self._room: list[defer.Deferred[None]] = []

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data: bytes) -> defer.Deferred[None]:
        self._raise()
        self.buf += data
        while len(self.buf) >= CHUNK:
            chunk = bytes(self.buf[:CHUNK])
            del self.buf[:CHUNK]
            self._send(chunk)
        if len(self.inflight) < FILE_WINDOW:
            return fireEventually(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._room.append(d)
        return d

    def _send(self, chunk: bytes) -> None:
        d = defer.Deferred.fromCoroutine(call(self.writer, "write", chunk))
        self.inflight.append(d)

        def done(result: Any) -> None:
            self.inflight.remove(d)
            if isinstance(result, Failure) and self.error is None:
                self.error = result.value
            while self._room and (len(self.inflight) < FILE_WINDOW or self.error):
                waiter = self._room.pop(0)
                if self.error is not None:
                    waiter.errback(self.error)
                else:
                    waiter.callback(None)

        d.addBoth(done)

    async def drain(self) -> None:
        """Send what is buffered and wait for every write to be confirmed."""
        if self.buf:
            chunk, self.buf = bytes(self.buf), bytearray()
            self._send(chunk)
        while self.inflight:
            await defer.DeferredList(list(self.inflight), consumeErrors=True)
        self._raise()

    async def finish(self, method: str, *args: Any) -> Any:
        try:
            await self.drain()
        except Exception:
            # still let the master close its side (e.g. remove its temp file)
            if method == "close":
                with contextlib.suppress(Exception):
                    await call(self.writer, "close")
            raise
        return await call(self.writer, method, *args)


class ReadAhead:
    """Prefetching reads from one master-side file reader."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.buf = bytearray()
        self.inflight: deque[defer.Deferred[Any]] = deque()
        self.eof = False

    def _fill(self) -> None:
        while not self.eof and len(self.inflight) < FILE_WINDOW:
            self.inflight.append(
                defer.Deferred.fromCoroutine(call(self.reader, "read", CHUNK))
            )

    async def read(self, length: int) -> bytes:
        self._fill()
        while not self.buf and self.inflight:
            try:
                data = await self.inflight.popleft()
            except Exception:
                self._abandon()
                raise
            if not data:
                self.eof = True
                self._abandon()
                break
            self.buf += data
            self._fill()
        out = bytes(self.buf[:length])
        del self.buf[:length]
        await fireEventually(None)
        return out

    def _abandon(self) -> None:
        """Forget prefetches still in flight, their errors included."""
        self.eof = True
        for d in self.inflight:
            d.addErrback(lambda f: None)
        self.inflight.clear()

    async def close(self) -> Any:
        self._abandon()
        return await call(self.reader, "close")


class FurlProtocolCommand(ProtocolCommandPb):
    """ProtocolCommandPb with its transport hooks replaced by foolscap ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sender: UpdateSender | None = None
        self._writers: dict[int, ChunkWriter] = {}
        self._readers: dict[int, ReadAhead] = {}
        self._disconnect_marker: Any = None
        super().__init__(*args, **kwargs)

    # -- updates --------------------------------------------------------------
    def _producer(self) -> Any:
        runprocess = getattr(self.command, "command", None)
        pp = getattr(runprocess, "pp", None)
        return getattr(pp, "transport", None)

    def _pause(self) -> None:
        producer = self._producer()
        if producer is not None and hasattr(producer, "pauseProducing"):
            producer.pauseProducing()

    def _resume(self) -> None:
        producer = self._producer()
        if producer is not None and hasattr(producer, "resumeProducing"):
            producer.resumeProducing()

    def _get_sender(self) -> UpdateSender:
        if self.sender is None:
            self.sender = UpdateSender(self.command_ref, self._pause, self._resume)
        return self.sender

    def protocol_send_update_message(self, message: list[tuple[str, Any]]) -> None:
        if self.command_ref is None:
            return
        self._get_sender().add(update_items(message))

    def protocol_notify_on_disconnect(self) -> None:
        self._disconnect_marker = self.command_ref.notifyOnDisconnect(
            self.on_lost_remote_step, self.command_ref
        )

    @defer.inlineCallbacks
    def protocol_complete(self, failure: Any) -> Any:
        yield self.flush_command_output()
        sender = self._get_sender()
        # no need to wait for the acknowledgements: foolscap delivers calls in
        # order and the master applies complete only after every update
        sender.flush()
        if self.command_ref is None:
            return
        if self._disconnect_marker is not None:
            self.command_ref.dontNotifyOnDisconnect(self._disconnect_marker)
            self._disconnect_marker = None
        text = None
        if failure is not None:
            kind = getattr(failure.type, "__name__", str(failure.type))
            text = f"{kind}: {failure.getErrorMessage()}"
        yield defer.Deferred.fromCoroutine(
            call(self.command_ref, "complete", sender.seq + 1, encode_failure(text))
        )

    # -- uploads --------------------------------------------------------------
    def _writer(self, writer: Any) -> ChunkWriter:
        cw = self._writers.get(id(writer))
        if cw is None:
            cw = self._writers[id(writer)] = ChunkWriter(writer)
        return cw

    def protocol_update_upload_file_write(self, writer: Any, data: bytes) -> Any:
        return self._writer(writer).write(data)

    def protocol_update_upload_directory_write(self, writer: Any, data: bytes) -> Any:
        return self._writer(writer).write(data)

    def protocol_update_upload_file_utime(self, writer: Any, access_time: float,
                                          modified_time: float) -> Any:
        return defer.Deferred.fromCoroutine(
            self._writer(writer).finish("utime", encode([access_time, modified_time]))
        )

    def protocol_update_upload_file_close(self, writer: Any) -> Any:
        return defer.Deferred.fromCoroutine(self._writer(writer).finish("close"))

    def protocol_update_upload_directory(self, writer: Any) -> Any:
        return defer.Deferred.fromCoroutine(self._writer(writer).finish("unpack"))

    # -- downloads ------------------------------------------------------------
    def _reader(self, reader: Any) -> ReadAhead:
        ra = self._readers.get(id(reader))
        if ra is None:
            ra = self._readers[id(reader)] = ReadAhead(reader)
        return ra

    def protocol_update_read_file(self, reader: Any, length: int) -> Any:
        return defer.Deferred.fromCoroutine(self._reader(reader).read(length))

    def protocol_update_read_file_close(self, reader: Any) -> Any:
        return defer.Deferred.fromCoroutine(self._reader(reader).close())

