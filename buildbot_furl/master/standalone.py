"""Standalone use without Buildbot: run a command on a worker, move files.

The admin CLI's requests become ordinary master/worker API calls on a
:class:`FurlConnection`: a shell command through buildbot-worker's
``shell``, files through the worker's transfer commands (below).
Each request takes one of the worker's ``SLOTS`` builders (builddir ``.``,
so paths are relative to the worker's base directory); the master sets
that builder list once per attach.

Files travel through the worker's own confined transfer commands
(``furl.put``/``furl.get``, see :mod:`buildbot_furl.protocol`): the worker
resolves the path beneath its directory when it opens it, and checks the
sha256 (or tree manifest) of what it received before giving it its final
name; for a get it reports the digests of exactly what it sent.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import posixpath
import re
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from buildbot_furl.errors import (
    BadRequest,
    CommandFailed,
    CommandNotExecutable,
    CommandNotFound,
    ConnectionLost,
    PathRefused,
    PolicyRefused,
    UnknownWorker,
    WireError,
    WorkerDraining,
    WorkerNotConnected,
)
from buildbot_furl.furlsfile import NAME_RE, shown_name
from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.consumer import Workers
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.protocol import GET_COMMAND, PUT_COMMAND, call
from buildbot_furl.protocol.messages import (
    FileTimes,
    NOTICE,
    TRANSFER_ERROR,
    TRANSFER_RESULT,
    FileInfo,
    GetRequest,
    PutAnswer,
    PutRequest,
    RunAnswer,
    RunRequest,
    encode_output,
    raise_transfer_error,
)

log = Logger()

SLOTS = 32
BLOCKSIZE = 1024 * 1024
SIGNAL_RE = re.compile(r"process killed by signal (\d+)")
START_FAILED = "error in RunProcess._startCommand ("



def worker_relative(path: str) -> str:
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
    """A master-side remoteCommand: gathers updates, optionally streams them.

    buildbot-worker reports a program it could not start (not found, not
    executable) as a line ``error in RunProcess._startCommand (...)`` and a
    Python traceback on stderr, then fails the command.  Before any output,
    that line is taken as :attr:`start_error` and the traceback is not
    passed on: the admin gets one line instead (see :meth:`Standalone.run`).
    """

    def __init__(self, out: Any = None) -> None:
        self.out = out
        self.updates: dict[str, Any] = {}
        self.rc: int | None = None
        self.signal: int | None = None
        self.failure_reason: str | None = None
        self.start_error: str | None = None
        self.output_seen = False
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.failure: Any = None

    def remote_update(self, updates: list[Any]) -> defer.Deferred[int]:
        """Buildbot's RemoteCommand.remote_update, answering once the CLI has
        taken the output (that is the backpressure)."""
        return defer.Deferred.fromCoroutine(self._update(updates))

    def _start_failure(self, key: str, value: str) -> bool:
        """Swallow (and remember) a failed start's report; True if swallowed."""
        if key != "stderr":
            return False
        if self.start_error is not None:
            return True  # the traceback that follows the first line
        if not self.output_seen and value.startswith(START_FAILED):
            self.start_error = value[len(START_FAILED):].strip().removesuffix(")")
            return True
        self.output_seen = True
        return False

    async def _update(self, updates: list[Any]) -> int:
        batch = []
        for upd, _num in updates:
            for key, value in upd.items():
                if key in ("stdout", "stderr"):
                    if self._start_failure(key, value):
                        continue
                    self.output_seen = True
                    batch.append([key, value])
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
                await call(self.out, "output", encode_output(batch))
            except Exception:
                pass  # the CLI went away; the disconnect handler interrupts us
        return 0

    def remote_complete(self, failure: Any = None) -> None:
        self.failure = failure
        if not self.done.called:
            self.done.callback(None)

    def notice(self, text: str) -> None:
        """Tell the admin something about the run (not its output)."""
        if self.out is not None:
            d = defer.Deferred.fromCoroutine(
                call(self.out, "output", encode_output([[NOTICE, text]])))
            d.addErrback(lambda f: None)


def start_error(program: str, worker: str, text: str) -> WireError:
    """The one-line error for a program the worker could not start."""
    m = re.search(r"\[Errno (\d+)\]", text)
    code = int(m.group(1)) if m else None
    if code == errno.ENOENT:
        return CommandNotFound(f"{program}: command not found on worker {worker!r}")
    if code in (errno.EACCES, errno.ENOEXEC, errno.EISDIR):
        reason = os.strerror(code).lower()
        return CommandNotExecutable(f"{program}: {reason} on worker {worker!r}")
    detail = re.sub(r"^\[Errno \d+\]\s*", "", text)[:300]
    return CommandNotExecutable(f"{program}: cannot be started on worker {worker!r}: {detail}")


