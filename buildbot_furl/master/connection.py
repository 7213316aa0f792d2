"""Buildbot's master-side Connection, spoken over our foolscap protocol.

:class:`FurlConnection` has the attributes and methods a Buildbot 4.x
master uses on ``buildbot.worker.protocols.base.Connection`` (same
signatures, same return values as the PB transport's), but it is
duck-typed: nothing here imports the Buildbot master, so the standalone
``furl-master`` works with only buildbot-worker installed.

What a command hands the worker travels as references with a remote
interface (so every argument is bounded): its status object
(:class:`~buildbot_furl.master.commands.CommandStatus`) and, for a transfer,
its file writer or reader (:mod:`buildbot_furl.master.files`).

Command arguments cross the wire as msgpack.  That is lossy in known
ways: tuples arrive as lists, and only None/bool/int/float/str/bytes and
lists/dicts of those can be sent at all (anything else is refused with
BadRequest before the call); buildbot-worker itself then turns bytes into
str, as it does for PB.  The ``writer`` and ``reader`` values are taken
out of the arguments and passed as references beside them.  Updates come
back the other way: ``log`` and ``stat`` values become tuples again, as
Buildbot's steps expect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python.failure import Failure

from buildbot_furl.errors import BadRequest, ConnectionLost, PolicyRefused
from buildbot_furl.master.commands import CommandStatus
from buildbot_furl.master.files import FileReaderAdapter, FileWriterAdapter
from buildbot_furl.master.session import WorkerSession, peer_of
from buildbot_furl.protocol import call
from buildbot_furl.protocol.messages import (
    BuilderList,
    CommandArgs,
    builder_names,
    RESUMED,
    UNKNOWN_COMMAND,
    ResumeState,
    name_arg,
    text_arg,
)

log = Logger()


def _bytes_to_str(value: Any) -> Any:
    """What PB's ``decode`` does to worker info: bytes become str, recursively."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_bytes_to_str(k): _bytes_to_str(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bytes_to_str(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_bytes_to_str(v) for v in value)
    return value


class _Subscription:
    """What ``notifyOnDisconnect`` returns: ``unsubscribe()`` like Buildbot's."""

    def __init__(self, conn: FurlConnection, callback: Callable[[], Any]) -> None:
        self._conn = conn
        self.callback = callback

    def unsubscribe(self) -> None:
        self._conn._subscriptions.discard(self)


@dataclasses.dataclass
class _Running:
    """A command the worker runs for this connection, until it completes."""

    builder: str
    command: str
    payload: bytes
    status: CommandStatus
    writer: FileWriterAdapter | None
    reader: FileReaderAdapter | None
    started: bool = False  # the worker has it (its startCommand was answered)

    def state(self) -> ResumeState:
        return ResumeState(self.status.applied, self.status.completed,
                           self.writer.written if self.writer else 0,
                           self.reader.sent if self.reader else 0)


