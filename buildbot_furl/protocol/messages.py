"""The shape of every structured message, defined once for both ends.

Each sender builds its message with a function (or dataclass) here and
each receiver takes it apart with the matching one, which checks every
field and raises :class:`~buildbot_furl.errors.BadRequest` for anything
out of shape.  The foolscap constraints in :mod:`.interfaces` have already
bounded the sizes by then.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from buildbot_furl.errors import WIRE_ERRORS, BadRequest, CommandFailed, ConfigError, WireError
from buildbot_furl.protocol.envelope import decode, encode
from buildbot_furl.protocol.interfaces import MAX_NAME, MAX_TEXT

DIGEST_RE = re.compile(r"[0-9a-f]{64}")
RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TEXT_KEYS = ("stdout", "stderr", "header")
#: the most an attach's info or a session proof may weigh, checked before decoding
SMALL_PAYLOAD = 64 * 1024


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _map(raw: bytes, what: str) -> dict[str, Any]:
    value = decode(raw)
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a map")
    return value


# -- names and texts passed as call arguments -------------------------------------


def name_arg(value: Any, what: str) -> str:
    """A builder name, command id, ... as the ``Name`` constraint allows it."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_NAME:
        raise BadRequest(f"{what} is longer than {MAX_NAME} characters")
    return text


def text_arg(value: Any) -> str:
    """A free text (a message, a reason), cut to what ``Text`` allows."""
    return (value if isinstance(value, str) else str(value))[:MAX_TEXT]


# -- command updates: worker -> master (RICommandStatus) --------------------------


def update_items(message: list[tuple[str, Any]]) -> list[list[Any]]:
    """buildbot-worker's BufferManager messages -> the wire's ``[key, value]``
    pairs (as Buildbot's steps see them, less the tuples msgpack cannot keep)."""
    items: list[list[Any]] = []
    for key, value in message:
        if key in TEXT_KEYS:
            items.append([key, value[0]])
        elif key == "log":
            logname, data = value
            items.append([key, [logname, data[0]]])
        else:
            items.append([key, value])
    return items


def items_size(items: list[list[Any]]) -> int:
    """About how many bytes a batch of items takes (for batching and windows)."""
    n = 16
    for _key, value in items:
        if isinstance(value, str):
            n += len(value)
        elif isinstance(value, list) and value and isinstance(value[-1], str):
            n += len(value[-1])
        else:
            n += 64
    return n


def _update(item: Any) -> dict[str, Any]:
    """One wire item -> Buildbot's ``{key: value}``, checked."""
    if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str):
        raise BadRequest("an update must be a [key, value] pair with a str key")
    key, value = item
    if key in TEXT_KEYS:
        if not isinstance(value, str):
            raise BadRequest(f"update {key!r} must carry text")
    elif key == "log":
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, str) for v in value)):
            raise BadRequest("update 'log' must carry [logname, text]")
        value = (value[0], value[1])
    elif key == "rc":
        if value is not None and not _is_int(value):
            raise BadRequest("update 'rc' must carry an integer")
    elif key == "elapsed":
        if not _is_number(value):
            raise BadRequest("update 'elapsed' must carry a number")
    elif key == "stat":
        # the worker sends tuple(os.stat(...)); steps index it with stat.ST_*
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise BadRequest("update 'stat' must carry a list of numbers")
        value = tuple(value)
    elif key == "files" and not isinstance(value, list):
        raise BadRequest("update 'files' must carry a list")
    return {key: value}


def encode_updates(items: list[list[Any]]) -> bytes:
    return encode(items)


def decode_updates(raw: Any) -> list[dict[str, Any]]:
    """A batch from the wire -> a list of Buildbot's ``{key: value}`` updates."""
    if not isinstance(raw, bytes):
        raise BadRequest("an update batch must be bytes")
    batch = decode(raw)
    if not isinstance(batch, list):
        raise BadRequest("an update batch must be a list")
    return [_update(item) for item in batch]


def check_seq(seq: Any) -> int:
    if not _is_int(seq) or seq < 0:
        raise BadRequest("a sequence number must be a non-negative integer")
    return seq


