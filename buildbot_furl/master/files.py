"""The master's side of a file transfer: Buildbot's file writers and readers
as references the worker can call.

They wrap Buildbot's ``FileWriterImpl``/``FileReaderImpl`` objects
(``FileWriter``, ``DirectoryWriter``, ``FileReader``, ...), or anything with
their method names, and bound and check every argument on the way in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from buildbot_furl.errors import BadRequest
from buildbot_furl.protocol import (
    MAX_CHUNK,
    RIFileReader,
    RIFileWriter,
    decode,
    remote_method,
)

#: how much of a download is kept to be sent again after a reattach: the
#: worker has at most this much asked for and not yet received
REPLAY = 8 * MAX_CHUNK


async def _maybe_await(result: Any) -> Any:
    if isinstance(result, defer.Deferred):
        return await result
    return result


def _offset(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest("an offset must be a non-negative integer")
    return value


@implementer(RIFileWriter)
class FileWriterAdapter(Referenceable):
    """An upload's sink (Buildbot's FileWriterImpl duck type) as a reference.

    Calls reach the wrapped writer one at a time and in arrival order even
    when it answers with Deferreds, since the worker keeps several in flight.
    Every write says where its bytes go: after a reattach the worker sends
    again what it had not seen acknowledged, and bytes already written are
    skipped, so the writer sees each byte once, in order.  ``close``,
    ``unpack`` and ``utime`` happen once however often they are asked for.
    """

    def __init__(self, impl: Any, limit: int | None = None,
                 on_violation: Callable[[str], None] = lambda what: None) -> None:
        self.impl = impl
        #: the most bytes the transfer may bring (its announced maxsize)
        self.limit = limit
        self.on_violation = on_violation
        self.written = 0  # bytes handed to impl
        #: the error a write into impl ended with (a full disk...): the answer to
        #: every later write, which the worker had in flight, not a gap
        self.failed: Exception | None = None
        self._done: set[str] = set()
        self._lock = defer.DeferredLock()

    def _refuse(self, what: str) -> BadRequest:
        self.on_violation(what)
        return BadRequest(what)

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
        offset = _offset(offset)
        if not isinstance(data, bytes):
            raise BadRequest("write wants bytes")
        await self._lock.acquire()
        try:
            if self.failed is not None:
                raise self.failed
            if offset > self.written:
                raise self._refuse(f"a write at {offset} that leaves a gap after byte "
                                   f"{self.written}")
            fresh = data[self.written - offset:]
            if self.limit is not None and self.written + len(fresh) > self.limit:
                raise self._refuse(f"an upload past its announced size ({self.limit} bytes)")
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
        t = decode(times) if isinstance(times, bytes) else None
        if not isinstance(t, list) or len(t) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in t):
            raise BadRequest("utime wants [atime, mtime]")
        # Buildbot's FileWriter hands this to os.utime, which wants a tuple
        await self._once("remote_utime", (t[0], t[1]))

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

    The last :data:`REPLAY` bytes read are kept, so that reads asked for
    again after a reattach (their answers were lost with the connection)
    are served the same bytes, and the source is read once, in order.
    """

    def __init__(self, impl: Any,
                 on_violation: Callable[[str], None] = lambda what: None) -> None:
        self.impl = impl
        self.on_violation = on_violation
        self.sent = 0  # bytes read from impl
        #: the error a read from impl ended with (the admin's CLI went away...):
        #: the answer to every later read, which the worker had in flight
        self.failed: Exception | None = None
        self._recent = bytearray()  # the last bytes read, ending at self.sent
        self._closed = False
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
        offset = _offset(offset)
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise BadRequest("read wants a non-negative length")
        length = min(length, MAX_CHUNK)
        await self._lock.acquire()
        try:
            if self.failed is not None:
                raise self.failed
            if offset > self.sent:
                self.on_violation(f"a read at {offset} that skips bytes after {self.sent}")
                raise BadRequest(f"read at {offset} skips bytes after {self.sent}")
            if offset < self.sent:
                start = len(self._recent) - (self.sent - offset)
                if start < 0:
                    self.on_violation(f"a read at {offset}, too far back to be served again")
                    raise BadRequest(f"read at {offset} is too far back to be served again")
                old = bytes(self._recent[start:start + length])
                if len(old) == length or self._closed:
                    return old
                return old + await self._fresh(length - len(old))
            return await self._fresh(length)
        finally:
            self._lock.release()

    async def _fresh(self, length: int) -> bytes:
        if self._closed:
            return b""
        try:
            data = await self._read_more(length)
        except Exception as e:
            self.failed = e
            raise
        self.sent += len(data)
        self._recent += data
        if len(self._recent) > REPLAY:
            del self._recent[:len(self._recent) - REPLAY]
        return data

    @remote_method
    async def remote_close(self) -> None:
        await self._lock.acquire()
        try:
            if not self._closed:
                self._closed = True
                await _maybe_await(self.impl.remote_close())
        finally:
            self._lock.release()
