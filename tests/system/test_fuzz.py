"""Fuzzing: the contracts of fuzz/targets.py under hypothesis (random bytes, and
valid-ish inputs with mutated parts), a short coverage-guided atheris run, and
one regression test, with its exact input, for every finding."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildbot_furl import furlsfile, tree
from buildbot_furl.errors import WIRE_ERRORS, BadRequest, ConfigError, RemoteError
from buildbot_furl.protocol import decode, encode
from buildbot_furl.protocol import messages as m
from buildbot_furl.protocol.envelope import unwrap
from buildbot_furl.testing.procs import ROOT
from buildbot_furl.worker.policy import parse_policy

sys.path.insert(0, str(ROOT))
from fuzz import targets  # fuzz/ is beside the package, not in it

TUBID = "abcdefghijklmnopqrstuvwxyz234567"
SWISS = "k3bqq4ujkwl7vdoluq3ekz3pzd2d3yrm"
SESSION = m.SessionProof("0123456789abcdef0123456789abcdef", "ab" * 32)
SHA = "5" * 64
FURL = f"pb://{TUBID}@tcp:127.0.0.1:9990/{SWISS}"
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies -----------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats() | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1), kids,
                                                        max_size=4),
                      max_leaves=12)


def mutated(valid: dict[str, Any]) -> st.SearchStrategy[dict[Any, Any]]:
    """``valid`` with each field kept, dropped or replaced by a value of any type,
    and perhaps a key it does not know."""
    fields = {k: st.just(v) | values for k, v in valid.items()}
    return st.fixed_dictionaries({}, optional={**fields, "extra": values})


def _wire(obj: Any) -> dict[str, Any]:
    """A message's dict as it crosses the wire (the dataclass's fields, and more)."""
    wire = obj.to_wire()
    return decode(wire) if isinstance(wire, bytes) else wire


MESSAGES = {
    "attach_info": _wire(m.AttachInfo((1,), "0.1.0", {"os": "linux"}, SESSION)),
    "attach_answer": _wire(m.AttachAnswer(1, SESSION.session, SESSION.secret, 30.0, "0.1.0", True, ("c1",))),
    "resume_state": _wire(m.ResumeState(3, True, 10, 20)),
    "run_request": _wire(m.RunRequest(["echo", "hi"], "run-1", ".", {"A": "b"}, 5.0)),
    "run_answer": _wire(m.RunAnswer(1, 9, "killed")),
    "put_get_request": _wire(m.PutRequest("a/b", "dir", SHA, SHA, 0o644)),
    "file_info": _wire(m.FileInfo("file", SHA, 10, 0o644, SHA)),
    "session": SESSION.to_value(),
    "drain_answer": _wire(m.DrainAnswer(2)),
    "transfer_error": {"class": "PathRefused", "message": "no"},
}
for msg in MESSAGES.values():  # each is the dataclass's fields, all of them
    assert len(msg) >= 1

envelopes = (st.tuples(st.just("ok"), values).map(list)
             | st.tuples(st.sampled_from(["error", "ok", "err"]),
                         st.sampled_from([*WIRE_ERRORS, "Nope", "WireError"]) | values,
                         st.dictionaries(st.sampled_from(["message", "self", "path", ""])
                                         | st.text(max_size=5), values, max_size=4)
                         | values).map(list))
update_items = st.lists(st.tuples(
    st.sampled_from([*m.TEXT_KEYS, "log", "rc", "elapsed", "stat", "files", "x"]) | values,
    values | st.lists(st.text(max_size=5), max_size=3)).map(list), max_size=6)

# -- FURLs and workers.furls ----------------------------------------------------------------

furl_parts = st.tuples(
    st.sampled_from(["pb://", "pb:/", "PB://", ""]),
    st.sampled_from([TUBID, TUBID[:-1], TUBID.upper(), "", "x@y"]),
    st.sampled_from(["@", "", "@@"]),
    st.sampled_from(["tcp:h:1", "tcp:h:1,tcp:g:2", "", ",", "a b", "tcp:h:1,"]),
    st.sampled_from(["/", "//", ""]),
    st.sampled_from([SWISS, SWISS[:15], SWISS + "/x", "x" * 129, "", "sé" * 10]),
    st.sampled_from(["", "\n", " ", "\x00", "/"]),
)
furls = furl_parts.map("".join) | st.text(max_size=80)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["w1", "w2", "bad name", "", "w/1", "#"]),
                          furls, st.sampled_from([" ", "", "\t", "  x "]),
                          st.sampled_from(["", "# c", "#", "# pb://"]), st.booleans()),
                max_size=5))
def test_workers_files_from_valid_and_broken_lines(rows: list[tuple[Any, ...]]) -> None:
    text = "".join((f"{furl}{sep}{name}" if swap else f"{name}{sep}{furl}") + f" {c}\n"
                   for name, furl, sep, c, swap in rows)
    targets.target_furlsfile(text.encode("utf-8", "surrogateescape"))


@settings(max_examples=200, deadline=None)
@given(furls)
def test_furls_from_valid_and_broken_parts(text: str) -> None:
    targets.target_furl(text.encode("utf-8", "surrogateescape"))


# -- the envelope and the messages ------------------------------------------------------------


# one test per target (pytest-twisted cannot run a parametrized hypothesis test)


def _random_bytes(name: str) -> Any:
    @FAST
    @given(st.binary(max_size=1024))
    def test(data: bytes) -> None:
        targets.TARGETS[name](data)
    return test


def _mutated_message(name: str) -> Any:
    @FAST
    @given(mutated(MESSAGES[name]))
    def test(value: dict[Any, Any]) -> None:
        targets.TARGETS[name](encode(value))
    return test


def _any_value(name: str) -> Any:
    @FAST
    @given(values)
    def test(value: Any) -> None:
        targets.TARGETS[name](encode(value))
    return test


for _name in targets.TARGETS:
    globals()[f"test_random_bytes_{_name}"] = _random_bytes(_name)
for _name in MESSAGES:
    globals()[f"test_mutated_fields_{_name}"] = _mutated_message(_name)
for _name in ("decode", "unwrap", "seq", "name_text_arg", "transfer_error", "failure", "output",
              "updates", "run_answer", "file_info", "attach_answer", "drain_answer"):
    globals()[f"test_any_value_{_name}"] = _any_value(_name)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                           | st.floats() | st.text(max_size=12),
                           lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                           max_leaves=8)
STATE_FILE = {"state": "attached", "since": 1.5, "pid": 42, "master": "h:1",
              "last_error": None, "furl_id": "f", "drain": "asked", "name": "w1",
              "switch": {"furl_id": "g", "result": "failed", "error": "no"}}


@FAST
@given(st.fixed_dictionaries({}, optional={
    **{k: st.just(v) | json_values for k, v in STATE_FILE.items()},
    "switch": st.just(STATE_FILE["switch"]) | json_values
    | st.fixed_dictionaries({}, optional={k: st.just(v) | json_values
                                          for k, v in STATE_FILE["switch"].items()}),
    "extra": json_values}))
def test_state_files_with_mutated_fields(value: dict[str, Any]) -> None:
    """furl-worker status reads a WorkerStatus or says the file is damaged
    (StateFileError), whatever a foreign writer left there."""
    targets.target_state_file(json.dumps(value).encode())


@FAST
@given(envelopes)
def test_envelopes(value: list[Any]) -> None:
    targets.target_unwrap(encode(value))


@FAST
@given(update_items)
def test_update_batches(items: list[Any]) -> None:
    targets.target_updates(encode(items))
    targets.target_output(encode(items))


# -- tar archives -----------------------------------------------------------------------------

NAMES = ["a", "b", "a/b", "a/b/c", ".", "./a", "", "..", "../x", "a/../../x", "/abs", "//x",
         "a\\b", "x" * 300, "d/" * 60 + "f", "é", "\udcff", "a/./b/", "outside"]
KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
         tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"S", b"x"]

member = st.fixed_dictionaries({
    "name": st.sampled_from(NAMES) | st.text(max_size=12),
    "kind": st.sampled_from(KINDS),
    "link": st.sampled_from([*NAMES, "../outside", "../../", "/etc/passwd"]),
    "mode": st.sampled_from([0o644, 0o755, 0o7777, 0o4755, 0]),
    "mtime": st.sampled_from([0, 1, -1, 2**33, 1e20, 1.5]),
    "data": st.binary(max_size=64) | st.integers(0, 1 << 16).map(lambda n: b"\0" * n),
})


def _archive(members: list[dict[str, Any]], fmt: int, compression: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=fmt) as tf:
        for mb in members:
            ti = tarfile.TarInfo(mb["name"])
            ti.type, ti.linkname, ti.mode, ti.mtime = mb["kind"], mb["link"], mb["mode"], mb["mtime"]
            data = mb["data"] if ti.isreg() else b""
            ti.size = len(data)
            try:
                tf.addfile(ti, io.BytesIO(data))
            except (ValueError, UnicodeError, OverflowError, tarfile.HeaderError):
                continue  # this format cannot say it
    return buf.getvalue()


archives = st.builds(_archive, st.lists(member, max_size=5),
                     st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                      tarfile.PAX_FORMAT]),
                     st.sampled_from(["", "", "gz", "bz2", "xz"]))


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(archives)
def test_archives_with_hostile_members(data: bytes) -> None:
    targets.target_unpack(data)


@FAST
@given(archives, st.integers(0, 10_000), st.binary(min_size=1, max_size=4))
def test_archives_with_mutated_bytes(data: bytes, at: int, junk: bytes) -> None:
    at %= max(1, len(data))
    targets.target_unpack(data[:at] + junk + data[at + len(junk):])


# -- the worker's policy ----------------------------------------------------------------------

items = st.sampled_from(["any", "none", "make", "/bin/sh", "bin/make", ".", "sub", "~", "~root",
                         "..", "/", "LANG", "LC_*", "A-B", "10M", "1k", "2", "0", "-1", "lots",
                         "²", "٣", "9" * 5000, "\x00", "a\x00b", "", "1e3", " 5 "])
policy_lines = st.lists(st.one_of(
    st.sampled_from(["[commands]", "[paths]", "[limits]", "[environment]", "[other]", "[",
                     "# comment", "", "  indented", "[commands]"]),
    st.tuples(st.sampled_from(["allow", "max_upload", "max_download", "max_commands", "x", ""]),
              st.sampled_from([" = ", "=", ": ", " "]),
              st.lists(items, max_size=3).map(", ".join)).map("".join)), max_size=10)


@FAST
@given(policy_lines)
def test_policies_from_valid_and_broken_lines(lines: list[str]) -> None:
    targets.target_policy("\n".join(lines).encode("utf-8", "surrogateescape"))


paths = st.sampled_from([".", "sub", "sub/x", "big", "..", "../worker", "/", "/etc/passwd",
                         "~", "~/x", "furl-worker.policy", "master.furl.new", "sub/../..",
                         "", "\x00", "sub/*/x", "*/../..", "/nonexistent-furl-root/x"])
arg_values = paths | st.lists(paths, max_size=3) | values
shell_args = st.fixed_dictionaries({}, optional={
    "workdir": paths | values,
    "command": st.sampled_from(["echo hi", "sh"]) | st.lists(
        st.sampled_from(["echo", "true", "sh", "/bin/sh", "./big", "rm", ""])
        | st.just(["obfuscated", "echo", "***"]), max_size=3) | values,
    "env": st.dictionaries(st.sampled_from(["LANG", "LC_ALL", "PATH", "X"]) | st.integers(),
                           st.text(max_size=3), max_size=3) | values,
    "logfiles": st.dictionaries(st.text(max_size=3), paths | st.fixed_dictionaries(
        {"filename": paths | values}) | values, max_size=2) | values,
})
check_args = st.dictionaries(st.sampled_from(["path", "paths", "from_path", "to_path",
                                              "workdir"]), arg_values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(targets.POLICIES) - 1), st.integers(0, 3),
       st.sampled_from(targets.COMMANDS) | st.text(max_size=8), check_args, shell_args)
def test_policy_checks_with_hostile_args(policy: int, running: int, command: str,
                                         args: dict[str, Any], shell: dict[str, Any]) -> None:
    args = {**args, **shell} if command == "shell" else args
    targets.target_policy_check(targets.check_input(policy, running, command, args))


# -- a short coverage-guided run --------------------------------------------------------------


def test_atheris_short_run(tmp_path: Path) -> None:
    """fuzz/run.py all, briefly (CI runs it every time; longer runs are in the docstring
    of fuzz/run.py)."""
    p = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), "all", "--runs", "21000",
                        "--quiet", "--artifacts", str(tmp_path)], check=False, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr[-5000:]
    summary = p.stdout.splitlines()
    assert len([line for line in summary if line.endswith("  ok")]) == len(targets.TARGETS)
    assert not [n for n in os.listdir(tmp_path) if "crash" in n]


# -- regressions: every finding, with its exact input -----------------------------------------



def _tar(*members: tuple[str, bytes, str, float], compression: str = "",
         fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """An archive of (name, type, linkname, mtime) members, each empty."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=fmt) as tf:
        for name, kind, link, mtime in members:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname, ti.mtime = kind, link, mtime
            tf.addfile(ti, io.BytesIO(b""))
    return buf.getvalue()


