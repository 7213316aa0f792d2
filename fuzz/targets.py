"""Fuzz targets: the contract of every parser that takes untrusted input.

Each ``target_NAME(data: bytes) -> None`` feeds ``data`` to one entry point
and checks what comes back: a well-formed value, or the documented error
(ConfigError; BadRequest or another WireError; PathRefused; PolicyRefused).
Any other exception, and every AssertionError raised here, is a finding.
tests/system/test_fuzz.py (hypothesis) and fuzz/run.py (atheris) both call these,
so each contract is written down once, here.

Entry points that take a value rather than bytes get ``data`` decoded as
msgpack (or the bytes themselves when they are not msgpack).  "Bounded"
means a value built from ``data`` holds no more items and characters than
``data`` has bytes (plus a few defaults); an error's text is at most a
fixed multiple of it.
"""

from __future__ import annotations

import atexit
import dataclasses
import fnmatch
import hashlib
import io
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import Any

from buildbot_furl import furlsfile, tree
from buildbot_furl.errors import (
    WIRE_ERRORS,
    BadRequest,
    CommandFailed,
    ConfigError,
    FurlError,
    PolicyRefused,
    WireError,
)
from buildbot_furl.furl import HINT_RE, SWISSNUM_RE, TUBID_RE, Furl, parse_furl
from buildbot_furl.layout import WORKER_FILES
from buildbot_furl.protocol import GET_COMMAND, MAX_NAME, MAX_TEXT, PUT_COMMAND, decode, encode
from buildbot_furl.protocol import messages as m
from buildbot_furl.protocol.envelope import unwrap
from buildbot_furl.worker import statefile
from buildbot_furl.worker.policy import Limits, Policy, parse_policy

SLACK = 64  # defaults a parser may add ("?", ".", ...)
TEXT_GROWTH = 16  # how much longer than the input an error's text may be (str() of values)
WORKER = "w1"


# -- helpers --------------------------------------------------------------------------------


def _text(data: bytes) -> str:
    """The bytes as text, undecodable bytes kept (as a file or peer could send them)."""
    return data.decode("utf-8", "surrogateescape")


def _value(data: bytes) -> Any:
    """``data`` as msgpack, else the bytes themselves."""
    try:
        return decode(data)
    except BadRequest:
        return data


