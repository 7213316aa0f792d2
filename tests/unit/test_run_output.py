"""The CLI's output writer: never blocks, keeps order, holds back the master."""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from buildbot_furl.client.output import OrderedWriter
from buildbot_furl.client.run import OutputSink
from buildbot_furl.protocol import unwrap
from buildbot_furl.protocol.messages import encode_output

HIGH = 64 * 1024


class FakeReactor:
    """Records what the writer waits on; the test says when it is writable."""

    def __init__(self) -> None:
        self.writers: list[Any] = []

    def addWriter(self, w: Any) -> None:  # noqa: N802 - Twisted's name
        self.writers.append(w)

    def removeWriter(self, w: Any) -> None:  # noqa: N802
        self.writers.remove(w)

    def writable(self) -> None:
        for w in list(self.writers):
            w.doWrite()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def _drain(fd: int, reactor: FakeReactor, writer: OrderedWriter, want: int) -> bytes:
    """Read ``want`` bytes from ``fd``, telling the writer it may go on."""
    got = bytearray()
    os.set_blocking(fd, False)
    while len(got) < want:
        try:
            got += os.read(fd, 1 << 20)
        except BlockingIOError:
            assert reactor.writers, f"the writer waits for nothing with {len(got)}/{want}"
            reactor.writable()
    return bytes(got)


