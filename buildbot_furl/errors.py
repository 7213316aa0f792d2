"""Typed errors, and how they cross the wire.

Every remote method answers with an envelope: ``["ok", value]`` or
``["error", class_name, {str: str}]``.  The caller raises the matching
local exception class again; a name it does not know becomes
:class:`RemoteError`.  Nothing else of a remote exception (its traceback,
its repr) ever crosses the wire.
"""

from __future__ import annotations

from typing import Any


class FurlError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(FurlError):
    """Bad local input: a file, a name, an option.  Its text is for the admin."""


class Interrupted(FurlError):
    """The admin stopped a command (Ctrl-C) before it was done."""


class LocalFileError(FurlError):
    """A file on the admin's side could not be written (a full disk, ...)."""


class WireError(FurlError):
    """An error that may cross the wire: a message plus string fields."""

    def __init__(self, message: str = "", /, **fields: str) -> None:  # a field may be "self"
        super().__init__(message)
        self.message = message
        self.fields = {k: str(v) for k, v in fields.items()}

    def __str__(self) -> str:
        return self.message or self.__class__.__name__

    def to_wire(self) -> list[Any]:
        return ["error", type(self).__name__, {"message": self.message, **self.fields}]


class RemoteError(WireError):
    """The peer failed with an error we do not know by name."""


class IncompatibleProtocol(WireError):
    """No protocol version is spoken by both sides."""


class Revoked(WireError):
    """This worker's FURL is no longer listed in workers.furls."""


class UnknownWorker(WireError):
    """No worker by that name."""


class WorkerNotConnected(WireError):
    """The worker exists but is not attached now."""


class DuplicateWorker(WireError):
    """Another process is attached with this worker's FURL and still answers."""


class BadRequest(WireError):
    """The request was malformed or out of bounds."""


class PathRefused(WireError):
    """A path would escape the directory it is confined to."""


class PolicyRefused(WireError):
    """The worker's own policy file does not allow what the master asked."""

    #: the part of the policy it was refused under (worker/policy.py's RULES),
    #: for the worker's metrics; it stays on the worker (not a wire field)
    rule: str = "other"

    def under(self, rule: str) -> PolicyRefused:
        """This refusal, marked as made under ``rule``."""
        self.rule = rule
        return self


class ConnectionLost(WireError):
    """The connection dropped before the answer arrived."""


class CommandFailed(WireError):
    """A remote command could not be started or failed inside the worker."""


class CommandNotFound(WireError):
    """The program to run does not exist on the worker (a shell's 127)."""


class CommandNotExecutable(WireError):
    """The program exists on the worker but cannot be run (a shell's 126)."""


class WorkerDraining(WireError):
    """The worker is draining (a graceful stop): it takes no new commands."""


WIRE_ERRORS: dict[str, type[WireError]] = {
    cls.__name__: cls
    for cls in (
        RemoteError,
        IncompatibleProtocol,
        Revoked,
        UnknownWorker,
        WorkerNotConnected,
        DuplicateWorker,
        BadRequest,
        PathRefused,
        PolicyRefused,
        ConnectionLost,
        CommandFailed,
        CommandNotFound,
        CommandNotExecutable,
        WorkerDraining,
    )
}


def from_wire(name: str, fields: dict[str, str]) -> WireError:
    """Rebuild the local exception for an ``["error", name, fields]`` envelope."""
    cls = WIRE_ERRORS.get(name, RemoteError)
    fields = {str(k): str(v) for k, v in dict(fields).items()}
    message = fields.pop("message", "")
    if cls is RemoteError and name != "RemoteError":
        fields["remote_class"] = name
        message = f"{name}: {message}" if message else name
    return cls(message, **fields)
