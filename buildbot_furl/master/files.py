"""The master's side of a file transfer: Buildbot's file writers and readers
as references the worker can call.

They wrap Buildbot's ``FileWriterImpl``/``FileReaderImpl`` objects
(``FileWriter``, ``DirectoryWriter``, ``FileReader``, ...), or anything with
their method names, and bound and check every argument on the way in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from buildbot_furl.errors import BadRequest
from buildbot_furl.protocol import RIFileReader, RIFileWriter, remote_method
from buildbot_furl.protocol.messages import FileTimes
from buildbot_furl.protocol.transfer import CONTRACT, Contract, TransferViolation


async def _maybe_await(result: Any) -> Any:
    if isinstance(result, defer.Deferred):
        return await result
    return result


@implementer(RIFileWriter)
class FileWriterAdapter(Referenceable):
    """An upload's sink (Buildbot's FileWriterImpl duck type) as a reference.

    Calls reach the wrapped writer one at a time and in arrival order even
    when it answers with Deferreds, since the worker keeps several in flight.
    Every write says where its bytes go: after a reattach the worker sends
    again what it had not seen acknowledged, and bytes already written are
    skipped, so the writer sees each byte once, in order (the transfer
    contract, :mod:`buildbot_furl.protocol.transfer`, says which writes are
    refused: a gap, bytes past the announced size).  ``close``,
    ``unpack`` and ``utime`` happen once however often they are asked for.
    """

    def __init__(self, impl: Any, limit: int | None = None,
                 on_violation: Callable[[str], None] = lambda what: None,
                 contract: Contract = CONTRACT) -> None:
        self.impl = impl
        #: the most bytes the transfer may bring (its announced maxsize)
        self.limit = limit
        self.on_violation = on_violation
        self.contract = contract
        self.written = 0  # bytes handed to impl
        #: what the sink raised: every later write gets it too (not counted:
        #: the worker's writes in flight meanwhile are no fault of its own)
        self.failed: Exception | None = None
        self._done: set[str] = set()
        self._lock = defer.DeferredLock()

    async def _serial(self, method: str, *args: Any) -> None:
        await self._lock.acquire()
        try:
            await _maybe_await(getattr(self.impl, method)(*args))
        finally:
            self._lock.release()

    async def _once(self, method: str, *args: Any) -> None:
        if method in self._done:
            return
        await self._serial(method, *args)
        self._done.add(method)

    @remote_method
    async def remote_write(self, offset: int, data: bytes) -> int:
        if not isinstance(data, bytes):
            raise BadRequest("write wants bytes")
        await self._lock.acquire()
        try:
            if self.failed is not None:
                raise self.failed
            try:
                skip = self.contract.check_write(offset, len(data), self.written, self.limit)
            except TransferViolation as e:
                self.on_violation(e.message)
                raise
            fresh = data[skip:]
            if fresh:
                try:
                    await _maybe_await(self.impl.remote_write(fresh))
                except Exception as e:
                    self.failed = e
                    raise
                self.written += len(fresh)
            return self.written
        finally:
            self._lock.release()

    @remote_method
    async def remote_utime(self, times: bytes) -> None:
        t = FileTimes.from_wire(times)
        # Buildbot's FileWriter hands this to os.utime, which wants a tuple
        await self._once("remote_utime", (t.accessed, t.modified))

    @remote_method
    async def remote_unpack(self) -> None:
        await self._once("remote_unpack")

    @remote_method
    async def remote_close(self) -> None:
        if "remote_unpack" in self._done:
            return  # Buildbot's DirectoryWriter closes itself when it unpacks
        await self._once("remote_close")


@implementer(RIFileReader)
class FileReaderAdapter(Referenceable):
    """A download's source (Buildbot's FileReaderImpl duck type) as a reference.

    The last ``contract.replay`` bytes read are kept, so that reads asked for
    again after a reattach (their answers were lost with the connection)
    are served the same bytes, and the source is read once, in order.
    Which reads are served, and what a read past the end answers, is the
    transfer contract's (:mod:`buildbot_furl.protocol.transfer`).
    """

    def __init__(self, impl: Any,
                 on_violation: Callable[[str], None] = lambda what: None,
                 contract: Contract = CONTRACT) -> None:
        self.impl = impl
        self.on_violation = on_violation
        self.contract = contract
        self.sent = 0  # bytes read from impl
        self._recent = bytearray()  # the last bytes read, ending at self.sent
        self._closed = False
        self._ended = False  # impl said it has no more
        self.failed: Exception | None = None  # what impl raised, for every later read
        self._lock = defer.DeferredLock()

    async def _read_more(self, length: int) -> bytes:
        """Up to ``length`` new bytes (fewer only at the end)."""
        out = bytearray()
        while len(out) < length:
            data = await _maybe_await(self.impl.remote_read(length - len(out)))
            if data is None:
                data = b""
            if isinstance(data, str):  # Buildbot's FileReader answers '' once closed
                data = data.encode("utf-8")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise BadRequest("the file reader produced something that is not bytes")
            if not data:
                break
            out += data
        if len(out) > length:
            raise BadRequest("the file reader returned more than it was asked for")
        return bytes(out)

    @remote_method
    async def remote_read(self, offset: int, length: int) -> bytes:
        length = self.contract.read_length(length)
        await self._lock.acquire()
        try:
            if self.failed is not None:
                raise self.failed
            try:
                self.contract.check_read(offset, self.sent, len(self._recent))
            except TransferViolation as e:
                self.on_violation(e.message)
                raise
            if offset + length > self.sent:  # ahead of the source: read it forward
                try:
                    await self._fresh(offset + length - self.sent)
                except Exception as e:
                    self.failed = e
                    raise
            # (at or past the end of the source: nothing)
            start = len(self._recent) - (self.sent - offset)
            return bytes(self._recent[start:start + length])
        finally:
            self._lock.release()

    async def _fresh(self, length: int) -> None:
        """Read ``length`` more bytes from the source into the kept ones."""
        if self._closed or self._ended:
            return
        data = await self._read_more(length)
        self._ended = len(data) < length
        self.sent += len(data)
        self._recent += data
        keep = self.contract.replay
        if len(self._recent) > keep:
            del self._recent[:len(self._recent) - keep]

    @remote_method
    async def remote_close(self) -> None:
        await self._lock.acquire()
        try:
            if not self._closed:
                self._closed = True
                await _maybe_await(self.impl.remote_close())
        finally:
            self._lock.release()