def _size(value: Any) -> int:
    """Items plus characters in ``value`` (at most the msgpack bytes it came from)."""
    n, todo = 0, [value]
    while todo:
        v = todo.pop()
        if isinstance(v, (str, bytes)):
            n += max(1, len(v))
        elif isinstance(v, dict):
            n += 1
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, (list, tuple)):
            n += 1
            todo.extend(v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            todo.extend(getattr(v, f.name) for f in dataclasses.fields(v))
        else:
            n += 1
    return n


def _bounded(value: Any, data: bytes) -> None:
    assert _size(value) <= len(data) + SLACK, "the value built is larger than the input"


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _wire_error(e: WireError, data: bytes) -> None:
    """A raised WireError is well formed: text only, bounded, sendable again."""
    text = str(e)
    assert isinstance(text, str) and isinstance(e.message, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.fields.items())
    shown = len(text) + sum(len(k) + len(v) for k, v in e.fields.items())
    assert shown <= TEXT_GROWTH * len(data) + 1024, "an error's text outgrows the input"
    encode(e.to_wire())


#: what follows a '/' and ends a FURL (not the public tubid after ``pb://``, nor
#: anything followed by '@', which is a tubid's place)
_SECRET_RE = re.compile(r"(?i)(?<!pb:/)(?<!pb:)/+([A-Za-z0-9_-]{16,})(?![A-Za-z0-9_@-])")


def _no_secret(message: str, text: str) -> None:
    """An error about a FURL never shows what could be its swissnum."""
    for m in _SECRET_RE.finditer(text):
        secret = m.group(1)
        if secret in text[:m.start()]:
            continue  # the same characters come earlier, where they may be shown
        assert secret not in message, "an error message shows a FURL's secret"


def _valid_furl(f: Furl) -> None:
    assert TUBID_RE.match(f.tubid) and SWISSNUM_RE.match(f.swissnum)
    assert f.hints and all(HINT_RE.match(h) for h in f.hints)
    assert parse_furl(str(f)) == f, "a parsed FURL does not read back the same"


# -- FURLs and workers.furls ------------------------------------------------------------------


def target_furl(data: bytes) -> None:
    """parse_furl: a valid Furl (which reads back the same) or ConfigError, never the secret."""
    text = _text(data)
    try:
        f = parse_furl(text)
    except ConfigError as e:
        _no_secret(str(e), text)
        return
    _valid_furl(f)


def target_state_file(data: bytes) -> None:
    """The worker's state file, as furl-worker status reads it: a WorkerStatus
    that writes back as itself, or StateFileError in a short line."""
    try:
        st = statefile.WorkerStatus.from_json(_text(data))
    except statefile.StateFileError as e:
        assert len(str(e)) <= 200, "a state file's error outgrows a line"
        return
    assert isinstance(st.pid, int) and st.pid > 0 and math.isfinite(st.since)
    assert statefile.WorkerStatus.from_json(st.to_json()) == st


def target_furlsfile(data: bytes) -> None:
    """workers.furls: entries that render back the text as read, or ConfigError naming
    ``file:line`` and never a secret; a tubid check refuses only other masters' FURLs."""
    text = _text(data)
    try:
        ff = furlsfile.parse(text, "f")
    except ConfigError as e:
        assert str(e).startswith("f:")
        _no_secret(str(e), text)
        return
    # as read, but for the newline that ends the last line
    assert ff.render() == (text if not text or text.endswith("\n") else text + "\n")
    entries = ff.entries
    assert len({e.name for e in entries}) == len(entries)
    assert len({e.furl.swissnum for e in entries}) == len(entries)
    for e in entries:
        assert furlsfile.NAME_RE.match(e.name)
        _valid_furl(e.furl)
    if entries:
        tubid = entries[0].furl.tubid
        others = any(e.furl.tubid != tubid for e in entries)
        try:
            furlsfile.parse(text, "f", tubid)
        except ConfigError as e:
            assert others and "another master" in str(e)
            _no_secret(str(e), text)
        else:
            assert not others


# -- the envelope and the messages ------------------------------------------------------------


def target_decode(data: bytes) -> None:
    """decode: a value no larger than the bytes, or BadRequest."""
    try:
        value = decode(data)
    except BadRequest:
        return
    _bounded(value, data)


def target_unwrap(data: bytes) -> None:
    """unwrap: the ok value, or the envelope's error as a well-formed WireError."""
    try:
        value = unwrap(data)
    except WireError as e:
        _wire_error(e, data)
        return
    _bounded(value, data)


def _from_wire(parse: Callable[[Any], Any], check: Callable[[Any], None],
               raw: Any, data: bytes) -> None:
    try:
        obj = parse(raw)
    except BadRequest as e:
        _wire_error(e, data)
        return
    check(obj)
    _bounded(obj, data)


def _session(s: Any) -> bool:
    return (isinstance(s, m.SessionProof) and m.SESSION_ID_RE.fullmatch(s.session) is not None
            and m.SESSION_SECRET_RE.fullmatch(s.secret) is not None
            and s.secret not in repr(s))


def _digest(s: Any) -> bool:
    return isinstance(s, str) and m.DIGEST_RE.fullmatch(s) is not None


def _check_attach_info(a: m.AttachInfo) -> None:
    assert isinstance(a.protocols, tuple) and all(_int(p) for p in a.protocols)
    assert isinstance(a.version, str) and len(a.version) <= 40
    assert isinstance(a.worker_info, dict)
    assert a.resume is None or _session(a.resume)
    assert "secret" not in repr(a)


def target_attach_info(data: bytes) -> None:
    """AttachInfo.from_wire (a worker attaching): an AttachInfo or BadRequest."""
    _from_wire(m.AttachInfo.from_wire, _check_attach_info, data, data)


def _check_attach_answer(a: m.AttachAnswer) -> None:
    assert _int(a.protocol) and _session(a.proof)
    assert isinstance(a.grace, float) and math.isfinite(a.grace) and a.grace >= 0
    assert isinstance(a.master_version, str) and len(a.master_version) <= 40
    assert isinstance(a.resumed, bool)
    assert isinstance(a.commands, tuple) and all(isinstance(c, str) for c in a.commands)
    assert a.name == "" or m.WORKER_NAME_RE.fullmatch(a.name)
    assert a.secret not in repr(a)


def target_attach_answer(data: bytes) -> None:
    """AttachAnswer.from_wire (the master's answer, on the worker)."""
    _from_wire(m.AttachAnswer.from_wire, _check_attach_answer, _value(data), data)


def _check_resume_state(r: m.ResumeState) -> None:
    assert all(_int(x) and x >= 0 for x in (r.applied, r.written, r.read))
    assert isinstance(r.completed, bool)


def target_resume_state(data: bytes) -> None:
    """ResumeState.from_wire (the master's state of a command, on the worker)."""
    _from_wire(m.ResumeState.from_wire, _check_resume_state, data, data)


def _check_run_request(r: m.RunRequest) -> None:
    assert isinstance(r.argv, list) and r.argv and all(isinstance(a, str) for a in r.argv)
    assert isinstance(r.run_id, str) and m.RUN_ID_RE.fullmatch(r.run_id)
    assert isinstance(r.workdir, str)
    assert isinstance(r.env, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in r.env.items())
    assert r.timeout is None or (m._is_number(r.timeout) and r.timeout > 0)


def target_run_request(data: bytes) -> None:
    """RunRequest.from_wire (the admin's CLI, on the master)."""
    _from_wire(m.RunRequest.from_wire, _check_run_request, data, data)


def _check_run_answer(r: m.RunAnswer) -> None:
    assert _int(r.rc) and (r.signal is None or _int(r.signal))
    assert r.failure_reason is None or isinstance(r.failure_reason, str)


def target_run_answer(data: bytes) -> None:
    """RunAnswer.from_wire (the master's answer, in the CLI)."""
    _from_wire(m.RunAnswer.from_wire, _check_run_answer, _value(data), data)


def _check_put_request(r: m.PutRequest) -> None:
    assert isinstance(r.remote, str) and r.kind in ("file", "dir") and _digest(r.sha256)
    if r.kind == "dir":
        assert _digest(r.manifest) and r.mode is None
    else:
        assert r.manifest is None
    assert r.mode is None or (_int(r.mode) and 0 <= r.mode <= 0o7777)


def target_put_get_request(data: bytes) -> None:
    """PutRequest.from_wire and GetRequest.from_wire (the admin's CLI, on the master)."""
    _from_wire(m.PutRequest.from_wire, _check_put_request, data, data)
    _from_wire(m.GetRequest.from_wire, lambda r: isinstance(r.remote, str), data, data)


def _check_file_info(f: m.FileInfo) -> None:
    assert f.kind in ("file", "dir") and _digest(f.sha256)
    assert f.size is None or _int(f.size)
    assert f.mode is None or _int(f.mode)
    assert f.manifest is None or isinstance(f.manifest, str)


def target_file_info(data: bytes) -> None:
    """FileInfo.from_wire (a worker's answer to a get, on the master and in the CLI)."""
    _from_wire(m.FileInfo.from_wire, _check_file_info, _value(data), data)


def _check_updates(updates: list[dict[str, Any]]) -> None:
    assert isinstance(updates, list)
    for u in updates:
        assert isinstance(u, dict) and len(u) == 1
        [(key, value)] = u.items()
        assert isinstance(key, str)
        if key in m.TEXT_KEYS:
            assert isinstance(value, str)
        elif key == "log":
            assert isinstance(value, tuple) and len(value) == 2
            assert all(isinstance(v, str) for v in value)
        elif key == "rc":
            assert value is None or _int(value)
        elif key == "elapsed":
            assert m._is_number(value)
        elif key == "stat":
            assert isinstance(value, tuple) and all(m._is_number(v) for v in value)
        elif key == "files":
            assert isinstance(value, list)


def target_updates(data: bytes) -> None:
    """decode_updates (a command's updates from the worker, on the master)."""
    _from_wire(m.decode_updates, _check_updates, data, data)


def _check_output(items: list[tuple[str, str]]) -> None:
    assert all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str)
               and isinstance(i[1], str) for i in items)


