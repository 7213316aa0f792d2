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
from collections.abc import Callable, Coroutine
from typing import Any
from unittest import mock

import pytest
from buildbot.process.remotetransfer import FileReader
from hypothesis import HealthCheck, example, given, settings
from foolscap.ipb import DeadReferenceError
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.python.failure import Failure

from buildbot_furl.errors import BadRequest
from buildbot_furl.master.files import FileReaderAdapter, FileWriterAdapter
from buildbot_furl.master.session import MAX_VIOLATIONS, Strikes, WorkerSession
from buildbot_furl.protocol import unwrap
from buildbot_furl.protocol.messages import AttachInfo
from buildbot_furl.protocol.transfer import CONTRACT, Contract
from buildbot_furl.testing.fakes import FakeBot
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
    answers come back on a later turn of ``clock``.  ``cut_after``: the
    connection drops after that many calls have reached the target; every
    answer not yet back is lost, and every later call fails."""

    def __init__(self, target: Any, clock: task.Clock, cut_after: int | None = None) -> None:
        self.target = target
        self.clock = clock
        self.cut_after = cut_after
        self.delivered = 0
        self.dead = False

    def callRemote(self, method: str, *args: Any) -> defer.Deferred[Any]:  # noqa: N802
        answer: defer.Deferred[Any] = defer.Deferred()
        if self.dead:
            return defer.fail(DeadReferenceError("cut"))

        def deliver() -> None:
            if self.dead:
                answer.errback(DeadReferenceError("cut"))
                return
            self.delivered += 1
            d = defer.maybeDeferred(getattr(self.target, "remote_" + method), *args)
            if self.delivered == self.cut_after:
                self.dead = True
            d.addBoth(lambda r: self.clock.callLater(0, self._answer, answer, r))

        self.clock.callLater(0, deliver)
        return answer

    def _answer(self, answer: defer.Deferred[Any], result: Any) -> None:
        _fire(answer, Failure(DeadReferenceError("cut")) if self.dead else result)


def _fire(d: defer.Deferred[Any], result: Any) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def drive(clock: task.Clock, coro: Coroutine[Any, Any, Any],
          reattach: Callable[[], bool] = lambda: False) -> Any:
    """Run ``coro`` to its end by turning ``clock`` (no reactor, no sleep);
    when nothing moves, ``reattach()`` may bring a cut link back."""
    out: list[Any] = []
    with mock.patch.object(streams, "fireEventually",
                           lambda value=None: task.deferLater(clock, 0, lambda: value)):
        defer.Deferred.fromCoroutine(coro).addBoth(out.append)
        while not out and (clock.getDelayedCalls() or reattach()):
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
             step: int | None = None, cuts: list[int] = ()) -> tuple[bytes, list[str]]:
    """What buildbot-worker's downloadFile loop gets through the worker's
    read-ahead from the master's reader; and the violations counted.
    ``cuts``: the link drops after that many calls (one cut after another),
    and the worker reattaches as a resumed session does."""
    clock = task.Clock()
    violations: list[str] = []
    impl = FileReader(io.BytesIO(data)) if step is None else Trickle(data, step)
    kw = {} if contract is None else {"contract": contract}
    master = FileReaderAdapter(impl, violations.append, **kw)
    pending = list(cuts)
    link = [Loopback(master, clock, pending.pop(0) if pending else None)]
    worker = ReadAhead(link[0], **kw)

    def reattach() -> bool:
        if not worker.link.down:
            return False
        link[0] = Loopback(master, clock, pending.pop(0) if pending else None)
        worker.rebind(link[0], master.sent)
        return True

    async def loop() -> bytes:
        out = bytearray()
        while True:
            block = await worker.read(blocksize)
            if not block:
                break
            out += block
        await worker.close()
        return bytes(out)

    return drive(clock, loop(), reattach), violations


def upload(data: bytes, blocksize: int, limit: int | None,
           contract: Contract | None = None, cuts: list[int] = ()) -> tuple[bytes, list[str]]:
    """What buildbot-worker's uploadFile loop writes through the worker's
    write-behind into the master's writer; and the violations counted."""
    clock = task.Clock()
    violations: list[str] = []
    sink = Sink()
    kw = {} if contract is None else {"contract": contract}
    master = FileWriterAdapter(sink, limit, violations.append, **kw)
    pending = list(cuts)
    link = [Loopback(master, clock, pending.pop(0) if pending else None)]
    worker = ChunkWriter(link[0], **kw)

    def reattach() -> bool:
        if not worker.link.down:
            return False
        link[0] = Loopback(master, clock, pending.pop(0) if pending else None)
        worker.rebind(link[0], master.written)
        return True

    async def loop() -> None:
        for start in range(0, len(data), blocksize):
            await worker.write(data[start:start + blocksize])
        await worker.finish("close")

    drive(clock, loop(), reattach)
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