class Standalone:
    """Runs standalone requests against the workers of one master host: the
    host's consumer (master/consumer.py), made from its :class:`Workers`."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        #: the builders of each attached session's connection
        self._slots: dict[WorkerSession, _Slots] = {}
        self._runs: dict[str, tuple[FurlConnection, str, str]] = {}
        self._ids = itertools.count(1)
        #: commands running per session (a draining worker stops at 0)
        self._active: dict[WorkerSession, int] = {}

    # -- the host's consumer (WorkerConsumer) ---------------------------------------
    def attached(self, session: WorkerSession, connection: FurlConnection) -> None:
        self._slots[session] = _Slots(connection)

    def detached(self, session: WorkerSession, connection: FurlConnection) -> None:
        self._slots.pop(session, None)

    def drain_started(self, session: WorkerSession, connection: FurlConnection) -> int:
        """A drain asked by either side: how many commands still run; the
        worker is told to stop once none does."""
        running = self._active.get(session, 0)
        self._maybe_stop(session)
        return running

    def _session(self, name: str) -> WorkerSession:
        if not NAME_RE.match(name):
            # never a name: maybe a FURL pasted in its place, so not echoed whole
            raise UnknownWorker(f"no worker named {shown_name(name)} in workers.furls")
        if not self.workers.knows(name):  # (one added a moment ago counts already)
            raise UnknownWorker(f"no worker named {name!r} in workers.furls")
        session = self.workers.session_of(name)
        if session is None or session.gone:
            raise WorkerNotConnected(f"worker {name!r} is not connected")
        return session

    def _conn(self, name: str) -> tuple[FurlConnection, _Slots, WorkerSession]:
        session = self._session(name)
        if session.draining is not None:
            raise WorkerDraining(
                f"worker {name!r} is draining (a graceful stop asked by "
                f"{session.draining}): it takes no new commands, and stops once its "
                "running ones end")
        # a session whose connection is down for now is waited for (by the
        # connection's calls), up to its grace period
        conn, slots = self.workers.connection_of(session), self._slots.get(session)
        if conn is None or slots is None:
            raise WorkerNotConnected(f"worker {name!r} is not connected")
        return conn, slots, session

    async def _command(self, worker: str, command: str, args: dict[str, Any],
                       out: Any = None, run_id: str | None = None) -> _Collector:
        """Run ``command`` on ``worker``; its collector.  A command that fails
        (rather than ending with an rc) raises CommandFailed, unless it failed
        to start its program (``collector.start_error``)."""
        conn, slots, session = self._conn(worker)
        builder = await slots.take()
        collector = _Collector(out)
        command_id = run_id or f"furl-{next(self._ids)}"
        lost: defer.Deferred[None] = defer.Deferred()
        cb = session.add_disconnect_callback(lambda: lost.called or lost.callback(None))

        def link(up: bool) -> None:
            collector.notice(
                f"the connection to worker {worker!r} is back" if up else
                f"the connection to worker {worker!r} was lost; waiting up to "
                f"{session.grace:.0f} s for it to come back")

        link_cb = session.add_link_listener(link)
        if run_id:
            self._runs[run_id] = (conn, builder, command_id)
        self._active[session] = self._active.get(session, 0) + 1
        try:
            try:
                await conn.remoteStartCommand(collector, builder, command_id, command, args)
            except PolicyRefused as e:
                raise PolicyRefused(f"worker {worker!r} refused: {e}") from None
            await defer.DeferredList(
                [collector.done, lost], fireOnOneCallback=True, consumeErrors=True)
            if not collector.done.called:
                raise ConnectionLost(f"worker {worker!r} disconnected during the command")
        finally:
            session.remove_disconnect_callback(cb)
            session.remove_link_listener(link_cb)
            self._runs.pop(run_id or "", None)
            slots.give_back(builder)
            self._active[session] -= 1
            if not self._active[session]:
                del self._active[session]
                self._maybe_stop(session)
        if collector.failure is not None and collector.start_error is None:
            text = getattr(collector.failure, "getErrorMessage", lambda: str(collector.failure))()
            raise CommandFailed(f"{command} failed on worker {worker!r}: {text}")
        return collector

    # -- run ------------------------------------------------------------------
    async def run(self, worker: str, request: RunRequest, out: Any) -> RunAnswer:
        if request.run_id in self._runs:
            raise BadRequest("duplicate run id")
        args = _shell_args(request.argv, request.workdir, request.env, request.timeout)
        self._session(worker)  # a name that is none is refused before it is logged
        log.info("run on worker {worker}: {n} argument(s) (run {run})", worker=worker,
                 n=len(request.argv), run=request.run_id)
        if out is not None:
            out.notifyOnDisconnect(
                lambda: self.interrupt(request.run_id, "the admin CLI went away"))
        collector = await self._command(worker, "shell", args, out, request.run_id)
        if collector.start_error is not None:
            raise start_error(request.argv[0], worker, collector.start_error)
        rc = collector.rc if isinstance(collector.rc, int) else -1
        return RunAnswer(rc, collector.signal, collector.failure_reason)

    def interrupt(self, run_id: str, why: str = "interrupted by the admin") -> bool:
        found = self._runs.get(run_id)
        if found is None:
            return False
        conn, builder, command_id = found
        d = conn.remoteInterruptCommand(builder, command_id, why)
        d.addErrback(lambda f: log.info("interrupt failed: {e}", e=f.getErrorMessage()))
        return True

    # -- graceful stop ----------------------------------------------------------
    def drain(self, worker: str) -> int:
        """``furl-master drain NAME``: no new commands on ``worker``; it is told
        to stop once its running ones end.  How many still run."""
        return self.workers.drain(self._session(worker), "the master's admin")

    def _maybe_stop(self, session: WorkerSession) -> None:
        conn = self.workers.connection_of(session)
        if session.draining is None or session.gone or self._active.get(session) \
                or conn is None:
            return
        defer.Deferred.fromCoroutine(self._stop_drained(session, conn))

    async def _stop_drained(self, session: WorkerSession, conn: FurlConnection) -> None:
        """Tell a drained worker to stop (once its link is up, if it is down),
        as Buildbot does an idle one: the connection's remoteShutdown."""
        try:
            await session.wait_attached()
            log.info("worker {name}: drained, nothing runs on it; telling it to stop",
                     name=session.name)
            await conn.remoteShutdown()
        except WireError as e:
            log.info("worker {name}: drained, but it could not be told to stop: {err}",
                     name=session.name, err=str(e))

    # -- files ----------------------------------------------------------------
    async def _transfer(self, worker: str, command: str, args: dict[str, Any],
                        client: Any = None) -> dict[str, Any]:
        """Run one of the worker's confined transfer commands; its answer.
        If the admin's ``client`` (its file object) goes away, the transfer
        is interrupted: the worker then discards what it received."""
        run_id = f"{command}-{next(self._ids)}"
        marker = None
        if client is not None and hasattr(client, "notifyOnDisconnect"):
            marker = client.notifyOnDisconnect(
                lambda: self.interrupt(run_id, "the admin CLI went away"))
        try:
            collector = await self._command(worker, command, args, run_id=run_id)
        finally:
            if marker is not None:
                with contextlib.suppress(Exception):
                    client.dontNotifyOnDisconnect(marker)
        raise_transfer_error(collector.updates.get(TRANSFER_ERROR), worker)
        result = collector.updates.get(TRANSFER_RESULT)
        if collector.rc != 0 or not isinstance(result, dict):
            raise CommandFailed(f"{command} on worker {worker!r} failed (rc {collector.rc})")
        return result

    async def put(self, worker: str, request: PutRequest, source: Any) -> PutAnswer:
        """Copy the CLI's file, or tarred directory, (read through ``source``)
        to the worker; it lands under its final name only once verified there."""
        final = worker_relative(request.remote)
        args = request.command_args(final, _Relay(source))
        result = await self._transfer(worker, PUT_COMMAND, args, source)
        try:
            landed = FileInfo.from_wire(result)
        except BadRequest:
            raise CommandFailed(f"worker {worker!r} sent an incomplete answer for "
                                f"{final!r}") from None
        return PutAnswer(final, request.kind, request.sha256, landed.manifest)

    async def get(self, worker: str, request: GetRequest, sink: Any) -> FileInfo:
        """Copy a worker's file, or directory as a tar stream, to the CLI
        (written through ``sink``); the answer carries the worker's digests."""
        remote = worker_relative(request.remote)
        result = await self._transfer(worker, GET_COMMAND,
                                      {"path": remote, "writer": _Relay(sink)}, sink)
        try:
            return FileInfo.from_wire(result)
        except BadRequest:
            raise CommandFailed(f"worker {worker!r} sent an incomplete answer for "
                                f"{remote!r}") from None