def target_output(data: bytes) -> None:
    """decode_output (a run's output from the master, in the CLI)."""
    _from_wire(m.decode_output, _check_output, data, data)


def target_failure(data: bytes) -> None:
    """decode_failure (a command's completion from the worker, on the master)."""
    _from_wire(m.decode_failure, lambda t: t is None or isinstance(t, str), data, data)


def _check_session(s: Any) -> None:
    assert _session(s)


def target_session(data: bytes) -> None:
    """SessionProof.from_wire (a worker leaving or draining, on the master)."""
    _from_wire(m.SessionProof.from_wire, _check_session, data, data)


def _check_drain_answer(a: m.DrainAnswer) -> None:
    assert _int(a.running) and a.running >= 0


def target_drain_answer(data: bytes) -> None:
    """DrainAnswer.from_wire (the master's answer to drain, on the worker)."""
    _from_wire(m.DrainAnswer.from_wire, _check_drain_answer, _value(data), data)


def target_seq(data: bytes) -> None:
    """check_seq: a non-negative int (the one given) or BadRequest."""
    value = _value(data)
    _from_wire(m.check_seq, lambda s: _int(s) and s >= 0 and s is value, value, data)


def target_transfer_error(data: bytes) -> None:
    """raise_transfer_error: nothing for a non-map, else a WireError with bounded text."""
    value = _value(data)
    try:
        m.raise_transfer_error(value, WORKER)
    except WireError as e:
        assert isinstance(value, dict)
        assert type(e) in (*WIRE_ERRORS.values(), CommandFailed)
        assert not e.fields and len(str(e)) <= MAX_TEXT + len(WORKER) + 16
        _wire_error(e, data)
        return
    assert not isinstance(value, dict), "a transfer's error report raised nothing"


