"""Standalone use without Buildbot: run a command on a worker, move files.

The admin CLI's requests become ordinary master/worker API calls on a
:class:`FurlConnection`: a shell command through buildbot-worker's
``shell``, files through ``downloadFile``/``uploadFile``/``uploadDirectory``.
Each request takes one of the worker's ``SLOTS`` builders (builddir ``.``,
so paths are relative to the worker's base directory); the master sets
that builder list once per attach.

Files are verified end to end: ``python -m buildbot_furl.fileops``, run on
the worker with the worker's own interpreter, hashes the file (or tree)
there.  What is sent to the worker lands under a temporary name and is
renamed into place only when the digests agree.
"""

from __future__ import annotations

import itertools
import posixpath
import re
import secrets
import stat as stat_mod
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from buildbot_furl.errors import (
    BadRequest,
    CommandFailed,
    ConnectionLost,
    PathRefused,
    UnknownWorker,
    WorkerNotConnected,
)
from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.protocol import call, encode

log = Logger()

SLOTS = 32
BLOCKSIZE = 1024 * 1024
SIGNAL_RE = re.compile(r"process killed by signal (\d+)")

DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def confine(path: str) -> str:
    """A worker path relative to the worker's base directory, or PathRefused."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise PathRefused("empty or invalid remote path")
    if path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", path):
        raise PathRefused(f"remote path {path!r} must be relative to the worker's directory")
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise PathRefused(f"remote path {path!r} escapes the worker's directory")
    return norm


def _shell_args(argv: list[str], workdir: str, env: dict[str, str],
                max_time: float | None) -> dict[str, Any]:
    """buildbot-worker ``shell`` arguments for a standalone command: no PTY,
    no environment dump in the output, killed after ``max_time`` seconds."""
    return {"workdir": workdir, "command": argv, "env": env, "want_stdout": True,
            "want_stderr": True, "logEnviron": False, "usePTY": False, "logfiles": {},
            "timeout": None, "maxTime": max_time}


class _Slots:
    """The per-session pool of builders a standalone request runs under."""

    def __init__(self, conn: FurlConnection) -> None:
        self.conn = conn
        self.free = [f"furl-run-{i}" for i in range(SLOTS)]
        self.sem = defer.DeferredSemaphore(SLOTS)
        self.ready: defer.Deferred[Any] | None = None

    async def take(self) -> str:
        if self.ready is None:
            self.ready = self.conn.remoteSetBuilderList([(name, ".") for name in self.free])
        await self.ready
        await self.sem.acquire()
        return self.free.pop(0)

    def give_back(self, name: str) -> None:
        self.free.append(name)
        self.sem.release()


class _Collector:
    """A master-side remoteCommand: gathers updates, optionally streams them."""

    def __init__(self, out: Any = None, capture: bool = False) -> None:
        self.out = out
        self.stdout: list[str] | None = [] if capture else None
        self.updates: dict[str, Any] = {}
        self.rc: int | None = None
        self.signal: int | None = None
        self.failure_reason: str | None = None
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.failure: Any = None

    def remote_update(self, updates: list[Any]) -> defer.Deferred[int]:
        """Buildbot's RemoteCommand.remote_update, answering once the CLI has
        taken the output (that is the backpressure)."""
        return defer.Deferred.fromCoroutine(self._update(updates))

    async def _update(self, updates: list[Any]) -> int:
        batch = []
        for upd, _num in updates:
            for key, value in upd.items():
                if key in ("stdout", "stderr"):
                    batch.append([key, value])
                    if key == "stdout" and self.stdout is not None:
                        self.stdout.append(value)
                elif key == "header":
                    m = SIGNAL_RE.search(value)
                    if m:
                        self.signal = int(m.group(1))
                    batch.append([key, value])
                elif key == "rc":
                    self.rc = value
                elif key == "failure_reason":
                    self.failure_reason = value
                else:
                    self.updates[key] = value
        if batch and self.out is not None:
            try:
                await call(self.out, "output", encode(batch))
            except Exception:
                pass  # the CLI went away; the disconnect handler interrupts us
        return 0

    def remote_complete(self, failure: Any = None) -> None:
        self.failure = failure
        if not self.done.called:
            self.done.callback(None)


class Standalone:
    """Runs standalone requests against the workers of one registry."""

    def __init__(self, registry: WorkerRegistry) -> None:
        self.registry = registry
        self._conns: dict[int, tuple[FurlConnection, _Slots]] = {}
        self._runs: dict[str, tuple[FurlConnection, str, str]] = {}
        self._ids = itertools.count(1)

    def _conn(self, name: str) -> tuple[FurlConnection, _Slots, WorkerSession]:
        if name not in self.registry.entries:
            self.registry.poll()  # a worker added a moment ago counts already
        if name not in self.registry.entries:
            raise UnknownWorker(f"no worker named {name!r} in workers.furls")
        session = self.registry.sessions.get(name)
        if session is None or session.gone:
            raise WorkerNotConnected(f"worker {name!r} is not connected")
        key = id(session)
        if key not in self._conns:
            conn = FurlConnection(session)
            self._conns[key] = (conn, _Slots(conn))
            session.add_disconnect_callback(lambda: self._conns.pop(key, None))
        conn, slots = self._conns[key]
        return conn, slots, session

    async def _command(self, worker: str, command: str, args: dict[str, Any],
                       out: Any = None, run_id: str | None = None,
                       capture: bool = False) -> _Collector:
        conn, slots, session = self._conn(worker)
        builder = await slots.take()
        collector = _Collector(out, capture)
        command_id = run_id or f"furl-{next(self._ids)}"
        lost: defer.Deferred[None] = defer.Deferred()
        cb = session.add_disconnect_callback(lambda: lost.called or lost.callback(None))
        if run_id:
            self._runs[run_id] = (conn, builder, command_id)
        try:
            await conn.remoteStartCommand(collector, builder, command_id, command, args)
            await defer.DeferredList(
                [collector.done, lost], fireOnOneCallback=True, consumeErrors=True)
            if not collector.done.called:
                raise ConnectionLost(f"worker {worker!r} disconnected during the command")
        finally:
            session.remove_disconnect_callback(cb)
            self._runs.pop(run_id or "", None)
            slots.give_back(builder)
        if collector.failure is not None:
            text = getattr(collector.failure, "getErrorMessage", lambda: str(collector.failure))()
            raise CommandFailed(f"{command} failed on worker {worker!r}: {text}")
        return collector

    # -- run ------------------------------------------------------------------
    async def run(self, worker: str, request: dict[str, Any], out: Any) -> dict[str, Any]:
        argv = request.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequest("run wants a non-empty argument list")
        env = request.get("env") or {}
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise BadRequest("env must map names to strings")
        timeout = request.get("timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise BadRequest("timeout must be a positive number of seconds")
        workdir = request.get("workdir") or "."
        if not isinstance(workdir, str):
            raise BadRequest("workdir must be a string")
        run_id = request.get("run_id") or f"run-{secrets.token_hex(6)}"
        if not isinstance(run_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id) \
                or run_id in self._runs:
            raise BadRequest("invalid or duplicate run id")
        args = _shell_args(argv, workdir, env, timeout)
        log.info("run on worker {worker}: {n} argument(s) (run {run})", worker=worker,
                 n=len(argv), run=run_id)
        if out is not None:
            out.notifyOnDisconnect(lambda: self.interrupt(run_id, "the admin CLI went away"))
        collector = await self._command(worker, "shell", args, out, run_id)
        rc = collector.rc if isinstance(collector.rc, int) else -1
        return {"rc": rc, "signal": collector.signal,
                "failure_reason": collector.failure_reason}

    def interrupt(self, run_id: str, why: str = "interrupted by the admin") -> bool:
        found = self._runs.get(run_id)
        if found is None:
            return False
        conn, builder, command_id = found
        d = conn.remoteInterruptCommand(builder, command_id, why)
        d.addErrback(lambda f: log.info("interrupt failed: {e}", e=f.getErrorMessage()))
        return True

    # -- files ----------------------------------------------------------------
    async def _fileop(self, worker: str, *args: str) -> str:
        """Run ``python -m buildbot_furl.fileops ARGS`` on the worker, with the
        worker's own interpreter; its one line of output."""
        _, _, session = self._conn(worker)
        python = session.worker_info.get("python") or "python3"
        argv = [python, "-m", "buildbot_furl.fileops", *args]
        shell = _shell_args(argv, ".", {}, 3600)
        collector = await self._command(worker, "shell", shell, capture=True)
        out = "".join(collector.stdout or []).strip()
        if collector.rc != 0 or not DIGEST_RE.fullmatch(out):
            raise CommandFailed(f"{args[0]} of {args[1]!r} failed on worker {worker!r}")
        return out

    async def stat(self, worker: str, path: str) -> dict[str, Any]:
        collector = await self._command(worker, "stat", {"file": path, "workdir": "."})
        st = collector.updates.get("stat")
        if collector.rc != 0 or not isinstance(st, (list, tuple)) or len(st) < 7:
            raise CommandFailed(f"{path!r} does not exist on worker {worker!r}")
        mode = st[0]
        kind = "file" if stat_mod.S_ISREG(mode) else "dir" if stat_mod.S_ISDIR(mode) else None
        if kind is None:
            raise CommandFailed(f"{path!r} on worker {worker!r} is neither a file nor a "
                                "directory")
        return {"kind": kind, "size": st[6], "mode": stat_mod.S_IMODE(mode)}

    async def put(self, worker: str, request: dict[str, Any], source: Any) -> dict[str, Any]:
        """Copy the CLI's file, or tarred directory, (read through ``source``)
        to the worker; it lands under its final name only once verified."""
        final = confine(request.get("remote", ""))
        kind = request.get("kind", "file")
        expect = request.get("sha256")
        if kind not in ("file", "dir") or not isinstance(expect, str) \
                or not DIGEST_RE.fullmatch(expect):
            raise BadRequest("put wants kind 'file' or 'dir' and the sha256 of what is sent")
        tree = request.get("manifest")
        if kind == "dir" and not (isinstance(tree, str) and DIGEST_RE.fullmatch(tree)):
            raise BadRequest("a directory put wants the tree's manifest digest")
        part = f"{final}.furl-part-{secrets.token_hex(4)}"
        mode = request.get("mode") if kind == "file" else None
        args = {"workdir": ".", "workerdest": part, "reader": _Relay(source), "maxsize": None,
                "blocksize": BLOCKSIZE, "mode": mode}
        collector = await self._command(worker, "downloadFile", args)
        if collector.rc not in (0, None):
            raise CommandFailed(f"writing {final!r} on worker {worker!r} failed "
                                f"(rc {collector.rc})")
        if kind == "file":
            digest = await self._fileop(worker, "commit", part, final, expect)
            if digest != expect:
                raise CommandFailed(f"checksum mismatch after copying to {final!r}; "
                                    "nothing kept")
        else:
            digest = await self._fileop(worker, "unpack", part, final, tree)
            if digest != tree:
                raise CommandFailed(f"the tree unpacked at {final!r} differs from the one "
                                    "sent; nothing kept")
        return {"sha256": digest, "remote": final, "kind": kind}

    async def get(self, worker: str, request: dict[str, Any], sink: Any) -> dict[str, Any]:
        """Copy a worker's file, or directory as a tar stream, to the CLI
        (written through ``sink``); the answer carries the worker-side digest."""
        remote = confine(request.get("remote", ""))
        info = await self.stat(worker, remote)
        relay = _Relay(sink)
        if info["kind"] == "file":
            args = {"workdir": ".", "workersrc": remote, "writer": relay, "maxsize": None,
                    "blocksize": BLOCKSIZE, "keepstamp": False}
            command, op = "uploadFile", "sha256"
        else:
            args = {"workdir": ".", "workersrc": remote, "writer": relay, "maxsize": None,
                    "blocksize": BLOCKSIZE, "compress": None}
            command, op = "uploadDirectory", "manifest"
        collector = await self._command(worker, command, args)
        if collector.rc not in (0, None):
            raise CommandFailed(f"reading {remote!r} on worker {worker!r} failed "
                                f"(rc {collector.rc})")
        digest = await self._fileop(worker, op, remote)
        return {"sha256": digest, **info}


class _Relay:
    """Forwards a worker's file calls to the admin CLI's object, one at a time."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def _fwd(self, method: str, *args: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(call(self.target, method, *args))

    def remote_read(self, maxlength: int) -> defer.Deferred[Any]:
        return self._fwd("read", maxlength)

    def remote_write(self, data: bytes) -> defer.Deferred[Any]:
        return self._fwd("write", data)

    def remote_utime(self, accessed_modified: Any) -> defer.Deferred[Any]:
        return self._fwd("utime", encode(list(accessed_modified)))

    def remote_close(self) -> defer.Deferred[Any]:
        return self._fwd("close")

    def remote_unpack(self) -> defer.Deferred[Any]:
        return self._fwd("unpack")

