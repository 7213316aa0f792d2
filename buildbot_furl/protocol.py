"""The wire protocol: remote interfaces, size bounds, versions, envelopes.

Structured values travel as msgpack bytes with a hard size cap (so every
argument of every remote method is bounded before it is decoded); object
references travel as foolscap references constrained to the interface
they must provide.  See docs/protocol.md.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import msgpack
from foolscap.api import RemoteInterface
from foolscap.constraint import ByteStringConstraint, IntegerConstraint
from foolscap.ipb import DeadReferenceError
from foolscap.schema import ChoiceOf, Nothing
from foolscap.slicers.unicode import UnicodeConstraint
from foolscap.tokens import RemoteException, Violation
from twisted.internet import defer
from twisted.internet import error as terror
from twisted.logger import Logger
from twisted.python.failure import Failure

from buildbot_furl.errors import (
    BadRequest,
    ConnectionLost,
    RemoteError,
    WireError,
    from_wire,
)

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)

MAX_PAYLOAD = 4 * 1024 * 1024 + 64 * 1024
MAX_CHUNK = 1024 * 1024
Payload = ByteStringConstraint(maxLength=MAX_PAYLOAD)
Chunk = ByteStringConstraint(maxLength=MAX_CHUNK)
Name = UnicodeConstraint(maxLength=200)
Text = UnicodeConstraint(maxLength=64 * 1024)
Seq = IntegerConstraint(maxBytes=8)

log = Logger()

#: the worker's confined transfer commands for standalone put/get (beside
#: buildbot-worker's own commands; see buildbot_furl.worker.transfers)
PUT_COMMAND = "furl.put"
GET_COMMAND = "furl.get"


def encode(value: Any) -> bytes:
    """msgpack-encode a value (tuples become lists)."""
    data = msgpack.packb(value, use_bin_type=True)
    if len(data) > MAX_PAYLOAD:
        raise BadRequest(f"payload too large ({len(data)} bytes, at most {MAX_PAYLOAD})")
    return data


def decode(data: bytes) -> Any:
    """Decode a payload; malformed input raises BadRequest."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        raise BadRequest("undecodable payload") from None


# -- remote interfaces --------------------------------------------------------


class RIFileWriter(RemoteInterface):
    """Master side of an upload (worker -> master)."""

    __remote_name__ = "buildbot_furl.RIFileWriter.v1"

    def write(data=Chunk):
        return Payload

    def utime(times=Payload):
        return Payload

    def unpack():
        return Payload

    def close():
        return Payload


class RIFileReader(RemoteInterface):
    """Master side of a download (master -> worker)."""

    __remote_name__ = "buildbot_furl.RIFileReader.v1"

    def read(length=Seq):
        return Payload

    def close():
        return Payload


class RICommandStatus(RemoteInterface):
    """Master side of one running command: receives its updates."""

    __remote_name__ = "buildbot_furl.RICommandStatus.v1"

    def update(seq=Seq, batch=Payload):
        """Apply a batch of updates; answers the highest seq applied."""
        return Payload

    def complete(seq=Seq, failure=Payload):
        return Payload


class RIWorkerBot(RemoteInterface):
    """Worker side: Buildbot's master/worker API, driven by the master."""

    __remote_name__ = "buildbot_furl.RIWorkerBot.v1"

    def print(message=Text):
        return Payload

    def ping():
        return Payload

    def getWorkerInfo():
        return Payload

    def setBuilderList(builders=Payload):
        return Payload

    def startBuild(builder=Name):
        return Payload

    def startCommand(
        builder=Name,
        command_id=Name,
        command=Name,
        args=Payload,
        status=RICommandStatus,
        writer=ChoiceOf(Nothing(), RIFileWriter),
        reader=ChoiceOf(Nothing(), RIFileReader),
    ):
        return Payload

    def interruptCommand(builder=Name, command_id=Name, why=Text):
        return Payload

    def shutdown():
        return Payload


class RIWorkerLogin(RemoteInterface):
    """Master side, one per worker, published at that worker's FURL."""

    __remote_name__ = "buildbot_furl.RIWorkerLogin.v1"

    def attach(bot=RIWorkerBot, info=Payload):
        return Payload


class RIOutput(RemoteInterface):
    """The admin CLI's side of a standalone run: receives output."""

    __remote_name__ = "buildbot_furl.RIOutput.v1"

    def output(batch=Payload):
        return Payload


class RIAdmin(RemoteInterface):
    """Master side, published at private/admin.furl for the CLI."""

    __remote_name__ = "buildbot_furl.RIAdmin.v1"

    def status():
        return Payload

    def listWorkers():
        return Payload

    def run(worker=Name, request=Payload, out=RIOutput):
        return Payload

    def interrupt(run_id=Name):
        return Payload

    def put(worker=Name, request=Payload, source=RIFileReader):
        return Payload

    def get(worker=Name, request=Payload, sink=RIFileWriter):
        return Payload


# -- envelopes ----------------------------------------------------------------


def _error_envelope(f: Failure, where: str) -> bytes:
    if f.check(WireError):
        return encode(f.value.to_wire())
    log.failure("unexpected error in remote method {where}", f, where=where)
    text = f"{f.type.__name__}: {f.value}"[:500] if f.type else "unexpected error"
    return encode(["error", "RemoteError", {"message": f"{where} failed: {text}"}])


def remote_method(fn: Callable[..., Any]) -> Callable[..., defer.Deferred[bytes]]:
    """Wrap a ``remote_*`` method so it answers with an ok/error envelope."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> defer.Deferred[bytes]:
        try:
            result = fn(self, *args, **kwargs)
            if inspect.iscoroutine(result):
                result = defer.Deferred.fromCoroutine(result)
            d = defer.maybeDeferred(lambda: result)
        except BaseException:
            d = defer.fail(Failure())
        d.addCallbacks(
            lambda value: encode(["ok", value]),
            _error_envelope,
            errbackArgs=(fn.__name__.removeprefix("remote_"),),
        )
        return d

    return wrapper


def unwrap(raw: bytes) -> Any:
    """Turn an envelope into its value, or raise its error locally."""
    msg = decode(raw)
    if isinstance(msg, list) and len(msg) == 2 and msg[0] == "ok":
        return msg[1]
    if (
        isinstance(msg, list)
        and len(msg) == 3
        and msg[0] == "error"
        and isinstance(msg[1], str)
        and isinstance(msg[2], dict)
    ):
        raise from_wire(msg[1], msg[2])
    raise BadRequest("malformed answer from the peer")


LOST = (
    DeadReferenceError,
    terror.ConnectionDone,
    terror.ConnectionLost,
    terror.ConnectionRefusedError,
)


async def call(rref: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """callRemote that raises our typed errors, never foolscap's."""
    try:
        raw = await rref.callRemote(method, *args, **kwargs)
    except LOST as e:
        raise ConnectionLost(f"connection lost during {method}") from e
    except Violation as e:
        raise BadRequest(f"{method}: the call is out of the protocol's bounds") from e
    except RemoteException:
        # only constraint violations and foolscap-internal faults get here:
        # our own methods always answer with an envelope
        raise RemoteError(f"{method}: the peer rejected the call") from None
    return unwrap(raw)