def target_name_text_arg(data: bytes) -> None:
    """name_arg (a str of at most MAX_NAME, or BadRequest) and text_arg (cut to MAX_TEXT)."""
    value = _value(data)
    try:
        name = m.name_arg(value, "name")
    except BadRequest as e:
        _wire_error(e, data)
    else:
        assert isinstance(name, str) and len(name) <= MAX_NAME
    text = m.text_arg(value)
    assert isinstance(text, str) and len(text) <= MAX_TEXT


# -- scratch directories (for the tree and policy targets) ------------------------------------

_scratch: str | None = None


def _cleanup(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked fuzzing child
        shutil.rmtree(path, ignore_errors=True)


def scratch() -> str:
    """A private directory for this process's targets (removed at exit)::

        parent/            archives are unpacked here as "dest"
        parent/outside/    beside the destination: must never change
        worker/            the worker directory the policies are read for
    """
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="furl-fuzz-")
        atexit.register(_cleanup, _scratch, os.getpid())
        os.makedirs(os.path.join(_scratch, "parent", "outside", "sub"))
        with open(os.path.join(_scratch, "parent", "outside", "secret"), "w") as f:
            f.write("secret\n")
        os.makedirs(os.path.join(_scratch, "worker", "sub"))
        with open(os.path.join(_scratch, "worker", "big"), "w") as f:
            f.write("more than four bytes\n")
    return _scratch


