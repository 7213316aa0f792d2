"""Run a service in the background: pid file with a lock, readiness pipe.

``start`` spawns the ``--nodaemon`` form of the same command in a new
session and waits on a pipe for the child's verdict: ``OK`` once it is
serving, or ``ERROR <one line>``, which the parent prints.  The child
holds an exclusive lock on its pid file for as long as it lives, so
"running?" is a lock test, never a guess from a stale pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import select
import signal
import subprocess
import sys
import time
from typing import Any

from buildbot_furl.errors import ConfigError


def already_running(what: str, basedir: str, pid: int | None) -> str:
    """The one wording for a second start of the same daemon."""
    return f"the {what} in {basedir} is already running (pid {pid or '?'})"


class PidFile:
    """The lock-holding pid file of a daemon (``what``: "master", "worker")."""

    def __init__(self, path: str, what: str = "daemon") -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock and write our pid; ConfigError if another instance holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(already_running(self.what, os.path.dirname(self.path),
                                              self.read())) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None

    def read(self) -> int | None:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """The pid of the live instance, or None."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return self.read()
        finally:
            os.close(fd)
        return None


def python_argv(module: str, *args: str) -> list[str]:
    """The argv that runs ``python -m module args`` for a process we start.

    ``-P`` keeps the caller's working directory off ``sys.path``: without it a
    ``msgpack.py`` (say) left in the directory a daemon is started from --
    a worker directory the master may write into, a world-writable one --
    would be imported into the daemon and run with its rights.
    """
    return [sys.executable, "-P", "-m", module, *args]


def daemon_environ(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) for a daemon we start, less relative entries of
    ``PYTHONPATH``: an empty one (``export PYTHONPATH=$PYTHONPATH:/x`` with
    nothing before makes one) or ``.`` means the starting directory, which
    ``-P`` alone does not keep off ``sys.path``."""
    env = dict(os.environ if env is None else env)
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if os.path.isabs(p)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env


_PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> None:
    """Keep this process's memory (every swissnum it holds) out of core files.

    ``PR_SET_DUMPABLE`` 0 stops the kernel from dumping it (and other users'
    ptrace); it is not inherited across exec, so the commands a worker runs
    are unaffected by it.  The soft ``RLIMIT_CORE`` 0 also covers kernels set
    to dump every process (``suid_dumpable``); children inherit that soft
    limit but keep the hard one, so a build that wants cores can still
    ``ulimit -c`` back up.
    """
    with contextlib.suppress(ValueError, OSError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def secret_pipe(secret: bytes) -> int:
    """A pipe's read end, inheritable, already holding ``secret`` (and EOF).

    This is how a secret reaches a child process: not its argv (``ps``
    shows it to everyone) and not its environment (every command the child
    runs would inherit it, and ``/proc/PID/environ`` keeps it for its life).
    """
    r, w = os.pipe()
    try:
        os.write(w, secret)  # far below the pipe's buffer: never blocks
    finally:
        os.close(w)
    os.set_inheritable(r, True)
    return r


def spawn(argv: list[str], log_path: str, timeout: float, *,
          secret: tuple[str, bytes] | None = None,
          env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Start ``argv + ['--ready-fd', N]`` detached; wait for its verdict.

    ``secret`` is ``(option, value)``: the child gets ``option FD``, a pipe
    from which it reads ``value``.
    """
    r, w = os.pipe()
    fds = [w]
    extra = ["--ready-fd", str(w)]
    if secret is not None:
        sfd = secret_pipe(secret[1])
        fds.append(sfd)
        extra += [secret[0], str(sfd)]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen(
            [*argv, *extra],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
            env=daemon_environ(env),
        )
    finally:
        for fd in fds:
            os.close(fd)
        os.close(log_fd)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, (f"no answer from the daemon after {timeout:.0f} s "
                               f"(pid {proc.pid} left running); see {log_path}")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(r)
    line = buf.decode("utf-8", "replace").strip()
    if line.startswith("OK"):
        return True, line[2:].strip()
    if line.startswith("ERROR"):
        return False, line[5:].strip()
    code = proc.poll()
    return False, f"the daemon exited during start-up (status {code}); see {log_path}"


def report_ready(fd: int | None, ok: bool, message: str = "") -> None:
    """The child's half of spawn(): one line, then close the pipe."""
    if fd is None:
        return
    line = ("OK " if ok else "ERROR ") + " ".join(message.split())
    with contextlib.suppress(OSError):
        os.write(fd, (line + "\n").encode("utf-8", "replace"))
        os.close(fd)


def stop(pidfile: PidFile, timeout: float = 15.0) -> int | None:
    """SIGTERM the running instance and wait for it; returns its pid or None."""
    pid = pidfile.running_pid()
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pidfile.running_pid() is None:
            return pid
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    return pid


def claim(path: str, ready_fd: int | None, what: str) -> PidFile | None:
    """Take the pid file for this process; on failure report it through the
    readiness pipe and return None (or raise, in the foreground).  Also the
    moment a daemon starts to hold secrets: core dumps are turned off."""
    forbid_core_dumps()
    pidfile = PidFile(path, what)
    try:
        pidfile.acquire()
    except ConfigError as e:
        report_ready(ready_fd, False, str(e))
        if ready_fd is None:
            raise
        return None
    return pidfile


def run_reactor(pidfile: PidFile, svc: Any) -> None:
    """Run the reactor until it stops, stopping ``svc`` on the way out."""
    from twisted.internet import reactor

    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: svc.running and svc.stopService())
    try:
        reactor.run()
    finally:
        pidfile.release()
