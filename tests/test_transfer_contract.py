"""The transfer contract (buildbot_furl.protocol.transfer), end to end in
this process: the worker's real read-ahead and write-behind
(worker/streams.py) against the master's real checks (master/files.py),
over a loopback that delivers calls in order and answers later, as
foolscap does, turned by a task.Clock.

Nothing a well-behaved worker does may be counted as a violation; what no
well-behaved worker does still is.
"""

from __future__ import annotations

import io
from collections.abc import Coroutine
from typing import Any
from unittest import mock

import pytest
from buildbot.process.remotetransfer import FileReader
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.python.failure import Failure

from buildbot_furl.errors import BadRequest
from buildbot_furl.master.files import FileReaderAdapter, FileWriterAdapter
from buildbot_furl.master.session import MAX_VIOLATIONS, Strikes, WorkerSession
from buildbot_furl.protocol import MAX_CHUNK, unwrap
from buildbot_furl.protocol.messages import AttachInfo
from buildbot_furl.protocol.transfer import CONTRACT, Contract
from buildbot_furl.worker import streams
from buildbot_furl.worker.streams import ChunkWriter, ReadAhead

C = CONTRACT.chunk
W = CONTRACT.window
#: every boundary of the real contract: 0, 1, chunk +-1, window multiples +-1
BOUNDARIES = sorted({0, 1, C - 1, C, C + 1, 2 * C - 1, 2 * C + 1, W * C - 1, W * C,
                     W * C + 1, 2 * W * C - 1, 2 * W * C + 1, 12})
BLOCKSIZES = [16 * 1024, 32 * 1024, 256 * 1024, C - 1, C, C + 1, 3 * C + 5]


class Loopback:
    """A RemoteReference stand-in: calls reach ``target``'s ``remote_*``
    methods one after another, in the order they were made, and their
    answers come back on a later turn of ``clock``."""

    def __init__(self, target: Any, clock: task.Clock) -> None:
        self.target = target
        self.clock = clock

    def callRemote(self, method: str, *args: Any) -> defer.Deferred[Any]:  # noqa: N802
        answer: defer.Deferred[Any] = defer.Deferred()

        def deliver() -> None:
            d = defer.maybeDeferred(getattr(self.target, "remote_" + method), *args)
            d.addBoth(lambda r: self.clock.callLater(0, _fire, answer, r))

        self.clock.callLater(0, deliver)
        return answer


def _fire(d: defer.Deferred[Any], result: Any) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def drive(clock: task.Clock, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to its end by turning ``clock`` (no reactor, no sleep)."""
    out: list[Any] = []
    with mock.patch.object(streams, "fireEventually",
                           lambda value=None: task.deferLater(clock, 0, lambda: value)):
        defer.Deferred.fromCoroutine(coro).addBoth(out.append)
        while not out and clock.getDelayedCalls():
            clock.advance(0)
    assert out, "the transfer is stuck: nothing more to deliver and no end"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class Trickle:
    """A source (Buildbot's FileReaderImpl duck type) that gives at most
    ``step`` bytes a read, as a pipe or a slow disk may."""

    def __init__(self, data: bytes, step: int) -> None:
        self.fp = io.BytesIO(data)
        self.step = step

    def remote_read(self, maxlength: int) -> bytes:
        return self.fp.read(min(maxlength, self.step))

    def remote_close(self) -> None:
        self.fp.close()


class Sink:
    """An upload's sink (Buildbot's FileWriterImpl duck type) that keeps the bytes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = 0

    def remote_write(self, data: bytes) -> None:
        self.data += data

    def remote_close(self) -> None:
        self.closed += 1


def _blob(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def download(data: bytes, blocksize: int, contract: Contract | None = None,
             step: int | None = None) -> tuple[bytes, list[str]]:
    """What buildbot-worker's downloadFile loop gets through the worker's
    read-ahead from the master's reader; and the violations counted."""
    clock = task.Clock()
    violations: list[str] = []
    impl = FileReader(io.BytesIO(data)) if step is None else Trickle(data, step)
    kw = {} if contract is None else {"contract": contract}
    master = FileReaderAdapter(impl, violations.append, **kw)
    worker = ReadAhead(Loopback(master, clock), **kw)

    async def loop() -> bytes:
        out = bytearray()
        while True:
            block = await worker.read(blocksize)
            if not block:
                break
            out += block
        await worker.close()
        return bytes(out)

    return drive(clock, loop()), violations


def upload(data: bytes, blocksize: int, limit: int | None,
           contract: Contract | None = None) -> tuple[bytes, list[str]]:
    """What buildbot-worker's uploadFile loop writes through the worker's
    write-behind into the master's writer; and the violations counted."""
    clock = task.Clock()
    violations: list[str] = []
    sink = Sink()
    kw = {} if contract is None else {"contract": contract}
    master = FileWriterAdapter(sink, limit, violations.append, **kw)
    worker = ChunkWriter(Loopback(master, clock), **kw)

    async def loop() -> None:
        for start in range(0, len(data), blocksize):
            await worker.write(data[start:start + blocksize])
        await worker.finish("close")

    drive(clock, loop())
    assert sink.closed == 1
    return bytes(sink.data), violations


# -- the real contract, at every boundary ------------------------------------------


@settings(max_examples=40, deadline=None)
@given(size=st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 2 * W * C + 3)),
       blocksize=st.sampled_from(BLOCKSIZES))
@example(size=12, blocksize=16 * 1024)  # the "refused a read at 1048576 ... after 12"
def test_a_download_of_any_size_arrives_whole_with_no_violation(size: int,
                                                                blocksize: int) -> None:
    data = _blob(size)
    got, violations = download(data, blocksize)
    assert violations == []
    assert got == data


@settings(max_examples=25, deadline=None)
@given(size=st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 2 * W * C + 3)),
       blocksize=st.sampled_from(BLOCKSIZES), exact=st.booleans())
def test_an_upload_of_any_size_arrives_whole_with_no_violation(size: int, blocksize: int,
                                                               exact: bool) -> None:
    data = _blob(size)
    got, violations = upload(data, blocksize, size if exact else None)
    assert violations == []
    assert got == data