# -- tar archives -----------------------------------------------------------------------------


def _snapshot(top: str, skip: str) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``top`` but ``skip``: type, mode, and content or target."""
    seen: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path == skip:
                continue
            st = os.lstat(path)
            rec: tuple[Any, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    rec += (st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(path),)
            seen[os.path.relpath(path, top)] = rec
    return seen


def _check_unpacked(dest: str, digest: str, data: bytes) -> None:
    """What unpack wrote: its manifest, plain files no larger than the archive,
    no setuid or world-writable modes, and no symlink that leads out."""
    assert digest == tree.manifest_path(dest), "unpack's manifest is not the tree's"
    real_dest = os.path.realpath(dest)
    written = 0
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                # by its text, as if every component existed: a dangling link must
                # not lead out once a directory appears (issue 16)
                rel = os.path.relpath(dirpath, dest)
                depth = 0 if rel == "." else rel.count(os.sep) + 1
                comps = [c for c in os.readlink(path).split("/") if c not in ("", ".")]
                climbs = next((i for i, c in enumerate(comps) if c != ".."), len(comps))
                assert climbs <= depth and ".." not in comps[climbs:], \
                    f"symlink {path!r} could lead out once its directories exist"
                try:
                    os.stat(path)
                except OSError:
                    continue  # dangling or a loop: leads nowhere
                real = os.path.realpath(path)
                assert real == real_dest or real.startswith(real_dest + os.sep), \
                    f"symlink {path!r} leads out of the destination"
                continue
            assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), f"{path!r}: special"
            assert stat.S_IMODE(st.st_mode) & ~0o755 == 0, f"{path!r}: unsafe mode"
            if stat.S_ISREG(st.st_mode):
                assert st.st_nlink == 1, f"{path!r} is a hard link"
                written += st.st_size
    assert written <= len(data), "the unpacked files are larger than the archive"


def target_unpack(data: bytes) -> None:
    """tree.unpack: the archive lands inside the destination (with its manifest),
    or PathRefused/BadRequest and nothing of it is left; nothing beside it changes."""
    base = scratch()
    parent = os.path.join(base, "parent")
    dest = os.path.join(parent, "dest")
    if os.path.lexists(dest):  # left by a finding in this process
        shutil.rmtree(dest)
    before = _snapshot(base, dest)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            digest = tree.unpack(io.BytesIO(data), fd, "dest")
        except FurlError as e:
            assert isinstance(e, WireError)
            assert not os.path.lexists(dest), "a refused archive left something behind"
        else:
            _check_unpacked(dest, digest, data)
        assert _snapshot(base, dest) == before, "something beside the destination changed"
    finally:
        tree.remove_tree(fd, "dest")
        os.close(fd)


# -- the worker's policy ----------------------------------------------------------------------


def target_policy(data: bytes) -> None:
    """parse_policy: a well-formed Policy (that can describe itself) or ConfigError."""
    basedir = os.path.join(scratch(), "worker")
    try:
        p = parse_policy(_text(data), basedir)
    except ConfigError as e:
        assert str(e)
        return
    assert isinstance(p, Policy) and p.basedir == os.path.realpath(basedir)
    for listed in (p.programs, p.environment):
        assert listed is None or (isinstance(listed, tuple)
                                  and all(isinstance(x, str) and x for x in listed))
    assert p.roots is None or (p.roots and all(os.path.isabs(r) for r in p.roots))
    assert all(n is None or (_int(n) and n >= 0) for n in (p.limits.upload, p.limits.download))
    assert p.max_commands is None or (_int(p.max_commands) and p.max_commands >= 1)
    assert isinstance(p.one_line(), str) and isinstance(p.summary(), dict)


POLICIES = (
    "",
    ("[commands]\nallow = sh, true, echo\n[paths]\nallow = ., sub, /nonexistent-furl-root\n"
     "[limits]\nmax_upload = 4\nmax_download = 1k\nmax_commands = 2\n"
     "[environment]\nallow = LANG, LC_*\n"),
    "[commands]\nallow = none\n[paths]\nallow = any\n[environment]\nallow = none\n",
)
_policies: list[Policy] = []

# the paths each command reads or writes, as Policy.check must confine them
READS = {"shell": ("workdir",), "uploadFile": ("path",), "upload_file": ("path",),
         "uploadDirectory": ("path",), "upload_directory": ("path",), "stat": ("path",),
         "listdir": ("path",), "cpdir": ("from_path",), GET_COMMAND: ("path",)}
WRITES = {"downloadFile": ("path",), "download_file": ("path",), "mkdir": ("paths",),
          "rmdir": ("paths",), "rmfile": ("path",), "cpdir": ("to_path",),
          PUT_COMMAND: ("path",)}
COMMANDS = sorted({*READS, *WRITES, "glob", "nosuchcommand"})


def check_input(policy: int, running: int, command: str, args: Any) -> bytes:
    """The bytes :func:`target_policy_check` reads: which policy, how many commands
    already run, then msgpack ``[command, args]``."""
    return bytes([policy % 256, running % 256]) + encode([command, args])


def _within(real: str, roots: tuple[str, ...]) -> bool:
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def target_policy_check(data: bytes) -> None:
    """Policy.check with a peer's args: PolicyRefused, or the policy's Limits and
    then every path it let through is inside the allowed paths (and a write is
    never the worker's directory or own files), every variable set is allowed."""
    if len(data) < 2:
        return
    if not _policies:
        basedir = os.path.join(scratch(), "worker")
        _policies.extend(parse_policy(text, basedir) for text in POLICIES)
    policy = _policies[data[0] % len(_policies)]
    value = _value(data[2:])
    command, args = value if isinstance(value, list) and len(value) == 2 else ("shell", value)
    if not isinstance(command, str):
        command = COMMANDS[data[1] % len(COMMANDS)]
    if not isinstance(args, dict):
        args = {"path": args, "workdir": args}
    try:
        limits = policy.check(command, args, data[1] % 4)
    except PolicyRefused as e:
        _wire_error(e, data)
        return
    # the policy's limits, and its [paths] for what the command opens while it runs
    assert isinstance(limits, Limits) and limits == dataclasses.replace(policy.limits,
                                                                        paths=policy.roots)
    assert command in READS or command in WRITES or command == "glob"

    def real(path: Any) -> str:
        assert isinstance(path, str) and path and "\0" not in path
        return os.path.realpath(os.path.join(policy.basedir, os.path.expanduser(path)))

    for key in READS.get(command, ()):
        assert policy.roots is None or _within(real(args.get(key)), policy.roots)
    for key in WRITES.get(command, ()):
        value = args.get(key)
        for path in value if isinstance(value, list | tuple) and value else [value]:
            r = real(path)
            assert policy.roots is None or _within(r, policy.roots)
            assert not _within(policy.basedir, (r,)), "a write to the worker's directory"
            parent, name = os.path.split(r)
            assert parent != policy.basedir or not any(
                name == f or name.startswith(f + ".") for f in WORKER_FILES), "a worker file"
    env = args.get("env")
    if command == "shell" and env and policy.environment is not None:
        assert isinstance(env, dict) and all(
            any(fnmatch.fnmatchcase(str(k), p) for p in policy.environment) for k in env)
    if command == "shell" and policy.programs is not None:
        cmd = args.get("command")
        assert policy.programs != ()
        assert isinstance(cmd, str) or os.path.isabs(cmd[0]), "runs another program"


TARGETS: dict[str, Callable[[bytes], None]] = {
    name.removeprefix("target_"): fn for name, fn in sorted(globals().items())
    if name.startswith("target_") and callable(fn)
}