class _Relay:
    """Forwards a worker's file calls to the admin CLI's object, in order.

    It sits behind the master's file adapters, which already turn a
    worker's replays (after a reattach) into one sequential stream, so the
    CLI sees each byte once; the relay adds the offsets the CLI checks.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.read_offset = 0
        self.write_offset = 0

    def _fwd(self, method: str, *args: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._call(method, *args))

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await call(self.target, method, *args)
        except ConnectionLost:
            # the CLI's link, not the worker's: a worker told ConnectionLost waits
            # for its own link to come back (and keeps its part file meanwhile)
            raise CommandFailed("the admin's CLI went away") from None

    def remote_read(self, maxlength: int) -> defer.Deferred[Any]:
        def got(data: Any) -> Any:
            if isinstance(data, bytes):
                self.read_offset += len(data)
            return data

        return self._fwd("read", self.read_offset, maxlength).addCallback(got)

    def remote_write(self, data: bytes) -> defer.Deferred[Any]:
        offset, self.write_offset = self.write_offset, self.write_offset + len(data)
        return self._fwd("write", offset, data)

    def remote_utime(self, accessed_modified: Any) -> defer.Deferred[Any]:
        return self._fwd("utime", FileTimes(*accessed_modified).to_wire())

    def remote_close(self) -> defer.Deferred[Any]:
        return self._fwd("close")

    def remote_unpack(self) -> defer.Deferred[Any]:
        return self._fwd("unpack")