def encode_failure(text: str | None) -> bytes:
    """A command's failure (None: it did not fail), as ``complete`` sends it."""
    return encode(text)


def decode_failure(raw: Any) -> str | None:
    if not isinstance(raw, bytes):
        raise BadRequest("a completion must be bytes")
    text = decode(raw)
    if text is not None and not isinstance(text, str):
        raise BadRequest("a command's failure must be text or nil")
    return text


# -- master -> worker: builders, command arguments, file times ---------------------


@dataclasses.dataclass(frozen=True)
class BuilderList:
    """The builders a master wants on a worker: ``(name, builddir)`` pairs
    (``setBuilderList``).  The worker answers with :func:`builder_names`."""

    pairs: tuple[tuple[str, str], ...]

    def to_wire(self) -> bytes:
        return encode([[name, builddir] for name, builddir in self.pairs])

    @classmethod
    def from_wire(cls, raw: Any) -> BuilderList:
        value = decode(raw) if isinstance(raw, bytes) else None
        if not isinstance(value, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(y, str) for y in x)
            for x in value
        ):
            raise BadRequest("setBuilderList wants a list of [name, builddir] pairs")
        return cls(tuple((name, builddir) for name, builddir in value))


def builder_names(value: Any) -> list[str]:
    """The worker's answer to ``setBuilderList``: the names it now has."""
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise BadRequest("setBuilderList answered something that is not a list of names")
    return value


#: the arguments that travel as references beside a command's arguments, not in them
COMMAND_REFS = ("writer", "reader")