class FurlConnection:
    """One attached worker, as the Buildbot master (or the standalone one) sees it.

    Its session outlives a dropped connection (see
    :mod:`~buildbot_furl.master.session`): meanwhile calls wait for the
    worker to come back, and when it does, every running command is handed
    its master-side objects again (``resumeCommand``).  Only when the
    session ends does Buildbot hear of a disconnect.
    """

    def __init__(self, session: WorkerSession, master: Any = None, worker: Any = None,
                 metrics: Any = None) -> None:
        self.session = session
        #: what counts the commands' ends and bytes (master/metrics.py); None: nothing
        self.metrics = metrics
        self.master = master
        self.worker = worker
        # a Buildbot master's reactor (a fake one in Buildbot's test harness)
        self._reactor = getattr(master, "reactor", None) or reactor
        # Buildbot's WorkerManager sets this to remoteGetWorkerInfo()'s answer;
        # until then, what the worker told us at attach
        self.info: dict[str, Any] = dict(session.worker_info)
        self.builders: list[str] = []
        self._subscriptions: set[_Subscription] = set()
        self._disconnected = False
        self._unfinished: list[defer.Deferred[Any]] = []
        self._delivering = False
        self._finished_waiters: list[defer.Deferred[None]] = []
        self._running: dict[str, _Running] = {}  # command id -> what it needs on a reattach
        if session.gone:
            self._reactor.callLater(0, self.notifyDisconnected)
        else:
            session.add_disconnect_callback(self.notifyDisconnected)
            session.add_rebind_listener(self._resume_commands)

    def __repr__(self) -> str:
        return f"<FurlConnection {self.session.name} {self.get_peer()}>"

    def get_peer(self) -> str:
        peer = self.session.peer
        return peer if peer and peer != "?" else peer_of(self.session.bot)

    # -- disconnection --------------------------------------------------------
    def notifyOnDisconnect(self, cb: Callable[[], Any]) -> _Subscription:
        """Call ``cb()`` once when the connection goes.  Returns an object
        with ``unsubscribe()``.  Subscribing after the connection went calls
        ``cb`` soon (otherwise the subscriber would wait forever)."""
        sub = _Subscription(self, cb)
        if self._disconnected:
            self._reactor.callLater(0, self._run_callback, sub)
        else:
            self._subscriptions.add(sub)
        return sub

    def _run_callback(self, sub: _Subscription) -> None:
        try:
            result = sub.callback()
        except Exception:
            log.failure("disconnect callback {cb} failed", cb=sub.callback)
            return
        if isinstance(result, defer.Deferred):
            self._unfinished.append(result)

            def done(r: Any) -> None:
                self._unfinished.remove(result)
                if isinstance(r, Failure):
                    log.failure("disconnect callback {cb} failed", r, cb=sub.callback)
                self._check_finished()

            result.addBoth(done)

    def _check_finished(self) -> None:
        if self._delivering or self._unfinished:
            return
        waiters, self._finished_waiters = self._finished_waiters, []
        for d in waiters:
            d.callback(None)

    def notifyDisconnected(self) -> None:
        """Deliver the disconnect to every subscriber, exactly once."""
        if self._disconnected:
            return
        self._disconnected = True
        subs, self._subscriptions = list(self._subscriptions), set()
        self._delivering = True
        try:
            for sub in subs:
                self._run_callback(sub)
        finally:
            self._delivering = False
        self._check_finished()

    def waitShutdown(self) -> defer.Deferred[None]:
        """Fires when every disconnect callback (and the Deferreds they
        returned) has finished; at once if nothing is being delivered."""
        if not self._delivering and not self._unfinished:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._finished_waiters.append(d)
        return d

    def wait_shutdown_started(self) -> defer.Deferred[None]:
        """Fires (eventually) once the disconnect is being delivered."""
        d: defer.Deferred[None] = defer.Deferred()
        self.notifyOnDisconnect(lambda: self._reactor.callLater(0, d.callback, None))
        return d

    def loseConnection(self) -> None:
        """Drop the TCP connection and report the disconnect now (Buildbot's
        stopService and duplicate handling wait for it)."""
        try:
            self.session.drop("the master closed the connection")
        except Exception:
            log.failure("dropping the connection of {conn} failed", conn=self)
        self.notifyDisconnected()

    # -- calls to the worker --------------------------------------------------
    async def _answer(self, bot: Any, method: str, *args: Any) -> Any:
        """``method`` on ``bot``; a worker that does not answer within its
        session's call_timeout is cut off (its memory here stays bounded)."""
        timeout = getattr(self.session, "call_timeout", 120.0)
        d = defer.Deferred.fromCoroutine(call(bot, method, *args))
        d.addTimeout(timeout, self._reactor)
        try:
            return await d
        except defer.TimeoutError:
            self.session.drop(f"it did not answer {method} within {timeout:.0f} s",
                              "call_timeout")
            raise ConnectionLost(f"worker {self.session.name!r} did not answer {method}") \
                from None

    async def _call_retrying(self, method: str, *args: Any) -> Any:
        """``method`` on the worker; while its session is detached, wait for
        it to come back (and call again what the cut connection lost)."""
        while True:
            await self.session.wait_attached()
            bot = self.session.bot
            try:
                return await self._answer(bot, method, *args)
            except ConnectionLost:
                if self.session.gone:
                    raise
                self.session.call_failed(bot)

    def _call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._call_retrying(method, *args))

    def remotePrint(self, message: Any) -> defer.Deferred[Any]:
        return self._call("print", text_arg(message))

    def remoteGetWorkerInfo(self) -> defer.Deferred[dict[str, Any]]:
        async def get() -> dict[str, Any]:
            info = await self._call_retrying("getWorkerInfo")
            if not isinstance(info, dict):
                raise BadRequest("getWorkerInfo answered something that is not a dict")
            return _bytes_to_str(info)

        return defer.Deferred.fromCoroutine(get())

    def remoteSetBuilderList(self, builders: list[tuple[str, str]]) -> defer.Deferred[list[str]]:
        """``builders`` is a list of ``(name, workerbuilddir)``; answers the
        list of builder names the worker now has (PB answers a dict keyed
        by name; the master only iterates over it)."""

        async def set_list() -> list[str]:
            wanted = BuilderList(tuple((name_arg(name, "builder name"), str(builddir))
                                       for name, builddir in builders))
            names = builder_names(await self._call_retrying("setBuilderList", wanted.to_wire()))
            self.builders = names
            return names

        return defer.Deferred.fromCoroutine(set_list())

    def remoteStartCommand(self, remoteCommand: Any, builderName: str, commandId: str,  # noqa: N803
                           commandName: str, args: dict[str, Any]) -> defer.Deferred[Any]:
        async def start() -> Any:
            cargs, refs = CommandArgs.split(args)
            try:
                payload = cargs.to_wire()
            except BadRequest as e:
                raise BadRequest(f"command {commandName!r}: {e}") from None
            writer, reader = refs.get("writer"), refs.get("reader")
            command_id = name_arg(commandId, "command id")
            blame = self.session.command_blame()  # counted per command
            maxsize = args.get("maxsize")
            limit = maxsize if isinstance(maxsize, int) and not isinstance(maxsize, bool) else None
            run = _Running(name_arg(builderName, "builder name"),
                           name_arg(commandName, "command name"), payload,
                           CommandStatus(remoteCommand, blame),
                           FileWriterAdapter(writer, limit, blame) if writer is not None else None,
                           FileReaderAdapter(reader, blame) if reader is not None else None)
            self._running[command_id] = run
            run.status.finished.addBoth(lambda _: self._running.pop(command_id, None))
            run.status.finished.addBoth(lambda _: self._count(run))
            try:
                return await self._start(command_id, run)
            except PolicyRefused as e:
                self._running.pop(command_id, None)
                if self.master is None:
                    raise
                # Buildbot: the step fails, and its log says why
                await run.status.refused(f"worker {self.session.name!r} refused {commandName!r}:"
                                         f" {e}")
                return None
            except Exception:
                self._running.pop(command_id, None)
                raise

        return defer.Deferred.fromCoroutine(start())

    def _count(self, run: _Running) -> None:
        if self.metrics is not None:
            self.metrics.command_ended(
                run.status.result or "failed", run.status.update_bytes,
                run.writer.written if run.writer is not None else 0,
                run.reader.sent if run.reader is not None else 0)

    @property
    def commands_running(self) -> int:
        """Commands started here and not ended yet."""
        return len(self._running)

    async def _start(self, command_id: str, run: _Running) -> Any:
        """startCommand; if the connection drops before the answer, the
        session's rebind sorts it out (resumed, or started then)."""
        while True:
            await self.session.wait_attached()
            if run.started:
                return None  # a rebind found (or started) it meanwhile
            bot = self.session.bot
            try:
                answer = await self._answer(bot, "startCommand", run.builder, command_id,
                                            run.command, run.payload, run.status, run.writer,
                                            run.reader)
            except ConnectionLost:
                if self.session.gone:
                    raise
                self.session.call_failed(bot)
                continue
            run.started = True
            return answer

    async def _resume_commands(self) -> list[str]:
        """The session moved to a new connection: hand every running command
        its objects again; start those the worker never got.  Answers the
        ids the worker carries on."""
        carried = []
        for command_id, run in list(self._running.items()):
            try:
                answer = await self._answer(self.session.bot, "resumeCommand", run.builder,
                                            command_id, run.status, run.writer, run.reader,
                                            run.state().to_wire())
                if answer == UNKNOWN_COMMAND and not run.started:
                    await self._answer(self.session.bot, "startCommand", run.builder,
                                       command_id, run.command, run.payload, run.status,
                                       run.writer, run.reader)
                    answer = RESUMED
                    run.started = True
            except ConnectionLost:
                raise  # cut again: the next reattach resumes them all
            except Exception as e:
                log.info("command {cid} of worker {name} could not be resumed: {err}",
                         cid=command_id, name=self.session.name, err=str(e))
                answer = UNKNOWN_COMMAND
            if answer == RESUMED:
                run.started = True
                carried.append(command_id)
            else:
                self._running.pop(command_id, None)
                run.status.lost(f"worker {self.session.name!r} no longer runs the command")
        return carried

    def remoteShutdown(self) -> defer.Deferred[None]:
        """Ask the worker to shut down; a connection lost meanwhile is success."""

        async def shutdown() -> None:
            try:
                # a cut may lose the call while the session lives on: it is
                # sent again once the worker is back (else a graceful stop hangs)
                await self.session.call_through_cuts("shutdown")
            except ConnectionLost:
                pass  # it went; its session ended

        return defer.Deferred.fromCoroutine(shutdown())

    def remoteStartBuild(self, builderName: str) -> defer.Deferred[Any]:  # noqa: N803
        return self._call("startBuild", name_arg(builderName, "builder name"))

    def remoteInterruptCommand(self, builderName: str, commandId: str,  # noqa: N803
                               why: Any) -> defer.Deferred[Any]:
        return self._call("interruptCommand", name_arg(builderName, "builder name"),
                          name_arg(commandId, "command id"), text_arg(why))