def test_a_full_pipe_does_not_block_and_holds_back_the_caller(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reactor = FakeReactor()
    writer = OrderedWriter(reactor, [w], high_water=HIGH)
    writer.start()
    assert not os.get_blocking(w)
    data = bytes(range(256)) * 4096 * 2  # 2 MiB: far more than a pipe holds
    writer.write(w, data)  # returns at once
    assert reactor.writers, "a full pipe is waited for through the reactor"
    room = writer.room()
    drained = writer.drained()
    assert not room.called and not drained.called
    assert writer.queued > HIGH
    got = _drain(r, reactor, writer, len(data))
    assert got == data
    assert room.called and drained.called
    assert not reactor.writers
    writer.stop()
    assert os.get_blocking(w), "the descriptor's mode is given back"


def test_room_fires_once_below_the_bound_before_all_is_written(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reactor = FakeReactor()
    writer = OrderedWriter(reactor, [w], high_water=HIGH)
    writer.start()
    writer.write(w, b"x" * (4 * 1024 * 1024))
    room = writer.room()
    os.set_blocking(r, False)
    while not room.called:
        os.read(r, 1 << 16)
        reactor.writable()
    assert 0 < writer.queued <= HIGH
    writer.stop()


def test_order_is_kept_across_descriptors(pipe: tuple[int, int]) -> None:
    """What is written to stderr after stdout's stuck bytes waits behind them
    (``2>&1`` keeps its interleaving)."""
    r, w = pipe
    r2, w2 = os.pipe()
    try:
        reactor = FakeReactor()
        writer = OrderedWriter(reactor, [w, w2], high_water=HIGH)
        writer.start()
        big = b"o" * (1024 * 1024)
        writer.write(w, big)
        writer.write(w2, b"err\n")
        os.set_blocking(r2, False)
        with pytest.raises(BlockingIOError):
            os.read(r2, 10)  # not before stdout's bytes are out
        assert _drain(r, reactor, writer, len(big)) == big
        assert os.read(r2, 10) == b"err\n"
        writer.stop()
    finally:
        os.close(r2)
        os.close(w2)


def test_a_closed_reader_ends_the_writing_quietly(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reactor = FakeReactor()
    broken: list[bool] = []
    writer = OrderedWriter(reactor, [w], on_broken=lambda: broken.append(True),
                           high_water=HIGH)
    writer.start()
    writer.write(w, b"y\n" * (1024 * 1024))
    room, drained = writer.room(), writer.drained()
    os.close(r)
    reactor.writable()
    assert broken == [True]
    assert writer.broken and writer.error is None
    assert room.called and drained.called and writer.queued == 0
    assert not reactor.writers
    writer.write(w, b"more")  # dropped, no error
    assert writer.room().called
    assert broken == [True]
    writer.stop()


def test_another_write_error_is_kept_for_the_message() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)  # writing to it fails with EBADF
    try:
        writer = OrderedWriter(FakeReactor(), [fd])
        writer.write(fd, b"x")
        assert writer.broken
        assert writer.error is not None
    finally:
        os.close(fd)


def test_shared_pipe_modes_are_given_back(pipe: tuple[int, int]) -> None:
    """stdout and stderr on one open pipe (``2>&1``): both blocking again after."""
    _r, w = pipe
    w2 = os.dup(w)
    try:
        flags = fcntl.fcntl(w, fcntl.F_GETFL)
        writer = OrderedWriter(FakeReactor(), [w, w2])
        writer.start()
        assert not os.get_blocking(w2)
        writer.stop()
        assert fcntl.fcntl(w, fcntl.F_GETFL) == flags
        assert os.get_blocking(w2)
    finally:
        os.close(w2)


def test_the_output_call_is_answered_only_when_there_is_room(pipe: tuple[int, int]) -> None:
    """The master waits for this answer before it sends more of the run."""
    r, w = pipe
    reactor = FakeReactor()
    writer = OrderedWriter(reactor, [w, w], high_water=HIGH)
    writer.start()
    sink = OutputSink(writer, {"stdout": w, "stderr": w})
    text = "line of output\n" * 20000  # 300 kB
    answer = sink.remote_output(encode_output([["stdout", text]]))
    assert not answer.called, "answered while the CLI holds more than its bound"
    got = _drain(r, reactor, writer, len(text))
    assert got == text.encode()
    assert answer.called
    assert unwrap(answer.result) is None
    writer.stop()


class ThreadedReactor(FakeReactor):
    """A FakeReactor that also takes calls from threads, run by ``pending()``."""

    def __init__(self) -> None:
        super().__init__()
        import queue
        self.calls: Any = queue.SimpleQueue()

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802 - Twisted's name
        self.calls.put((f, args))

    def pending(self, wait: float = 5.0) -> None:
        """Run one call a thread sent (waiting up to ``wait`` s for it)."""
        f, args = self.calls.get(timeout=wait)
        f(*args)


def test_a_stopped_terminal_holds_back_the_caller_not_the_reactor() -> None:
    """A terminal held with Ctrl-S (here: a pty nobody reads) takes nothing;
    the writer returns at once, keeps order, asks the caller to wait, and
    goes on once the terminal takes output again."""
    import termios
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)  # bytes as they are
    reactor = ThreadedReactor()
    writer = OrderedWriter(reactor, [slave], high_water=HIGH)
    try:
        writer.start()
        assert os.get_blocking(slave), "a terminal's mode is not ours to change"
        data = bytes(range(256)) * (4 * HIGH // 256)  # far more than a pty buffers

        def blocked(*_: Any) -> None:
            raise AssertionError("the writer blocked the reactor on a stopped terminal")

        old = signal.signal(signal.SIGALRM, blocked)
        signal.setitimer(signal.ITIMER_REAL, 10)
        try:
            for i in range(0, len(data), 4096):
                writer.write(slave, data[i:i + 4096])  # returns: the thread blocks, not us
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        room = writer.room()
        done = writer.drained()
        assert not room.called and not done.called
        got = bytearray()
        os.set_blocking(master, False)
        while len(got) < len(data):
            try:
                got += os.read(master, 1 << 16)
            except BlockingIOError:
                reactor.pending()  # a write finished in the thread: the next one starts
        while not done.called:
            reactor.pending()
        assert bytes(got) == data and room.called and writer.queued == 0
    finally:
        writer.stop()
        termios.tcflush(slave, termios.TCIOFLUSH)
        os.close(slave)
        os.close(master)