# -- any contract: chunks x windows x sizes x blocksizes x sources -------------------


@st.composite
def _cases(draw: Any) -> tuple[Contract, int, int, int | None]:
    contract = Contract(chunk=draw(st.integers(1, 64)), window=draw(st.integers(1, 6)))
    c, ahead = contract.chunk, contract.ahead
    edges = [0, 1, c - 1, c, c + 1, ahead - 1, ahead, ahead + 1, 2 * ahead - 1,
             2 * ahead + 1, 3 * ahead + c - 1]
    size = draw(st.one_of(st.sampled_from([e for e in edges if e >= 0]),
                          st.integers(0, 4 * ahead + 3)))
    blocksize = draw(st.one_of(st.sampled_from([1, c - 1 or 1, c, c + 1, ahead + 1]),
                               st.integers(1, 3 * c + 2)))
    step = draw(st.one_of(st.none(), st.integers(1, 2 * c)))
    return contract, size, blocksize, step


CUTS = st.lists(st.integers(1, 12), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases(), cuts=CUTS)
def test_any_contract_any_size_downloads_whole_with_no_violation(
        case: tuple[Contract, int, int, int | None], cuts: list[int]) -> None:
    """... across cuts too: the reads asked again after a reattach are served."""
    contract, size, blocksize, step = case
    data = _blob(size)
    got, violations = download(data, blocksize, contract, step, cuts)
    assert violations == []
    assert got == data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases(), exact=st.booleans(), cuts=CUTS)
def test_any_contract_any_size_uploads_whole_with_no_violation(
        case: tuple[Contract, int, int, int | None], exact: bool, cuts: list[int]) -> None:
    contract, size, blocksize, _ = case
    data = _blob(size)
    got, violations = upload(data, blocksize, size if exact else None, contract, cuts)
    assert violations == []
    assert got == data


def test_the_read_ahead_asks_only_what_the_contract_lets_a_reader_ask() -> None:
    c = Contract(chunk=10, window=3)
    assert list(c.next_reads(0, 0)) == [0, 10, 20]
    assert list(c.next_reads(0, 30)) == []  # three in flight already
    assert list(c.next_reads(12, 30)) == [30, 40]  # up to received + ahead
    for position in (0, 7, 30):
        for offset in range(0, position + c.ahead):  # behind, at, and ahead within the window
            c.check_read(offset, position, kept=position)


# -- what no well-behaved worker does is still refused, and counted -------------------


def _read(reader: FileReaderAdapter, offset: int, length: int) -> Any:
    return unwrap(answer_now(reader.remote_read(offset, length)))