@dataclasses.dataclass(frozen=True)
class CommandArgs:
    """A Buildbot command's arguments (``startCommand``).  The file
    transfer's ``writer``/``reader`` objects travel as separate call
    arguments; ``refs`` names those the master gave as None, so that the
    command sees the same keys as over PB."""

    args: dict[str, Any]
    refs: tuple[str, ...] = ()

    @classmethod
    def split(cls, args: dict[str, Any]) -> tuple[CommandArgs, dict[str, Any]]:
        """``args`` as Buildbot gives them -> (what is encoded, the references)."""
        rest = {k: v for k, v in args.items() if k not in COMMAND_REFS}
        refs = {k: args[k] for k in COMMAND_REFS if args.get(k) is not None}
        nones = tuple(k for k in COMMAND_REFS if k in args and args[k] is None)
        return cls(rest, nones), refs

    def to_wire(self) -> bytes:
        """Raises BadRequest when an argument cannot be encoded."""
        try:
            return encode({**self.args, **{k: None for k in self.refs}})
        except BadRequest:
            raise
        except Exception as e:
            raise BadRequest(f"the arguments cannot be sent: {e}") from None

    @classmethod
    def from_wire(cls, raw: Any) -> CommandArgs:
        value = decode(raw) if isinstance(raw, bytes) else None
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise BadRequest("command args must be a map of names")
        refs = tuple(k for k in COMMAND_REFS if k in value)
        if any(value[k] is not None for k in refs):
            raise BadRequest("a command's writer and reader travel beside its arguments")
        return cls({k: v for k, v in value.items() if k not in COMMAND_REFS}, refs)

    def with_refs(self, refs: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the command wants them, references included."""
        out = dict(self.args)
        for k in self.refs:
            out[k] = None
        for k in COMMAND_REFS:
            if refs.get(k) is not None:
                out[k] = refs[k]
        return out


@dataclasses.dataclass(frozen=True)
class FileTimes:
    """An uploaded file's access and modification times (``utime``)."""

    accessed: float
    modified: float

    def to_wire(self) -> bytes:
        return encode([self.accessed, self.modified])

    @classmethod
    def from_wire(cls, raw: Any) -> FileTimes:
        t = decode(raw) if isinstance(raw, bytes) else None
        if not isinstance(t, list) or len(t) != 2 or not all(_is_number(v) for v in t):
            raise BadRequest("utime wants [atime, mtime]")
        return cls(t[0], t[1])


# -- the confined transfer commands' answers (as updates) --------------------------

TRANSFER_RESULT = "furl"
TRANSFER_ERROR = "furl_error"


def transfer_error(error: WireError) -> dict[str, str]:
    return {"class": type(error).__name__, "message": str(error)}


def raise_transfer_error(value: Any, worker: str) -> None:
    """Raise the typed error a transfer command reported, if it did."""
    if isinstance(value, dict):
        cls = WIRE_ERRORS.get(str(value.get("class")), CommandFailed)
        raise cls(f"worker {worker!r}: {str(value.get('message', 'failed'))[:MAX_TEXT]}")


# -- attach ---------------------------------------------------------------------------


SESSION_ID_RE = re.compile(r"[0-9a-f]{32}")
SESSION_SECRET_RE = re.compile(r"[0-9a-f]{64}")
WORKER_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclasses.dataclass(frozen=True)
class SessionProof:
    """A session's id and the secret that proves it: what a worker presents
    to resume its session (in its attach), to leave, and to ask for a
    graceful stop.  Checked when it is made, so a proof in hand is well
    formed; its repr never shows the secret."""

    session: str
    secret: str

    def __post_init__(self) -> None:
        if not (isinstance(self.session, str) and SESSION_ID_RE.fullmatch(self.session)
                and isinstance(self.secret, str) and SESSION_SECRET_RE.fullmatch(self.secret)):
            raise BadRequest("malformed session proof")

    def __repr__(self) -> str:
        return f"SessionProof(session={self.session!r})"

    def to_value(self) -> dict[str, str]:
        """The proof as a map inside another message (an attach's ``resume``)."""
        return {"session": self.session, "secret": self.secret}

    @classmethod
    def from_value(cls, value: Any) -> SessionProof:
        if not isinstance(value, dict):
            raise BadRequest("a session proof must be a map")
        return cls(value.get("session"), value.get("secret"))  # type: ignore[arg-type]

    def to_wire(self) -> bytes:
        """The proof on its own, as ``leave`` and ``drain`` send it."""
        return encode(self.to_value())

    @classmethod
    def from_wire(cls, raw: bytes) -> SessionProof:
        return cls.from_value(decode(raw, SMALL_PAYLOAD))


@dataclasses.dataclass(frozen=True)
class AttachInfo:
    """What a worker says about itself when it attaches; ``resume`` is the
    session it still has, if any, so the master can rebind it."""

    protocols: tuple[int, ...]
    version: str
    worker_info: dict[str, Any]
    resume: SessionProof | None = None

    def __repr__(self) -> str:  # the session secret is never shown
        return f"AttachInfo(version={self.version!r}, resume={self.resume is not None})"

    def to_wire(self) -> bytes:
        value: dict[str, Any] = {"protocols": list(self.protocols), "version": self.version,
                                 "worker_info": self.worker_info}
        if self.resume is not None:
            value["resume"] = self.resume.to_value()
        return encode(value)

    @classmethod
    def from_wire(cls, raw: bytes) -> AttachInfo:
        info = decode(raw, SMALL_PAYLOAD)
        if not isinstance(info, dict):
            raise BadRequest("an attach's info must be a map")
        protocols = info.get("protocols")
        if not isinstance(protocols, list) or not all(_is_int(p) for p in protocols):
            raise BadRequest("an attach names its protocol versions as a list of integers")
        version = info.get("version")
        if not isinstance(version, str):
            raise BadRequest("an attach names the worker's version as text")
        wi = info.get("worker_info")
        if not isinstance(wi, dict) or not all(isinstance(k, str) for k in wi):
            raise BadRequest("an attach's worker_info must be a map with text keys")
        r = info.get("resume")
        return cls(tuple(protocols), version[:40], wi,
                   None if r is None else SessionProof.from_value(r))


@dataclasses.dataclass(frozen=True)
class AttachAnswer:
    """The master's answer to attach: the protocol, the session (its id and
    the secret that proves it on a reattach), the grace period, and whether
    the worker's previous session was resumed, with the commands it still
    runs for the master."""

    protocol: int
    session: str
    secret: str
    grace: float
    master_version: str
    resumed: bool = False
    commands: tuple[str, ...] = ()
    #: the name the master knows this worker by ("" from an older master)
    name: str = ""

    def __repr__(self) -> str:
        return (f"AttachAnswer(protocol={self.protocol}, resumed={self.resumed}, "
                f"grace={self.grace})")

    @property
    def proof(self) -> SessionProof:
        """What proves the session this answer hands out."""
        return SessionProof(self.session, self.secret)

    def to_wire(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "session": self.session, "secret": self.secret,
                "grace": self.grace, "master_version": self.master_version,
                "resumed": self.resumed, "commands": list(self.commands), "name": self.name}

    @classmethod
    def from_wire(cls, value: Any) -> AttachAnswer:
        if not isinstance(value, dict):
            raise BadRequest("malformed attach answer")
        try:
            proof = SessionProof.from_value(value)
        except BadRequest:
            raise BadRequest("the attach answer has no valid session") from None
        protocol, grace = value.get("protocol"), value.get("grace")
        if not _is_int(protocol):
            raise BadRequest("the attach answer names no protocol version")
        if not _is_number(grace) or grace < 0:
            raise BadRequest("the attach answer's grace must be a non-negative number")
        version = value.get("master_version")
        if not isinstance(version, str):
            raise BadRequest("the attach answer names the master's version as text")
        # the fields a master added later: absent means the default, garbage is refused
        resumed, commands, name = (value.get("resumed", False), value.get("commands", []),
                                   value.get("name", ""))
        if not isinstance(resumed, bool):
            raise BadRequest("the attach answer's 'resumed' must be true or false")
        if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
            raise BadRequest("the attach answer's commands must be a list of ids")
        if not isinstance(name, str) or not (name == "" or WORKER_NAME_RE.fullmatch(name)):
            raise BadRequest("the attach answer names the worker with a name workers.furls "
                             "cannot hold")
        return cls(protocol, proof.session, proof.secret, float(grace), version[:40],
                   resumed, tuple(commands), name)


@dataclasses.dataclass(frozen=True)
class DrainAnswer:
    """The master's answer to a worker's ``drain``: how many commands (or
    builds) still run on it."""

    running: int

    def to_wire(self) -> dict[str, Any]:
        return {"running": self.running}

    @classmethod
    def from_wire(cls, value: Any) -> DrainAnswer:
        running = value.get("running") if isinstance(value, dict) else None
        if not _is_int(running) or running < 0:
            raise BadRequest("a drain answer says how many commands run, as an integer")
        return cls(running)


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """How far the master got with a command when its worker reattached:
    the highest update batch applied, whether its completion was applied,
    the bytes of an upload written, the bytes of a download sent."""

    applied: int = 0
    completed: bool = False
    written: int = 0
    read: int = 0

    def to_wire(self) -> bytes:
        return encode(dataclasses.asdict(self))

    @classmethod
    def from_wire(cls, raw: bytes) -> ResumeState:
        v = _map(raw, "a resume state")
        ints = {k: v.get(k, 0) for k in ("applied", "written", "read")}
        if not all(_is_int(x) and x >= 0 for x in ints.values()):
            raise BadRequest("a resume state wants non-negative integers")
        completed = v.get("completed", False)
        if not isinstance(completed, bool):
            raise BadRequest("a resume state's 'completed' must be true or false")
        return cls(ints["applied"], completed, ints["written"], ints["read"])


#: what a worker answers to resumeCommand
RESUMED = "resumed"
UNKNOWN_COMMAND = "unknown"


# -- admin: run -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunRequest:
    argv: list[str]
    run_id: str
    workdir: str = "."
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    timeout: float | None = None

    def to_wire(self) -> bytes:
        return encode(dataclasses.asdict(self))

    @classmethod
    def from_wire(cls, raw: bytes) -> RunRequest:
        req = _map(raw, "a run request")
        argv = req.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequest("run wants a non-empty argument list")
        env = req.get("env", {})
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise BadRequest("env must map names to strings")
        timeout = req.get("timeout")
        if timeout is not None and (not _is_number(timeout) or timeout <= 0):
            raise BadRequest("timeout must be a positive number of seconds")
        workdir = req.get("workdir", ".")
        if not isinstance(workdir, str) or not workdir:
            raise BadRequest("workdir must be a string")
        run_id = req.get("run_id")
        if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
            raise BadRequest("invalid run id")
        return cls(argv, run_id, workdir, env, timeout)


@dataclasses.dataclass(frozen=True)
class RunAnswer:
    rc: int
    signal: int | None = None
    failure_reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> RunAnswer:
        if not isinstance(value, dict):
            raise BadRequest("malformed run answer")
        rc, sig, why = value.get("rc"), value.get("signal"), value.get("failure_reason")
        if not _is_int(rc):
            raise BadRequest("a run answer's exit code must be an integer")
        if sig is not None and not _is_int(sig):
            raise BadRequest("a run answer's signal must be an integer or nil")
        if why is not None and not isinstance(why, str):
            raise BadRequest("a run answer's failure reason must be text or nil")
        return cls(rc, sig, why)


#: an output item that is not the command's but the master's, for the admin
#: (e.g. that the worker's connection was lost and is waited for)
NOTICE = "notice"


def encode_output(items: list[list[str]]) -> bytes:
    """A run's output for the CLI: ``[[stream, text], ...]``; stream is
    stdout, stderr, header or :data:`NOTICE`."""
    return encode(items)


def decode_output(raw: bytes) -> list[tuple[str, str]]:
    items = decode(raw)
    if not isinstance(items, list) or not all(
            isinstance(item, list) and len(item) == 2
            and isinstance(item[0], str) and isinstance(item[1], str) for item in items):
        raise BadRequest("output wants a list of [stream, text] pairs")
    return [(item[0], item[1]) for item in items]


# -- admin: put and get -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PutRequest:
    remote: str
    kind: str  # "file" or "dir"
    sha256: str  # of the bytes sent (a tar stream for "dir")
    manifest: str | None = None  # of the tree, for "dir"
    mode: int | None = None

    def to_wire(self) -> bytes:
        return encode(dataclasses.asdict(self))

    @classmethod
    def from_wire(cls, raw: bytes) -> PutRequest:
        return cls._from_map(_map(raw, "a put request"))

    def command_args(self, path: str, reader: Any) -> dict[str, Any]:
        """The worker's put command's arguments: this request, landing at
        ``path`` (made relative to the worker's directory), read through ``reader``."""
        fields = dataclasses.asdict(self)
        del fields["remote"]
        return {"path": path, "reader": reader, **fields}

    @classmethod
    def from_command_args(cls, args: dict[str, Any]) -> PutRequest:
        """The request a put command was started with (its ``path`` as ``remote``)."""
        fields = {k: v for k, v in args.items() if k not in ("path", "reader")}
        return cls._from_map({**fields, "remote": args.get("path")})

    @classmethod
    def _from_map(cls, req: dict[str, Any]) -> PutRequest:
        remote, kind, sha = req.get("remote"), req.get("kind", "file"), req.get("sha256")
        if not isinstance(remote, str):
            raise BadRequest("put wants a remote path")
        if kind not in ("file", "dir") or not isinstance(sha, str) or not DIGEST_RE.fullmatch(sha):
            raise BadRequest("put wants kind 'file' or 'dir' and the sha256 of what is sent")
        manifest = req.get("manifest")
        if kind == "dir" and not (isinstance(manifest, str) and DIGEST_RE.fullmatch(manifest)):
            raise BadRequest("a directory put wants the tree's manifest digest")
        mode = req.get("mode") if kind == "file" else None
        if mode is not None and (not _is_int(mode) or not 0 <= mode <= 0o7777):
            raise BadRequest("mode must be a permission number")
        return cls(remote, kind, sha, manifest if kind == "dir" else None, mode)


@dataclasses.dataclass(frozen=True)
class GetRequest:
    remote: str

    def to_wire(self) -> bytes:
        return encode(dataclasses.asdict(self))

    @classmethod
    def from_wire(cls, raw: bytes) -> GetRequest:
        req = _map(raw, "a get request")
        if not isinstance(req.get("remote"), str):
            raise BadRequest("get wants a remote path")
        return cls(req["remote"])


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What a get (or a put) answers about what moved."""

    kind: str
    sha256: str
    size: int | None = None
    mode: int | None = None
    manifest: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> FileInfo:
        if not isinstance(value, dict):
            raise BadRequest("malformed transfer answer")
        kind, sha = value.get("kind"), value.get("sha256")
        if kind not in ("file", "dir") or not isinstance(sha, str) or not DIGEST_RE.fullmatch(sha):
            raise BadRequest("incomplete transfer answer")
        size, mode, manifest = value.get("size"), value.get("mode"), value.get("manifest")
        if size is not None and not (_is_int(size) and size >= 0):
            raise BadRequest("a transfer answer's size must be a non-negative integer")
        if mode is not None and not (_is_int(mode) and 0 <= mode <= 0o7777):
            raise BadRequest("a transfer answer's mode must be a permission number")
        if manifest is not None and not (isinstance(manifest, str)
                                         and DIGEST_RE.fullmatch(manifest)):
            raise BadRequest("a transfer answer's manifest must be a digest")
        return cls(kind, sha, size, mode, manifest)



# -- admin answers: master -> admin CLI (status, list-workers, drain, put) ----------------

_MISSING = object()
_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "float": _is_number,
    "bool": lambda v: isinstance(v, bool),
}


def _fields(cls: Any, value: Any, what: str) -> dict[str, Any]:
    """The scalar fields of dataclass ``cls`` read from the map ``value``:
    each of its declared type (``T`` or ``T | None``), a missing one its
    default; BadRequest for anything else.  Fields of other types (nested
    messages, lists) are left to the caller."""
    if not isinstance(value, dict):
        raise BadRequest(f"malformed {what}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        base = kind.removesuffix(" | None")
        check = _CHECKS.get(base)
        if check is None:
            continue
        v = value.get(f.name, _MISSING)
        if v is _MISSING:
            if f.default is dataclasses.MISSING:
                raise BadRequest(f"{what}: no {f.name}")
            continue
        if not (check(v) or (v is None and base != kind)):
            raise BadRequest(f"{what}: {f.name} is not a {base}")
        out[f.name] = v
    return out


#: a listed worker's states, as list-workers shows them
WORKER_STATES = ("not connected", "reconnecting", "connected", "draining")


@dataclasses.dataclass(frozen=True)
class WorkerRow:
    """One line of workers.furls as the running master sees it (list-workers)."""

    name: str
    comment: str = ""
    connected: bool = False
    state: str = "not connected"
    draining: bool = False
    grace_until: float | None = None  # a reconnecting session's end
    peer: str | None = None
    connected_since: float | None = None
    last_seen: float | None = None
    host: str | None = None  # first line of the worker's info/host
    admin: str | None = None  # first line of the worker's info/admin

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> WorkerRow:
        row = cls(**_fields(cls, value, "worker row"))
        if row.state not in WORKER_STATES:
            raise BadRequest(f"worker row: unknown state {row.state[:40]!r}")
        return row


def worker_rows_from_wire(value: Any) -> list[WorkerRow]:
    """listWorkers' answer."""
    if not isinstance(value, list):
        raise BadRequest("malformed worker list")
    return [WorkerRow.from_wire(v) for v in value]


@dataclasses.dataclass(frozen=True)
class GateCounts:
    """The admission of connections to the workers' port (master/admission.py)."""

    pending: int = 0
    held: int = 0
    attached: int = 0
    max_pending: int = 0
    per_address: int = 0
    attach_timeout: float = 0.0
    fd_limit: int | None = None
    timed_out: int = 0
    evicted: int = 0

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> GateCounts:
        return cls(**_fields(cls, value, "connection counts"))


@dataclasses.dataclass(frozen=True)
class RefusedAddress:
    address: str
    refused: int
    last: float

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> RefusedAddress:
        return cls(**_fields(cls, value, "refused address"))


@dataclasses.dataclass(frozen=True)
class RefusalCounts:
    """Refused attach attempts since the start (master/refusals.py)."""

    total: int = 0
    closed_before_tls: int = 0
    cut_unanswered: int = 0
    waiting: int = 0
    connections: GateCounts = GateCounts()
    this_interval: int = 0
    interval_seconds: float = 0.0
    addresses: int = 0
    top: tuple[RefusedAddress, ...] = ()  # the addresses refused most

    def to_wire(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "connections": self.connections.to_wire(),
                "top": [t.to_wire() for t in self.top]}

    @classmethod
    def from_wire(cls, value: Any) -> RefusalCounts:
        fields = _fields(cls, value, "refusal counts")
        top = value.get("top", [])
        if not isinstance(top, list):
            raise BadRequest("refusal counts: top is not a list")
        return cls(**fields, connections=GateCounts.from_wire(value.get("connections", {})),
                   top=tuple(RefusedAddress.from_wire(t) for t in top))


@dataclasses.dataclass(frozen=True)
class StatusAnswer:
    """What ``furl-master status`` shows of a running master."""

    version: str
    pid: int
    started: float  # time.time() at its start
    location: str
    workers: int  # lines in workers.furls
    connected: int
    kind: str  # "standalone" or "buildbot"
    problems: tuple[str, ...] = ()
    refusals: RefusalCounts = RefusalCounts()

    def to_wire(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "problems": list(self.problems),
                "refusals": self.refusals.to_wire()}

    @classmethod
    def from_wire(cls, value: Any) -> StatusAnswer:
        fields = _fields(cls, value, "status answer")
        problems = value.get("problems", [])
        if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
            raise BadRequest("status answer: problems is not a list of texts")
        return cls(**fields, problems=tuple(problems),
                   refusals=RefusalCounts.from_wire(value.get("refusals", {})))


@dataclasses.dataclass(frozen=True)
class PutAnswer:
    """What a put wrote on the worker, verified there."""

    remote: str  # the path beneath the worker's directory
    kind: str  # "file" or "dir"
    sha256: str
    manifest: str | None = None  # of the tree, for "dir"

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> PutAnswer:
        answer = cls(**_fields(cls, value, "put answer"))
        if answer.kind not in ("file", "dir") or not DIGEST_RE.fullmatch(answer.sha256):
            raise BadRequest("incomplete put answer")
        return answer


# -- invites: admin CLI <-> master, and master <-> worker over the wormhole ---------

#: the magic-wormhole application id of this project's invites: a mailbox
#: serves every application, and codes of one never meet those of another
INVITE_APPID = "buildbot-furl.net/invite/v1"
#: the public mailbox of the magic-wormhole project (used when none is configured)
PUBLIC_MAILBOX = "ws://relay.magic-wormhole.io:4000/v1"


def check_mailbox_url(url: str) -> str:
    """A magic-wormhole mailbox: ``ws://HOST:PORT/v1`` (or ``wss://``);
    ConfigError for anything else."""
    text = url.strip()
    if not re.fullmatch(r"wss?://[A-Za-z0-9._\[\]:-]+(/[A-Za-z0-9._/-]*)?", text):
        raise ConfigError(f"{text[:80]!r} is not a mailbox URL (e.g. ws://HOST:4000/v1)")
    return text


#: a wormhole code as magic-wormhole makes them: a nameplate number and words
INVITE_CODE_RE = re.compile(r"[0-9]{1,6}(-[a-z]{2,16}){1,8}")
#: how long an invite may be good for
MAX_INVITE_TTL = 30 * 86400.0


@dataclasses.dataclass(frozen=True)
class InviteRequest:
    """The admin asks the running master for an invite for worker ``name``
    (a new worker, or a new FURL for a listed one)."""

    name: str
    ttl: float = 86400.0
    comment: str = ""

    def to_wire(self) -> bytes:
        return encode(dataclasses.asdict(self))

    @classmethod
    def from_wire(cls, raw: bytes) -> InviteRequest:
        req = cls(**_fields(cls, _map(raw, "an invite request"), "invite request"))
        if not 60 <= req.ttl <= MAX_INVITE_TTL:
            raise BadRequest("an invite is good for 1 minute to 30 days")
        return dataclasses.replace(req, comment=text_arg(req.comment)[:200])


@dataclasses.dataclass(frozen=True)
class InviteAnswer:
    """The invite the master holds open: its code (a secret until used),
    until when it is good, the mailbox the worker must use."""

    name: str
    code: str
    expires: float
    mailbox: str
    rotation: bool = False  # for a listed worker: a new FURL replaces its old one

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> InviteAnswer:
        answer = cls(**_fields(cls, value, "invite answer"))
        if not INVITE_CODE_RE.fullmatch(answer.code):
            raise BadRequest("invite answer: not a wormhole code")
        return answer

    def __repr__(self) -> str:  # the code is a secret until it is used
        return f"InviteAnswer(name={self.name!r}, code=<hidden>, expires={self.expires})"


#: what list-workers shows of an invite
INVITE_STATES = ("pending", "claimed")


@dataclasses.dataclass(frozen=True)
class InviteRow:
    """An invite as list-workers shows it: pending (never its code), or
    claimed (by which host, when)."""

    name: str
    state: str
    expires: float | None = None
    rotation: bool = False
    claimed_at: float | None = None
    host: str | None = None  # what the claiming worker said of its host

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> InviteRow:
        row = cls(**_fields(cls, value, "invite row"))
        if row.state not in INVITE_STATES:
            raise BadRequest(f"invite row: unknown state {row.state[:40]!r}")
        return row


def invite_rows_from_wire(value: Any) -> list[InviteRow]:
    if not isinstance(value, list):
        raise BadRequest("listInvites answered something that is not a list")
    return [InviteRow.from_wire(v) for v in value]


# the wormhole's messages (both ends of an invite's claim)


@dataclasses.dataclass(frozen=True)
class InviteClaim:
    """The worker's first message: who it is (shown to the master's admin)."""

    host: str = ""
    admin: str = ""
    version: str = ""

    def to_wire(self) -> bytes:
        return encode({"claim": dataclasses.asdict(self)})

    @classmethod
    def from_wire(cls, raw: Any) -> InviteClaim:
        v = _map(raw, "an invite claim") if isinstance(raw, bytes) else None
        if v is None or not isinstance(v.get("claim"), dict):
            raise BadRequest("not an invite claim")
        c = cls(**_fields(cls, v["claim"], "invite claim"))
        return cls(*(text_arg(x)[:200] for x in (c.host, c.admin, c.version)))


@dataclasses.dataclass(frozen=True)
class InviteGrant:
    """The master's answer: the worker's name and its new FURL, or why not."""

    name: str = ""
    furl: str = ""
    refused: str = ""  # set: no FURL, and why

    def to_wire(self) -> bytes:
        return encode({"grant": dataclasses.asdict(self)})

    @classmethod
    def from_wire(cls, raw: Any) -> InviteGrant:
        v = _map(raw, "an invite grant") if isinstance(raw, bytes) else None
        if v is None or not isinstance(v.get("grant"), dict):
            raise BadRequest("not an invite grant")
        g = cls(**_fields(cls, v["grant"], "invite grant"))
        if not g.refused and not (g.name and g.furl):
            raise BadRequest("an invite grant without a FURL says why")
        return g

    def __repr__(self) -> str:
        return f"InviteGrant(name={self.name!r}, furl=<hidden>, refused={self.refused!r})"


#: the worker's last message: the FURL is stored (True) or could not be (False)
def invite_stored(ok: bool, why: str = "") -> bytes:
    return encode({"stored": bool(ok), "why": text_arg(why)[:200]})


def invite_stored_from_wire(raw: Any) -> tuple[bool, str]:
    v = _map(raw, "an invite's last message") if isinstance(raw, bytes) else None
    if v is None or not isinstance(v.get("stored"), bool):
        raise BadRequest("not an invite's last message")
    why = v.get("why", "")
    return v["stored"], why if isinstance(why, str) else ""
