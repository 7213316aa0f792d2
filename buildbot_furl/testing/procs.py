"""Processes a bench or a test starts, tracked and stopped by pid.

One tracker (:class:`Procs`) for every harness: the bench tools
(bench/attack, bench/scale, bench/faults, bench/soak) and the tests (the
``procs`` fixture in tests/conftest.py, :class:`~buildbot_furl.testing.farm.Farm`)
use it: ``popen``, ``track_pidfile``, ``roots``, ``find``, ``cleanup``.
A process is only ever signalled by a pid we know is ours: a Popen not yet
waited for, or a daemon's pid read from its pidfile, while it is alive and
(given ``within``) its command line names our directory, so that a recycled
pid is never hit.  Nothing here kills by name.

Also the small /proc readers the benches sample with, a free loopback port,
the environment a child gets, and a poll-until helper.  Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: the checkout (or site-packages) this package is in: a child's PYTHONPATH
ROOT = Path(__file__).resolve().parents[2]
#: clock ticks per second (/proc/PID/stat's utime and stime are in these)
HZ = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def _ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for a daemon to listen on
    a moment later: taken below the kernel's ephemeral range, so that no
    outgoing connection of this or another test (they take their local port
    from that range) can take it meanwhile; never the same one twice here."""
    low = max(1024, min(_ephemeral_low(), 65536) - 12000)
    high = min(_ephemeral_low(), 65536) - 1
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket() as s:  # a crowded range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI, a daemon or a helper process: ours, less any
    FURL_* variable (a stray FURL_WORKER_FURL would change what runs), with
    this checkout first on PYTHONPATH, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FURL_")}
    # no empty entry: that would put each child's working directory on sys.path
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def wait_for(pred: Callable[[], T], timeout: float, interval: float = 0.2) -> T:
    """Poll ``pred`` until it returns something true, or ``timeout`` s pass;
    what it returned last (so ``pids = wait_for(find, 20)`` keeps the pids).
    Blocking: for tests, harness threads and scripts, never on a reactor
    (there: :func:`buildbot_furl.testing.waiting.wait_for`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return value
        time.sleep(min(interval, left))


def die_with_parent() -> None:
    """In a child process: SIGTERM when the parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: the child's own stdin-EOF rule still applies
        pass
    if os.getppid() == 1:
        sys.exit(1)


# -- /proc readers ---------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces and ')')."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive, and never ours
        return True
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def proc_ticks(pid: int) -> int | None:
    """utime + stime of ``pid``, in clock ticks (HZ a second); None if gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])


def proc_rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            fields = _stat_fields(int(pid))
            if fields is not None:
                out[int(pid)] = int(fields[1])
    return out


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every live process below them (a parent walk over /proc).
    A process that outlived its parent was reparented and is not found."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        kids.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(kids.get(pid, ()))
    return seen


def processes(*argv: str, within: Path | None = None,
              under: Iterable[int] | None = None) -> list[int]:
    """Pids of live processes whose command line starts with ``argv`` (with
    ``within``: whose working directory is below it; with ``under``: that
    descend from one of those pids).  Machine-wide without ``under``: prefer
    :meth:`Procs.find`, which looks only among our own processes."""
    want = [a.encode() for a in argv]
    pids = sorted(descendants(under)) if under is not None else [
        int(p) for p in os.listdir("/proc") if p.isdigit()]
    found = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd") if within is not None else ""
        except OSError:
            continue
        if within is not None and not cwd.startswith(str(within.resolve())):
            continue
        if cmd[:len(want)] == want and pid_alive(pid):
            found.append(pid)
    return found


# -- the tracker -----------------------------------------------------------------------

class Procs:
    """Every process started through it, and every daemon whose pidfile it was
    told of, stopped by pid at :meth:`cleanup`.  Thread-safe (a bench's
    sampling and CLI threads start processes while the main thread waits).

    ``within``: a directory; a daemon's pid (from its pidfile) is signalled
    only while its command line names it, so a pid recycled since is spared.
    """

    def __init__(self, within: Path | None = None, grace: float = 10.0) -> None:
        self.within = str(within) if within is not None else None
        self.grace = grace  # seconds from SIGTERM to SIGKILL at cleanup
        self.pidfiles: list[Path] = []
        self.pids: set[int] = set()  # daemons' pids, read from their pidfiles
        self.popens: list[subprocess.Popen[Any]] = []
        self.lock = threading.Lock()
        self.closed = False

    def track_pidfile(self, path: Path) -> int | None:
        """Remember ``path`` (read again at cleanup); the pid in it now, if any."""
        with self.lock:
            if path not in self.pidfiles:
                self.pidfiles.append(path)
        with contextlib.suppress(OSError, ValueError):
            pid = int(path.read_text().strip())
            with self.lock:
                self.pids.add(pid)
            return pid
        return None

    def ours(self, pid: int) -> bool:
        """``pid`` is alive, and (given ``within``) its command line names our directory."""
        if not pid_alive(pid):
            return False
        if self.within is None:
            return True
        try:
            return self.within.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def roots(self) -> set[int]:
        """The pids started here and the daemons' pids from their pidfiles."""
        for pf in list(self.pidfiles):
            self.track_pidfile(pf)
        with self.lock:
            return set(self.pids) | {p.pid for p in self.popens if p.returncode is None}

    def find(self, *argv: str, within: Path | None = None) -> list[int]:
        """:func:`processes`, only among our own processes and their descendants."""
        return processes(*argv, within=within, under=self.roots())

    def popen(self, *argv: str, env: dict[str, str] | None = None, **kw: Any
              ) -> subprocess.Popen[Any]:
        """``subprocess.Popen(argv)`` in :func:`child_env` (plus ``env``), stdin
        /dev/null unless given; tracked until :meth:`forget` or cleanup."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        with self.lock:
            if self.closed:
                raise RuntimeError("stopping: no new process")
            p = subprocess.Popen(list(argv), env=child_env(env), **kw)
            self.popens.append(p)
        return p

    def forget(self, p: subprocess.Popen[Any]) -> None:
        """``p`` has been waited for: its pid is not ours any more."""
        with self.lock:
            with contextlib.suppress(ValueError):
                self.popens.remove(p)

    def close(self) -> None:
        """No new process from now on (threads still running get an error)."""
        with self.lock:
            self.closed = True

    def cleanup(self) -> None:
        """SIGTERM everything, SIGKILL what is left after ``grace`` s, reap; then
        forget it all (a second cleanup must not signal a recycled pid)."""
        for pf in list(self.pidfiles):
            self.track_pidfile(pf)
        with self.lock:
            popens = list(self.popens)
            own = {p.pid for p in popens}
            daemons = [pid for pid in self.pids if pid not in own and self.ours(pid)]
        for p in popens:
            with contextlib.suppress(OSError):
                if p.poll() is None:  # not reaped yet: the pid is still this child's
                    p.send_signal(signal.SIGTERM)
        for pid in daemons:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        wait_for(lambda: not any(self.ours(pid) for pid in daemons), self.grace, 0.05)
        for pid in daemons:
            if self.ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for p in popens:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
        with self.lock:
            self.pids.clear()
            self.pidfiles.clear()
            for p in popens:
                with contextlib.suppress(ValueError):
                    self.popens.remove(p)