def test_found_bool_rc_and_sizes_are_not_numbers() -> None:
    """{'rc': False} was a run that exited 0; size True a one-byte file (then
    quietly read as -1 and None; now refused as the garbage they are)."""
    with pytest.raises(BadRequest):
        m.RunAnswer.from_wire({"rc": False})
    with pytest.raises(BadRequest):
        m.FileInfo.from_wire({"kind": "file", "sha256": SHA, "size": True})
    with pytest.raises(BadRequest):
        m.FileInfo.from_wire({"kind": "file", "sha256": SHA, "mode": True})
    targets.target_run_answer(encode({"rc": False}))


@pytest.mark.parametrize("protocol", [[None], ":", None, True])
def test_found_attach_answer_with_a_protocol_that_is_no_number(protocol: Any) -> None:
    """int([None]) raised TypeError, int(':') ValueError, in the worker's attach."""
    wire = {**MESSAGES["attach_answer"], "protocol": protocol}
    with pytest.raises(BadRequest, match="no protocol version"):
        m.AttachAnswer.from_wire(wire)
    targets.target_attach_answer(encode(wire))


def test_found_an_error_field_named_self() -> None:
    """['error', 'X', {'self': ...}] raised TypeError (two values for 'self')."""
    with pytest.raises(RemoteError) as e:
        unwrap(encode(["error", "X", {"self": "a", "message": "m"}]))
    assert e.value.fields["self"] == "a"
    targets.target_unwrap(encode(["error", "PathRefused", {"self": "a"}]))