def answer_now(d: defer.Deferred[Any]) -> Any:
    """What a call that needs no turn of any clock answered."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the call did not answer at once"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def test_reads_outside_the_window_are_refused_and_counted() -> None:
    c = Contract(chunk=4, window=2)  # ahead 8, replay 16
    violations: list[str] = []
    r = FileReaderAdapter(FileReader(io.BytesIO(_blob(100))), violations.append, contract=c)
    assert _read(r, 4, 4) == _blob(8)[4:]  # ahead of the source, within the window: served
    assert _read(r, 0, 4) == _blob(4)
    assert r.sent == 8
    with pytest.raises(BadRequest, match="skips bytes"):
        _read(r, 8 + c.ahead, 4)
    for offset in range(8, 48, 4):
        assert len(_read(r, offset, 4)) == 4
    with pytest.raises(BadRequest, match="too far back"):
        _read(r, 48 - c.replay - 1, 4)
    assert len(violations) == 2
    for offset in range(48, 100, 4):
        assert _read(r, offset, 4) == _blob(100)[offset:offset + 4]
    for offset in (100, 101, 104, 107):  # at and past the end, within the window: nothing
        assert _read(r, offset, 4) == b""
    assert _read(r, 98, 4) == _blob(100)[98:]
    assert len(violations) == 2


def test_writes_with_a_gap_or_past_the_announced_size_are_refused_and_counted() -> None:
    violations: list[str] = []
    sink = Sink()
    w = FileWriterAdapter(sink, 10, violations.append)
    assert unwrap(answer_now(w.remote_write(0, b"abcdef"))) == 6
    with pytest.raises(BadRequest, match="gap"):
        unwrap(answer_now(w.remote_write(7, b"x")))
    with pytest.raises(BadRequest, match="announced size"):
        unwrap(answer_now(w.remote_write(6, b"ghijk")))  # 11 bytes in all
    assert unwrap(answer_now(w.remote_write(0, b"abcdefghij"))) == 10  # exactly 10
    assert bytes(sink.data) == b"abcdefghij" and len(violations) == 2


def test_a_failing_sink_fails_the_writes_in_flight_without_counting_them() -> None:
    """The master's own sink failing (a full disk) is no fault of the
    worker: the writes it had in flight get the same error, not a count."""

    class Full(Sink):
        def remote_write(self, data: bytes) -> None:
            raise OSError(28, "No space left on device")

    violations: list[str] = []
    w = FileWriterAdapter(Full(), None, violations.append, contract=Contract(chunk=4, window=4))
    for offset in (0, 4, 8):
        with pytest.raises(Exception, match="No space left"):
            unwrap(answer_now(w.remote_write(offset, b"abcd")))
    assert violations == []


# -- counting: per command, forgotten with time ------------------------------------------


class FakeRemoteCommand:
    def remote_update(self, updates: list[Any]) -> None:
        pass

    def remote_complete(self, failure: Any = None) -> None:
        pass


def _session(clock: task.Clock) -> WorkerSession:
    return WorkerSession("w1", FakeBot(answer=None), AttachInfo((1,), "test", {}), 1, "127.0.0.1:1",
                         clock=clock)


def test_violations_are_counted_per_command_and_forgotten_with_time() -> None:
    clock = task.Clock()
    s = _session(clock)
    for _ in range(20):  # a long-lived worker's rare mishaps, one per command
        blame = s.command_blame()
        for _ in range(MAX_VIOLATIONS - 1):
            blame("something odd")
    assert not s.gone and s.violations == 20 * (MAX_VIOLATIONS - 1)
    for _ in range(MAX_VIOLATIONS - 1):  # outside any command: forgotten after a while
        s.violation("a call out of bounds")
        clock.advance(60)
    clock.advance(600)
    for _ in range(MAX_VIOLATIONS - 1):
        s.violation("a call out of bounds")
    assert not s.gone
    s.violation("one too many")  # ten within the memory: a hostile peer
    assert s.gone
    s2 = _session(clock)
    blame = s2.command_blame()
    for _ in range(MAX_VIOLATIONS):
        blame("a gap")
    assert s2.gone  # ten in one command: cut off


def test_strikes_remember_only_the_recent_ones() -> None:
    clock = task.Clock()
    strikes = Strikes(clock, memory=10)
    assert [strikes.add() for _ in range(3)] == [1, 2, 3]
    clock.advance(10)
    assert strikes.add() == 1


def test_an_upload_past_buildbots_maxsize_is_refused_counted_and_never_written() -> None:
    """The master checks every upload against the size the step announced
    (Buildbot's ``maxsize``), whatever the worker does: a worker that
    writes past it is refused, the refusal is counted against it, and no
    byte past the limit reaches the sink."""
    from buildbot_furl.master.connection import FurlConnection

    clock = task.Clock()
    s = _session(clock)
    conn = FurlConnection(s)
    sink = Sink()
    answer_now(conn.remoteStartCommand(
        FakeRemoteCommand(), "b", "1", "uploadFile",
        {"workdir": "build", "workersrc": "f", "writer": sink, "maxsize": 10,
         "blocksize": 16384, "keepstamp": False}))
    writer = s.bot.started[-1][-2]  # startCommand(..., status, writer, reader)
    assert isinstance(writer, FileWriterAdapter)
    assert unwrap(answer_now(writer.remote_write(0, b"0123456789"))) == 10
    for offset, data in ((10, b"x"), (5, b"56789abc"), (0, b"0123456789" * 2)):
        with pytest.raises(BadRequest, match="announced size"):
            unwrap(answer_now(writer.remote_write(offset, data)))
    assert bytes(sink.data) == b"0123456789"
    assert s.violations == 3
