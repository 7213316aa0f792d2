"""Buildbot's master-side Connection, spoken over our foolscap protocol.

:class:`FurlConnection` has the attributes and methods a Buildbot 4.x
master uses on ``buildbot.worker.protocols.base.Connection`` (same
signatures, same return values as the PB transport's), but it is
duck-typed: nothing here imports the Buildbot master, so the standalone
``furl-master`` works with only buildbot-worker installed.

The master-side objects a command hands the worker travel as foolscap
Referenceables with a RemoteInterface (so every argument is bounded):

* :class:`CommandStatus` receives a running command's sequence-numbered
  update batches and its completion, and feeds them to Buildbot's
  ``RemoteCommand`` (``remote_update``/``remote_complete``);
* :class:`FileWriterAdapter` / :class:`FileReaderAdapter` wrap Buildbot's
  ``FileWriterImpl``/``FileReaderImpl`` objects (``FileWriter``,
  ``DirectoryWriter``, ``FileReader``, ... or the standalone ones in
  :mod:`buildbot_furl.master.transfer`).

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

import math
from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from buildbot_furl.errors import BadRequest, ConnectionLost, RemoteError
from buildbot_furl.master.session import peer_of
from buildbot_furl.protocol import (
    MAX_CHUNK,
    RICommandStatus,
    RIFileReader,
    RIFileWriter,
    call,
    decode,
    encode,
    remote_method,
)

log = Logger()

MAX_TEXT = 64 * 1024  # protocol.Text's bound, in characters
MAX_NAME = 200  # protocol.Name's bound


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


def _name(value: Any, what: str) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_NAME:
        raise BadRequest(f"{what} is longer than {MAX_NAME} characters")
    return text


# -- disconnect subscriptions -------------------------------------------------


class _Subscription:
    """What ``notifyOnDisconnect`` returns: ``unsubscribe()`` like Buildbot's."""

    def __init__(self, conn: FurlConnection, callback: Callable[[], Any]) -> None:
        self._conn = conn
        self.callback = callback

    def unsubscribe(self) -> None:
        self._conn._subscriptions.discard(self)


# -- the connection -----------------------------------------------------------


