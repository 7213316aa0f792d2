"""Answers as envelopes, and calls that raise our typed errors.

Every remote method answers ``["ok", value]`` or ``["error", class_name,
{str: str}]``; the caller raises the matching local exception class again
(:mod:`buildbot_furl.errors`).  Nothing else of a remote exception (its
traceback, its repr) ever crosses the wire.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import msgpack
from foolscap.ipb import DeadReferenceError
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
from buildbot_furl.protocol.interfaces import MAX_PAYLOAD

log = Logger()


def encode(value: Any) -> bytes:
    """msgpack-encode a value (tuples become lists)."""
    data = msgpack.packb(value, use_bin_type=True)
    if len(data) > MAX_PAYLOAD:
        raise BadRequest(f"payload too large ({len(data)} bytes, at most {MAX_PAYLOAD})")
    return data


def decode(data: bytes, limit: int | None = None) -> Any:
    """Decode a payload; malformed input raises BadRequest.

    ``limit`` bounds the payload's size for a kind of message that is small by
    nature, *before* decoding: decoded, msgpack can weigh some 70 times its size
    (a 4 MiB payload of empty arrays becomes 300 MB of lists, and a second of
    the reactor), so the check must come first."""
    if limit is not None and len(data) > limit:
        raise BadRequest(f"payload too large for its kind ({len(data)} bytes, at most "
                         f"{limit})")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        raise BadRequest("undecodable payload") from None


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
