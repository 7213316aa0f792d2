"""Writing a run's output to our stdout/stderr without blocking the reactor.

A reader that pauses (``run ... | less``, ``| pv -L 1k``, ``| (sleep 60; cat)``)
used to block the CLI in ``write()``; meanwhile its reactor answered nothing,
and the master's admin Tub dropped the silent link after its disconnect
timeout, losing the run.  :class:`OrderedWriter` writes to pipes, FIFOs and
sockets in non-blocking mode, and to a terminal in a thread of its own (a
terminal held with Ctrl-S stops taking output), keeps what they cannot take
yet (waiting for the reactor to say they can), and tells the caller when it holds less than
its bound again: the CLI answers the master's output call only then, which
stops the master, which stops the worker, which pauses the command.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import queue
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFDSet, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

#: bytes held unwritten before the caller is asked to wait (output calls are
#: answered late): with the master's one batch in flight, what the CLI holds
#: stays under this plus one batch (protocol.MAX_PAYLOAD)
HIGH_WATER = 1024 * 1024
#: at most this much per write(): a blocking file or terminal takes the
#: reactor for one such write at a time
MAX_WRITE = 64 * 1024
#: a closed reader: the Unix tool's quiet ending, not an error to report
CLOSED = (errno.EPIPE, errno.ECONNRESET)


def _wants_nonblocking(fd: int) -> bool:
    """Pipes, FIFOs and sockets: where a slow reader stops us.

    A terminal is written in blocking mode, on purpose: its O_NONBLOCK flag
    belongs to the open terminal, shared with the shell and with the other
    programs of a pipeline (``run ... | less`` writes to it too), which do
    not expect EAGAIN; it is written in a thread instead
    (:class:`_TerminalThread`).  Regular files never block for long."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _TerminalThread:
    """Blocking writes to a terminal, one at a time, in a thread of their own.

    A terminal stays in blocking mode (see :func:`_wants_nonblocking`), and it
    can stop taking output for as long as its user likes (Ctrl-S, a paused
    serial console): written from the reactor, that would silence the CLI
    until the master drops it.  The thread is a daemon: a terminal held
    stopped at exit does not keep the process alive past a second Ctrl-C."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.jobs: queue.SimpleQueue[tuple[int, bytes, defer.Deferred[int]] | None] = \
            queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="furl-output", daemon=True)
        self.thread.start()

    def write(self, fd: int, data: bytes) -> defer.Deferred[int]:
        """``os.write(fd, data)`` in the thread; fires (in the reactor) with
        its count, or fails with its error."""
        d: defer.Deferred[int] = defer.Deferred()
        self.jobs.put((fd, data, d))
        return d

    def stop(self) -> None:
        self.jobs.put(None)

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            fd, data, d = job
            try:
                n = os.write(fd, data)
            except OSError as e:
                self.reactor.callFromThread(d.errback, Failure(e))
            else:
                self.reactor.callFromThread(d.callback, n)


#: what ``_blocked`` holds while a terminal write runs in its thread
_IN_THREAD = object()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


@implementer(IWriteDescriptor)
class _Writable:
    """Registered with the reactor while ``fd`` cannot take more."""

    def __init__(self, fd: int, ready: Callable[[], None]) -> None:
        self.fd = fd
        self.ready = ready

    def fileno(self) -> int:
        return self.fd

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        self.ready()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.ready()  # the next write says what happened

    def logPrefix(self) -> str:  # noqa: N802
        return "output"


class OrderedWriter:
    """Writes chunks to file descriptors in the order given, never blocking
    on a pipe: what a full pipe cannot take waits, and so does everything
    written after it (to any descriptor: ``2>&1`` keeps its interleaving).

    A reader that closed its end (EPIPE) ends the writing quietly: the rest
    is dropped and ``on_broken`` is called once; any other write error is
    kept in :attr:`error` and ends the writing the same way.
    """

    def __init__(self, reactor: IReactorFDSet, fds: Iterable[int],
                 on_broken: Callable[[], None] = lambda: None,
                 high_water: int = HIGH_WATER) -> None:
        self.reactor = reactor
        self.fds = tuple(dict.fromkeys(fds))
        self.on_broken = on_broken
        self.high_water = high_water
        self.queue: deque[tuple[int, memoryview]] = deque()
        self.queued = 0  # bytes in the queue
        self.broken = False
        self.error: OSError | None = None  # a write error other than a closed reader
        self._blocked: _Writable | None = None
        self._room: list[defer.Deferred[None]] = []
        self._drained: list[defer.Deferred[None]] = []
        self._saved: dict[int, int] = {}
        #: terminals among our descriptors: written in a thread (see _TerminalThread)
        self._terminals: set[int] = set()
        self._thread: _TerminalThread | None = None

    # -- the descriptors' mode ----------------------------------------------
    def start(self) -> None:
        """Put the pipes and sockets among our descriptors in non-blocking mode."""
        # all flags read before any is changed: stdout and stderr may share
        # one open pipe (2>&1), and the second would read the first's change
        flags = {}
        for fd in self.fds:
            if _wants_nonblocking(fd):
                with contextlib.suppress(OSError):
                    flags[fd] = fcntl.fcntl(fd, fcntl.F_GETFL)
        for fd, fl in flags.items():
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
                self._saved[fd] = fl
        self._terminals = {fd for fd in self.fds if fd not in flags and _isatty(fd)}

    def stop(self) -> None:
        """Give the descriptors their mode back (others share them: the shell,
        the next command of a script); stop waiting on any."""
        self._unblock()
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self.restore()

    def restore(self) -> None:
        """The descriptors' mode back only (safe in a signal handler, before
        ``os._exit``)."""
        for fd, fl in reversed(list(self._saved.items())):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, fl)
        self._saved.clear()

    # -- writing --------------------------------------------------------------
    def write(self, fd: int, data: bytes) -> None:
        """Queue ``data`` for ``fd`` and write what can be written now."""
        if self.broken or not data:
            return
        self.queue.append((fd, memoryview(data)))
        self.queued += len(data)
        if self._blocked is None:
            self._pump()

    def room(self) -> defer.Deferred[None]:
        """Fires once at most ``high_water`` bytes wait (at once if so now)."""
        if self.broken or self.queued <= self.high_water:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._room.append(d)
        return d

    def drained(self) -> defer.Deferred[None]:
        """Fires once everything is written (or the writing ended)."""
        if self.broken or not self.queue:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)
        return d

    def _pump(self) -> None:
        while self.queue:
            fd, view = self.queue[0]
            if fd in self._terminals:
                self._write_in_thread(fd, bytes(view[:MAX_WRITE]))
                return
            try:
                n = os.write(fd, view[:MAX_WRITE])
            except BlockingIOError:
                self._block(fd)
                return
            except InterruptedError:
                continue
            except OSError as e:
                self._broke(fd, e)
                return
            self._wrote(fd, view, n)
        self._notify()

    def _wrote(self, fd: int, view: memoryview, n: int) -> None:
        self.queued -= n
        if n == len(view):
            self.queue.popleft()
        else:
            self.queue[0] = (fd, view[n:])

    def _write_in_thread(self, fd: int, chunk: bytes) -> None:
        """One write to a terminal, in its thread; the queue waits for it."""
        if self._thread is None:
            self._thread = _TerminalThread(self.reactor)
        self._blocked = _IN_THREAD  # type: ignore[assignment]
        d = self._thread.write(fd, chunk)
        d.addCallbacks(self._thread_wrote, self._thread_failed, callbackArgs=(fd,),
                       errbackArgs=(fd,))
        self._notify()

    def _thread_wrote(self, n: int, fd: int) -> None:
        if self._blocked is not _IN_THREAD or not self.queue:
            return  # stopped meanwhile
        self._blocked = None
        self._wrote(fd, self.queue[0][1], n)
        self._pump()

    def _thread_failed(self, f: Failure, fd: int) -> None:
        if self._blocked is not _IN_THREAD:
            return
        self._blocked = None
        if isinstance(f.value, InterruptedError):
            self._pump()
        elif isinstance(f.value, OSError):
            self._broke(fd, f.value)
        else:
            f.raiseException()

    def _block(self, fd: int) -> None:
        """Wait for the reactor to say ``fd`` takes more; tell the waiters
        what room there is meanwhile."""
        self._blocked = _Writable(fd, self._ready)
        self.reactor.addWriter(self._blocked)
        self._notify()

    def _unblock(self) -> None:
        if self._blocked is not None and self._blocked is not _IN_THREAD:
            self.reactor.removeWriter(self._blocked)
        self._blocked = None

    def _ready(self) -> None:
        self._unblock()
        self._pump()

    def _notify(self) -> None:
        if self.broken or self.queued <= self.high_water:
            waiting, self._room = self._room, []
            for d in waiting:
                d.callback(None)
        if self.broken or not self.queue:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def _broke(self, fd: int, e: OSError) -> None:
        """No more output: what waits is dropped, the waiters are answered."""
        self.broken = True
        if e.errno not in CLOSED:
            self.error = e
        self._unblock()
        self.queue.clear()
        self.queued = 0
        # a closed pipe's descriptor now points at /dev/null: whatever else
        # writes there at exit (Python's own flush) has nowhere to complain
        if e.errno in CLOSED:
            devnull = os.open(os.devnull, os.O_WRONLY)
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
            os.close(devnull)
        self._notify()
        self.on_broken()