class FurlConnection:
    """One attached worker, as the Buildbot master sees it.

    ``session`` is a :class:`~buildbot_furl.master.session.WorkerSession`
    (or anything with ``bot``, ``peer``, ``drop(why)``, ``gone`` and
    ``add_disconnect_callback(cb)``).
    """

    def __init__(self, session: Any, master: Any = None, worker: Any = None) -> None:
        self.session = session
        self.master = master
        self.worker = worker
        # a Buildbot master's reactor (a fake one in Buildbot's test harness)
        self._reactor = getattr(master, "reactor", None) or reactor
        # Buildbot's WorkerManager sets this to remoteGetWorkerInfo()'s answer;
        # until then, what the worker told us at attach
        wi = getattr(session, "worker_info", None)
        self.info: Any = dict(wi) if isinstance(wi, dict) else {}
        self.builders: list[str] = []
        self._subscriptions: set[_Subscription] = set()
        self._disconnected = False
        self._unfinished: list[defer.Deferred[Any]] = []
        self._delivering = False
        self._finished_waiters: list[defer.Deferred[None]] = []
        if getattr(session, "gone", False):
            self._reactor.callLater(0, self.notifyDisconnected)
        else:
            session.add_disconnect_callback(self._session_gone)

    def __repr__(self) -> str:
        return f"<FurlConnection {getattr(self.session, 'name', '?')} {self.get_peer()}>"

    @property
    def bot(self) -> Any:
        return self.session.bot

    def get_peer(self) -> str:
        peer = getattr(self.session, "peer", None)
        if peer and peer != "?":
            return str(peer)
        return peer_of(self.session.bot)

    # -- disconnection --------------------------------------------------------
    def notifyOnDisconnect(self, cb):  # noqa: ANN001,ANN201 - Buildbot's signature
        """Call ``cb()`` once when the connection goes.  Returns an object
        with ``unsubscribe()``.  Subscribing after the connection went calls
        ``cb`` soon (otherwise the subscriber would wait forever)."""
        sub = _Subscription(self, cb)
        if self._disconnected:
            self._reactor.callLater(0, self._late_deliver, sub)
        else:
            self._subscriptions.add(sub)
        return sub

    def _late_deliver(self, sub: _Subscription) -> None:
        self._run_callback(sub)

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

    def notifyDisconnected(self):  # noqa: ANN201
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

    def waitShutdown(self):  # noqa: ANN201
        """Fires when every disconnect callback (and the Deferreds they
        returned) has finished; at once if nothing is being delivered."""
        if not self._delivering and not self._unfinished:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._finished_waiters.append(d)
        return d

    def wait_shutdown_started(self):  # noqa: ANN201
        """Fires (eventually) once the disconnect is being delivered."""
        d: defer.Deferred[None] = defer.Deferred()
        self.notifyOnDisconnect(lambda: self._reactor.callLater(0, d.callback, None))
        return d

    def _session_gone(self) -> None:
        self.notifyDisconnected()

    def loseConnection(self):  # noqa: ANN201
        """Drop the TCP connection and report the disconnect now (Buildbot's
        stopService and duplicate handling wait for it)."""
        try:
            self.session.drop("the master closed the connection")
        except Exception:
            log.failure("dropping the connection of {conn} failed", conn=self)
        self.notifyDisconnected()

    # -- calls to the worker --------------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(call(self.session.bot, method, *args, **kwargs))

    def remotePrint(self, message):  # noqa: ANN001,ANN201
        text = message if isinstance(message, str) else str(message)
        return self._call("print", message=text[:MAX_TEXT])

    def remoteGetWorkerInfo(self):  # noqa: ANN201
        async def get() -> dict[str, Any]:
            info = await call(self.session.bot, "getWorkerInfo")
            if not isinstance(info, dict):
                raise BadRequest("getWorkerInfo answered something that is not a dict")
            return _bytes_to_str(info)

        return defer.Deferred.fromCoroutine(get())

    def remoteSetBuilderList(self, builders):  # noqa: ANN001,ANN201
        """``builders`` is a list of ``(name, workerbuilddir)``; answers the
        list of builder names the worker now has (PB answers a dict keyed
        by name; the master only iterates over it)."""

        async def set_list() -> list[str]:
            pairs = []
            for item in builders:
                name, builddir = item
                pairs.append([_name(name, "builder name"), str(builddir)])
            names = await call(self.session.bot, "setBuilderList", builders=encode(pairs))
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise BadRequest("setBuilderList answered something that is not a list of names")
            self.builders = names
            return names

        return defer.Deferred.fromCoroutine(set_list())

    def remoteStartCommand(self, remoteCommand, builderName, commandId, commandName, args):  # noqa: ANN001,ANN201,N803
        async def start() -> Any:
            rest = dict(args)
            writer = rest.pop("writer", None)
            reader = rest.pop("reader", None)
            writer_ref = FileWriterAdapter(writer) if writer is not None else None
            reader_ref = FileReaderAdapter(reader) if reader is not None else None
            if writer is None and "writer" in args:
                rest["writer"] = None
            if reader is None and "reader" in args:
                rest["reader"] = None
            try:
                payload = encode(rest)
            except BadRequest:
                raise
            except Exception as e:
                raise BadRequest(
                    f"the arguments of command {commandName!r} cannot be sent: {e}"
                ) from None
            status = CommandStatus(remoteCommand)
            return await call(
                self.session.bot,
                "startCommand",
                _name(builderName, "builder name"),
                _name(commandId, "command id"),
                _name(commandName, "command name"),
                payload,
                status,
                writer_ref,
                reader_ref,
            )

        return defer.Deferred.fromCoroutine(start())

    def remoteShutdown(self):  # noqa: ANN201
        """Ask the worker to shut down; a connection lost meanwhile is success."""

        async def shutdown() -> None:
            try:
                await call(self.session.bot, "shutdown")
            except ConnectionLost:
                pass
            return None

        return defer.Deferred.fromCoroutine(shutdown())

    def remoteStartBuild(self, builderName):  # noqa: ANN001,ANN201,N803
        return self._call("startBuild", _name(builderName, "builder name"))

    def remoteInterruptCommand(self, builderName, commandId, why):  # noqa: ANN001,ANN201,N803
        text = why if isinstance(why, str) else str(why)
        return self._call(
            "interruptCommand",
            _name(builderName, "builder name"),
            _name(commandId, "command id"),
            text[:MAX_TEXT],
        )


# -- command updates ----------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _convert_item(item: Any) -> dict[str, Any]:
    """One ``[key, value]`` pair -> Buildbot's ``{key: value}``, checked."""
    if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str):
        raise BadRequest("an update must be a [key, value] pair with a str key")
    key, value = item
    if key in ("stdout", "stderr", "header"):
        if not isinstance(value, str):
            raise BadRequest(f"update {key!r} must carry text")
    elif key == "log":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, str) for v in value)
        ):
            raise BadRequest("update 'log' must carry [logname, text]")
        value = (value[0], value[1])
    elif key == "rc":
        if value is not None and not isinstance(value, int):
            raise BadRequest("update 'rc' must carry an integer")
    elif key == "elapsed":
        if not _is_number(value) or not math.isfinite(value):
            raise BadRequest("update 'elapsed' must carry a number")
    elif key == "stat":
        # the worker sends tuple(os.stat(...)); steps index it with stat.ST_*
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise BadRequest("update 'stat' must carry a list of numbers")
        value = tuple(value)
    elif key == "files":
        if not isinstance(value, list):
            raise BadRequest("update 'files' must carry a list")
    return {key: value}


