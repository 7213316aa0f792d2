"""The worker's state file (DIR/furl-worker.state): what the daemon says of
its link for ``furl-worker status``, ``set-furl`` and ``stop --graceful``.

The daemon writes it and the CLI reads it only through :class:`WorkerStatus`;
its states, graceful-stop values and FURL-switch results are defined here,
once.  It holds no secret: the master's address, never the FURL.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from typing import Any

from buildbot_furl.errors import FurlError

#: what a state file may weigh (a few hundred bytes in practice)
MAX_SIZE = 64 * 1024


class StateFileError(FurlError):
    """The state file cannot be read, or is not one this worker writes."""


class Attachment(enum.Enum):
    """The link, as the state file says it."""

    CONNECTING = "connecting"  # dialing, attaching, or waiting to dial again
    ATTACHED = "attached"


class Drain(enum.Enum):
    """A graceful stop; the value is what the state file says."""

    NONE = None
    ASKED = "asked"  # not yet told to a master
    ACCEPTED = "accepted"
    UNSUPPORTED = "unsupported"  # the master cannot drain


class SwitchResult(enum.Enum):
    """Where a new FURL (``furl-worker set-furl``) got to."""

    TRYING = "trying"
    ATTACHED = "attached"  # attached with it, and stored in master.furl
    FAILED = "failed"  # given up: the previous FURL is used again
    SAME = "same"  # the FURL in use already, not attached now

    @property
    def final(self) -> bool:
        return self is not SwitchResult.TRYING


@dataclasses.dataclass(frozen=True)
class Switch:
    """The last FURL set-furl asked for (by its id, never the FURL)."""

    furl_id: str
    result: SwitchResult
    error: str | None = None

    def to_value(self) -> dict[str, Any]:
        return {"furl_id": self.furl_id, "result": self.result.value, "error": self.error}

    @classmethod
    def from_value(cls, value: Any) -> Switch:
        if not isinstance(value, dict):
            raise StateFileError("'switch' is not a map")
        return cls(_text(value, "furl_id"), _enum(SwitchResult, value, "result"),
                   _text(value, "error", optional=True))


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    """One write of the state file."""

    state: Attachment
    since: float  # when ``state`` and ``last_error`` last changed (time.time())
    pid: int  # the daemon's
    master: str  # the master's address (the FURL's hints)
    last_error: str | None
    furl_id: str  # which FURL is in use (see worker.config.furl_id)
    drain: Drain = Drain.NONE
    switch: Switch | None = None
    name: str = ""  # as the master knows this worker ("" until it says)

    @property
    def attached(self) -> bool:
        return self.state is Attachment.ATTACHED

    def to_json(self) -> str:
        return json.dumps({
            "state": self.state.value, "since": self.since, "pid": self.pid,
            "master": self.master, "last_error": self.last_error, "furl_id": self.furl_id,
            "drain": self.drain.value,
            "switch": None if self.switch is None else self.switch.to_value(),
            "name": self.name}) + "\n"

    @classmethod
    def from_json(cls, text: str) -> WorkerStatus:
        """Parse one state file; StateFileError for a damaged or foreign one."""
        try:
            v = json.loads(text)
        except ValueError:
            raise StateFileError("not JSON") from None
        if not isinstance(v, dict):
            raise StateFileError("not a map")
        state = _enum(Attachment, v, "state")
        since, pid = v.get("since"), v.get("pid")
        if isinstance(since, bool) or not isinstance(since, (int, float)) \
                or not math.isfinite(since):
            raise StateFileError("'since' is not a time")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise StateFileError("'pid' is not a process id")
        switch = v.get("switch")
        name = v.get("name", "")  # absent: a daemon older than the attach answer's name
        if not isinstance(name, str):
            raise StateFileError("'name' is not text")
        return cls(state, float(since), pid, _text(v, "master"),
                   _text(v, "last_error", optional=True), _text(v, "furl_id"),
                   _enum(Drain, v, "drain"),
                   None if switch is None else Switch.from_value(switch), name)


def read(path: str) -> WorkerStatus | None:
    """The state file at ``path``; None when there is none (no worker ran
    here yet); StateFileError (naming the file) when it is damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_SIZE + 1)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as e:
        raise StateFileError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    if len(text) > MAX_SIZE:
        raise StateFileError(f"{path} is not a worker's state file: larger than {MAX_SIZE} "
                             "bytes")
    try:
        return WorkerStatus.from_json(text)
    except StateFileError as e:
        raise StateFileError(f"{path} is damaged or not a worker's state file: {e}") from None


def _text(value: dict[str, Any], key: str, optional: bool = False) -> Any:
    v = value.get(key)
    if isinstance(v, str) or (optional and v is None):
        return v
    raise StateFileError(f"{key!r} is {'missing' if key not in value else 'not text'}")


def _enum(cls: type[enum.Enum], value: dict[str, Any], key: str) -> Any:
    if key not in value:
        raise StateFileError(f"{key!r} is missing")
    try:
        return cls(value[key])
    except (ValueError, TypeError):
        raise StateFileError(f"{key!r} is not one of "
                             f"{', '.join(json.dumps(m.value) for m in cls)}") from None
