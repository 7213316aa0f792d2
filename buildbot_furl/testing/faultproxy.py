"""A TCP proxy on loopback that breaks connections on purpose.

Workers dial the proxy (their FURL's location hint names its port), the
proxy dials the master.  Tests and bench/faults tell it when to
break things:

* :meth:`FaultProxy.cut` resets every connection now (TCP RST both ways);
* :meth:`FaultProxy.cut_after` resets after so many more bytes (on every
  connection, or only on the next new ones: a cut during an attach), and
  :meth:`FaultProxy.cut_several` does so again and again while a transfer runs;
* :meth:`FaultProxy.freeze` stops forwarding one direction (data waits,
  nothing is lost yet: e.g. the worker's rc reaches the master, its ack
  never comes back) and :meth:`FaultProxy.blackhole` both (a half-open
  link: a NAT that silently dropped it, a suspended laptop);
* :meth:`FaultProxy.refuse` turns new connections away (a link that stays
  down).

It runs in one thread with a selector, so it works beside a Twisted
reactor or plain subprocess-driven tests.  It only listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

UP, DOWN = "up", "down"  # worker -> master, master -> worker
BUFSIZE = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (no orderly FIN): what a failed link looks like."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Pipe:
    """One proxied connection: the worker's socket and the master's."""

    def __init__(self, client: socket.socket, server: socket.socket, budget: int | None) -> None:
        self.sockets = {UP: client, DOWN: server}  # keyed by the direction they read
        self.pending = {UP: b"", DOWN: b""}  # read, not yet written to the other side
        self.budget = budget  # bytes still to forward before a reset (None: no limit)
        self.forwarded = {UP: 0, DOWN: 0}
        self.frozen: set[str] = set()  # directions not forwarded now
        self.closed = False

    def other(self, direction: str) -> socket.socket:
        return self.sockets[DOWN if direction == UP else UP]


class FaultProxy:
    """``with FaultProxy(master_port) as proxy:`` workers dial ``proxy.port``."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._refusing = False
        self._new_budgets: list[int] = []  # byte budgets for the next new connections
        self._cut_now = False
        self._stop = False
        self.cuts = 0  # connections reset on purpose
        self.accepted = 0
        self.bytes = {UP: 0, DOWN: 0}
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel: selectors.BaseSelector | None = None
        self._thread = threading.Thread(target=self._loop, name="fault-proxy", daemon=True)

    # -- control (from any thread) ---------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(10)
        for pipe in self._pipes:
            for s in pipe.sockets.values():
                _reset(s)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def cut(self) -> None:
        """Reset every open connection now."""
        with self._lock:
            self._cut_now = True
        self._wake()

    def cut_after(self, nbytes: int, new_only: bool = False, count: int = 1) -> None:
        """Reset after ``nbytes`` more bytes: the open connections (every
        one of them), or with ``new_only`` the next ``count`` new ones."""
        with self._lock:
            if new_only:
                self._new_budgets.extend([nbytes] * count)
            else:
                for pipe in self._pipes:
                    if not pipe.closed:
                        pipe.budget = nbytes
        self._wake()

    def cut_several(self, cuts: int, low: int, high: int,
                    while_running: subprocess.Popen[Any] | None = None,
                    timeout: float | None = 30, interval: float = 0.05) -> int:
        """Reset the open connections after a random number of bytes (``low``
        to ``high``), ``cuts`` times, each once the previous cut has happened
        and a connection is open again; stop early once ``while_running``
        (a process) has ended.  How many cuts there were.  A cut that does not
        come within ``timeout`` s (None: no limit) is an AssertionError."""
        def wait(pred: Callable[[], bool]) -> bool:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not (pred() or (while_running is not None and while_running.poll() is not None)):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(interval)
            return True

        first = self.cuts
        for k in range(first + 1, first + cuts + 1):
            self.cut_after(random.randint(low, high))
            if not wait(lambda k=k: self.cuts >= k):
                raise AssertionError(f"cut {k} never came")
            if self.cuts < k:  # the process ended first
                break
            wait(lambda: self.open_connections() > 0)
        self.cut_after(1 << 62)  # no more cuts on what is open now
        return self.cuts - first

    def freeze(self, direction: str) -> None:
        """Stop forwarding ``UP`` (worker to master) or ``DOWN`` on the open
        connections (new ones are not affected)."""
        with self._lock:
            for pipe in self._pipes:
                pipe.frozen.add(direction)
        self._wake()

    def blackhole(self) -> None:
        """Forward nothing either way on the open connections, and close
        nothing: a half-open link.  New connections work."""
        self.freeze(UP)
        self.freeze(DOWN)

    def thaw(self) -> None:
        with self._lock:
            for pipe in self._pipes:
                pipe.frozen.clear()
        self._wake()

    def refuse(self, on: bool = True) -> None:
        """Reset new connections at once (while ``on``)."""
        with self._lock:
            self._refusing = on

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for p in self._pipes if not p.closed)

    def wait_connections(self, n: int, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_connections() >= n:
                return True
            time.sleep(0.05)
        return False

    # -- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stop:
                self._apply_controls()
                self._set_interest(sel)
                for key, events in sel.select(0.2):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        pipe, sock = key.data, key.fileobj
                        if events & selectors.EVENT_READ:
                            self._read(pipe, UP if sock is pipe.sockets[UP] else DOWN)
                        if events & selectors.EVENT_WRITE and not pipe.closed:
                            self._write(pipe, DOWN if sock is pipe.sockets[UP] else UP)
        finally:
            sel.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        with self._lock:
            refusing = self._refusing
            budget = self._new_budgets.pop(0) if self._new_budgets else None
        if refusing:
            _reset(client)
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        for s in (client, server):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pipes.append(_Pipe(client, server, budget))
            self.accepted += 1

    def _apply_controls(self) -> None:
        with self._lock:
            cut, self._cut_now = self._cut_now, False
            if cut:
                for pipe in self._pipes:
                    self._close(pipe, on_purpose=True)
            self._pipes = [p for p in self._pipes if not p.closed]

    def _set_interest(self, sel: selectors.BaseSelector) -> None:
        """Read a direction while its data has gone out and it is not frozen;
        write a direction's data when there is some (and it is not frozen)."""
        with self._lock:
            pipes = list(self._pipes)
        live = set()
        for pipe in pipes:
            if pipe.closed:
                continue
            frozen = set(pipe.frozen)
            for direction in (UP, DOWN):
                sock = pipe.sockets[direction]
                back = DOWN if direction == UP else UP  # what this socket writes
                events = 0
                if direction not in frozen and not pipe.pending[direction]:
                    events |= selectors.EVENT_READ
                if back not in frozen and pipe.pending[back]:
                    events |= selectors.EVENT_WRITE
                live.add(sock)
                registered = sel.get_map().get(sock.fileno()) if sock.fileno() >= 0 else None
                if events == 0:
                    if registered is not None:
                        sel.unregister(sock)
                elif registered is None:
                    sel.register(sock, events, pipe)
                elif registered.events != events:
                    sel.modify(sock, events, pipe)
        for key in list(sel.get_map().values()):
            if key.fileobj not in (self._listener, self._wake_r) and key.fileobj not in live:
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(key.fileobj)

    def _read(self, pipe: _Pipe, direction: str) -> None:
        if pipe.closed:
            return
        try:
            data = pipe.sockets[direction].recv(BUFSIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            with self._lock:
                self._close(pipe, on_purpose=False)
            return
        cut = False
        if pipe.budget is not None:
            if len(data) >= pipe.budget:
                data, cut = data[:pipe.budget], True
            else:
                pipe.budget -= len(data)
        pipe.pending[direction] += data
        with self._lock:
            self.bytes[direction] += len(data)
        if direction not in pipe.frozen:
            self._write(pipe, direction)
        if cut:
            with self._lock:
                self._close(pipe, on_purpose=True)

    def _write(self, pipe: _Pipe, direction: str) -> None:
        data = pipe.pending[direction]
        if not data or pipe.closed:
            return
        try:
            n = pipe.other(direction).send(data)
        except BlockingIOError:
            return
        except OSError:
            with self._lock:
                self._close(pipe, on_purpose=False)
            return
        pipe.pending[direction] = data[n:]
        pipe.forwarded[direction] += n

    def _close(self, pipe: _Pipe, on_purpose: bool) -> None:
        """(with self._lock held)"""
        if pipe.closed:
            return
        pipe.closed = True
        for s in pipe.sockets.values():
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(s)
            _reset(s)
        if on_purpose:
            self.cuts += 1


@contextlib.contextmanager
def running_proxy(target_port: int) -> Iterator[FaultProxy]:
    with FaultProxy(target_port) as proxy:
        yield proxy