@pytest.mark.parametrize("data", [
    _tar(("x" * 300, tarfile.REGTYPE, "", 0)),  # ENAMETOOLONG
    _tar(("a", tarfile.SYMTYPE, "", 0)),  # a symlink to '': FileNotFoundError
    _tar(("0", tarfile.REGTYPE, "a", 0), ("0", tarfile.DIRTYPE, "a", 0)),  # ENOTDIR
    _tar(("0", tarfile.SYMTYPE, "a", 0), ("0", tarfile.DIRTYPE, "a", 0)),  # ELOOP
    _tar(("a", tarfile.REGTYPE, "a", 1e20), fmt=tarfile.GNU_FORMAT),  # OverflowError
    _tar(("a", tarfile.REGTYPE, "", 0), compression="gz"),  # compressed: unbounded
], ids=["long-name", "empty-link", "file-then-dir", "link-then-dir", "far-mtime", "gzip"])
def test_found_archives(data: bytes) -> None:
    """Archives that raised OSError or OverflowError instead of a refusal, or
    (compressed) could write more than they weigh."""
    targets.target_unpack(data)


def test_found_a_compressed_archive_is_refused() -> None:
    """An archive of zeros, compressed 1000 to 1, wrote a file 1000 times its size:
    only plain tar (what tree.pack writes) is taken."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("zeros")
        ti.size = 1 << 20
        tf.addfile(ti, io.BytesIO(b"\0" * ti.size))
    assert len(buf.getvalue()) < 2000
    base = Path(targets.scratch())
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BadRequest, match="not a valid tar archive"):
            tree.unpack(io.BytesIO(buf.getvalue()), fd, "bomb")
        assert not (base / "bomb").exists()
    finally:
        os.close(fd)


@pytest.mark.parametrize("text", [
    "w1 " + FURL + "  # a\x1cb\n",  # a control character in a comment ended the line
    "# header\nw1 " + FURL + "\n   # indented, last, no newline",
])
def test_found_workers_files(text: str) -> None:
    ff = furlsfile.parse(text, "f")
    assert [e.name for e in ff.entries] == ["w1"]
    assert ff.render() == text if text.endswith("\n") else text + "\n"
    targets.target_furlsfile(text.encode())


def test_found_a_policy_with_a_nul_byte() -> None:
    """A NUL in [paths] allow raised ValueError from realpath."""
    text = "[commands]\nallow = sh\n[paths]\nallow = .,\x0b\x00\x00 su_*\n"
    with pytest.raises(ConfigError, match="line 4: a NUL byte"):
        parse_policy(text, "/tmp")
    targets.target_policy(text.encode())


def test_found_a_name_that_looks_like_a_tubid_is_shown() -> None:
    """Not a leak (the fuzzer's own check was wrong): an invalid name shown up to its
    first '/' held the characters of a later FURL's bad tubid part."""
    text = ("defghijklmnopqrstuvwxyz234567@ramp/7qqukwl3vdolw0 " + FURL + "\n"
            "w1 pb://abcdefghijk/mnopqrstuvwxyz234567@t.plg.9990/x7bqq4ujkwl3vdz3pnd\n")
    with pytest.raises(ConfigError, match=r"f:1: invalid worker name '\S+@ramp/\.\.\.'") as e:
        furlsfile.parse(text, "f")
    assert SWISS not in str(e.value) and "7qqukwl3vdolw0" not in str(e.value)
    targets.target_furlsfile(text.encode())


def test_found_a_name_that_repeats_what_follows_its_slash() -> None:
    """Not a leak either (the fuzzer's check again): a name of 5s shown up to its
    '/', followed by more 5s."""
    text = "5" * 83 + "/" + "5" * 45 + "\udcf2" + "5" * 25 + "\udcbb \x00"
    with pytest.raises(ConfigError, match=r"f:1: invalid worker name '5{64}\.\.\. \(156 "
                                          r"characters\)'"):
        furlsfile.parse(text, "f")
    targets.target_furlsfile(text.encode("utf-8", "surrogateescape"))