def convert_batch(batch: Any) -> list[list[Any]]:
    """A decoded batch -> what Buildbot's ``RemoteCommand.remote_update`` takes."""
    if not isinstance(batch, list):
        raise BadRequest("an update batch must be a list")
    return [[_convert_item(item), 0] for item in batch]


def _check_seq(seq: Any) -> int:
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise BadRequest("a sequence number must be a non-negative integer")
    return seq


@implementer(RICommandStatus)
class CommandStatus(Referenceable):
    """The master side of one running command, as the worker sees it.

    Applies each update batch at most once and in order: a batch whose
    sequence number is not above the highest applied one (a replay after
    a reattach) is acknowledged without being applied again.
    """

    def __init__(self, remote_command: Any) -> None:
        self.remote_command = remote_command
        self.applied = 0
        self.completed = False
        self._lock = defer.DeferredLock()

    @remote_method
    async def remote_update(self, seq: int, batch: bytes) -> int:
        seq = _check_seq(seq)
        if not isinstance(batch, bytes):
            raise BadRequest("an update batch must be bytes")
        updates = convert_batch(decode(batch))
        await self._lock.acquire()
        try:
            if seq <= self.applied or self.completed:
                return self.applied
            # counted before applying: Buildbot's remote_update is not
            # idempotent, so a batch that failed halfway is not tried again
            self.applied = seq
            if updates:
                result = self.remote_command.remote_update(updates)
                if isinstance(result, defer.Deferred):
                    await result
            return self.applied
        finally:
            self._lock.release()

    @remote_method
    async def remote_complete(self, seq: int, failure: bytes) -> int:
        seq = _check_seq(seq)
        if not isinstance(failure, bytes):
            raise BadRequest("a completion must be bytes")
        text = decode(failure)
        if text is not None and not isinstance(text, str):
            raise BadRequest("a command's failure must be text or nil")
        await self._lock.acquire()
        try:
            if self.completed:
                return seq
            self.completed = True
            # Buildbot raises a str failure as-is only on its msgpack path;
            # a Failure works with every RemoteCommand implementation
            why = Failure(RemoteError(text)) if text is not None else None
            result = self.remote_command.remote_complete(why)
            if isinstance(result, defer.Deferred):
                await result
            return seq
        finally:
            self._lock.release()


# -- files --------------------------------------------------------------------


async def _maybe_await(result: Any) -> Any:
    if isinstance(result, defer.Deferred):
        return await result
    return result


@implementer(RIFileWriter)
class FileWriterAdapter(Referenceable):
    """An upload's sink (Buildbot's FileWriterImpl duck type) as a reference.

    Calls reach the wrapped writer one at a time and in arrival order even
    when it answers with Deferreds, since the worker keeps several in flight.
    """

    def __init__(self, impl: Any) -> None:
        self.impl = impl
        self._lock = defer.DeferredLock()

    async def _serial(self, method: str, *args: Any) -> None:
        await self._lock.acquire()
        try:
            await _maybe_await(getattr(self.impl, method)(*args))
        finally:
            self._lock.release()
        return None

    @remote_method
    async def remote_write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise BadRequest("write wants bytes")
        await self._serial("remote_write", data)

    @remote_method
    async def remote_utime(self, times: bytes) -> None:
        t = decode(times) if isinstance(times, bytes) else None
        if (
            not isinstance(t, list)
            or len(t) != 2
            or not all(_is_number(v) and math.isfinite(v) for v in t)
        ):
            raise BadRequest("utime wants [atime, mtime]")
        # Buildbot's FileWriter hands this to os.utime, which wants a tuple
        await self._serial("remote_utime", (t[0], t[1]))

    @remote_method
    async def remote_unpack(self) -> None:
        await self._serial("remote_unpack")

    @remote_method
    async def remote_close(self) -> None:
        await self._serial("remote_close")


@implementer(RIFileReader)
class FileReaderAdapter(Referenceable):
    """A download's source (Buildbot's FileReaderImpl duck type) as a reference."""

    def __init__(self, impl: Any) -> None:
        self.impl = impl
        self._lock = defer.DeferredLock()

    @remote_method
    async def remote_read(self, length: int) -> bytes:
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise BadRequest("read wants a non-negative length")
        length = min(length, MAX_CHUNK)
        await self._lock.acquire()
        try:
            data = await _maybe_await(self.impl.remote_read(length))
        finally:
            self._lock.release()
        if data is None:
            return b""
        if isinstance(data, str):  # Buildbot's FileReader answers '' once closed
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadRequest("the file reader produced something that is not bytes")
        data = bytes(data)
        if len(data) > MAX_CHUNK:
            raise BadRequest("the file reader returned more than it was asked for")
        return data

    @remote_method
    async def remote_close(self) -> None:
        await self._lock.acquire()
        try:
            await _maybe_await(self.impl.remote_close())
        finally:
            self._lock.release()
        return None
