"""The master's side of a file transfer: Buildbot's file writers and readers
as references the worker can call.

They wrap Buildbot's ``FileWriterImpl``/``FileReaderImpl`` objects
(``FileWriter``, ``DirectoryWriter``, ``FileReader``, ...), or anything with
their method names, and bound and check every argument on the way in.
"""

from __future__ import annotations

import math
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from zope.interface import implementer

from buildbot_furl.errors import BadRequest
from buildbot_furl.protocol import MAX_CHUNK, RIFileReader, RIFileWriter, decode, remote_method


async def _maybe_await(result: Any) -> Any:
    if isinstance(result, defer.Deferred):
        return await result
    return result


@implementer(RIFileWriter)
class FileWriterAdapter(Referenceable):
    """An upload's sink (Buildbot's FileWriterImpl duck type) as a reference.

    Calls reach the wrapped writer one at a time and in arrival order even
    when it answers with Deferreds, since the worker keeps several in flight.
    """

    def __init__(self, impl: Any) -> None:
        self.impl = impl
        self._lock = defer.DeferredLock()

    async def _serial(self, method: str, *args: Any) -> None:
        await self._lock.acquire()
        try:
            await _maybe_await(getattr(self.impl, method)(*args))
        finally:
            self._lock.release()
        return None

    @remote_method
    async def remote_write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise BadRequest("write wants bytes")
        await self._serial("remote_write", data)

    @remote_method
    async def remote_utime(self, times: bytes) -> None:
        t = decode(times) if isinstance(times, bytes) else None
        if not isinstance(t, list) or len(t) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in t):
            raise BadRequest("utime wants [atime, mtime]")
        # Buildbot's FileWriter hands this to os.utime, which wants a tuple
        await self._serial("remote_utime", (t[0], t[1]))

    @remote_method
    async def remote_unpack(self) -> None:
        await self._serial("remote_unpack")

    @remote_method
    async def remote_close(self) -> None:
        await self._serial("remote_close")


@implementer(RIFileReader)
class FileReaderAdapter(Referenceable):
    """A download's source (Buildbot's FileReaderImpl duck type) as a reference."""

    def __init__(self, impl: Any) -> None:
        self.impl = impl
        self._lock = defer.DeferredLock()

    @remote_method
    async def remote_read(self, length: int) -> bytes:
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise BadRequest("read wants a non-negative length")
        length = min(length, MAX_CHUNK)
        await self._lock.acquire()
        try:
            data = await _maybe_await(self.impl.remote_read(length))
        finally:
            self._lock.release()
        if data is None:
            return b""
        if isinstance(data, str):  # Buildbot's FileReader answers '' once closed
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadRequest("the file reader produced something that is not bytes")
        data = bytes(data)
        if len(data) > MAX_CHUNK:
            raise BadRequest("the file reader returned more than it was asked for")
        return data

    @remote_method
    async def remote_close(self) -> None:
        await self._lock.acquire()
        try:
            await _maybe_await(self.impl.remote_close())
        finally:
            self._lock.release()
        return None
