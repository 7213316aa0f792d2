"""The records that cross a process boundary, each defined once: the session
proof, the attach info and answer, the drain answer (the wire), the worker's
state file, the exit codes.  Each round-trips, and refuses garbage with its
one typed error (BadRequest, StateFileError), never a quiet default."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from buildbot_furl.errors import BadRequest
from buildbot_furl.protocol import encode
from buildbot_furl.protocol.messages import (
    AttachAnswer,
    AttachInfo,
    BuilderList,
    CommandArgs,
    DrainAnswer,
    FileTimes,
    PutRequest,
    FileInfo,
    ResumeState,
    RunAnswer,
    SessionProof,
    builder_names,
    decode_output,
)
from buildbot_furl.worker.statefile import (
    Attachment,
    Drain,
    StateFileError,
    Switch,
    SwitchResult,
    WorkerStatus,
    read,
)

SID, SECRET = "0123456789abcdef" * 2, "ab" * 32
PROOF = SessionProof(SID, SECRET)
SHA = "5" * 64

# -- the session proof -------------------------------------------------------------------


def test_a_session_proof_round_trips_and_never_shows_its_secret() -> None:
    assert SessionProof.from_wire(PROOF.to_wire()) == PROOF
    assert SessionProof.from_value(PROOF.to_value()) == PROOF
    assert SECRET not in repr(PROOF) and SECRET not in str(PROOF) and SID in repr(PROOF)


@pytest.mark.parametrize("value", [
    None, 5, "x", [SID, SECRET], {}, {"session": SID}, {"secret": SECRET},
    {"session": SID.upper(), "secret": SECRET}, {"session": SID, "secret": SECRET[:-1]},
    {"session": SID, "secret": SECRET + "\n"}, {"session": 1, "secret": SECRET},
    {"session": SID, "secret": b"ab" * 32},
])
def test_a_malformed_session_proof_is_a_bad_request(value: Any) -> None:
    with pytest.raises(BadRequest) as ei:
        SessionProof.from_wire(encode(value))
    assert SECRET not in str(ei.value)
    if isinstance(value, dict):  # also when made by hand: a proof in hand is well formed
        with pytest.raises(BadRequest):
            SessionProof(value.get("session"), value.get("secret"))  # type: ignore[arg-type]


def test_an_undecodable_or_oversized_proof_is_a_bad_request() -> None:
    for raw in (b"\xc1", encode({"session": SID, "secret": SECRET, "x": "y" * 70_000})):
        with pytest.raises(BadRequest):
            SessionProof.from_wire(raw)


# -- attach ----------------------------------------------------------------------------------


def test_attach_info_round_trips_with_and_without_a_proof() -> None:
    for resume in (None, PROOF):
        info = AttachInfo((1, 2), "0.1.0", {"host": "h", "numcpus": 4}, resume)
        again = AttachInfo.from_wire(info.to_wire())
        assert again == info and again.resume == resume
        assert SECRET not in repr(again)
    # an explicit nil resume is no resume
    assert AttachInfo.from_wire(encode({"protocols": [1], "version": "v", "worker_info": {},
                                        "resume": None})).resume is None


GOOD_INFO = {"protocols": [1], "version": "0.1.0", "worker_info": {"host": "h"},
             "resume": PROOF.to_value()}


@pytest.mark.parametrize("change", [
    "not a map", {"protocols": None}, {"protocols": "1"}, {"protocols": [1, "2"]},
    {"protocols": [True]}, {"protocols": [1.0]}, {"version": None}, {"version": 3},
    {"worker_info": None}, {"worker_info": []}, {"worker_info": {1: "x"}},
    {"resume": "yes"}, {"resume": {"session": SID}}, {"resume": {"session": SID, "secret": "0"}},
    {"resume": [SID, SECRET]},
])
def test_attach_info_with_garbage_is_a_bad_request(change: Any) -> None:
    """These used to be read as defaults: no protocols, version "?", no info,
    no resume (the worker then lost its session without a word)."""
    value = change if isinstance(change, str) else {**GOOD_INFO, **change}
    with pytest.raises(BadRequest):
        AttachInfo.from_wire(encode(value))
    for key in ("protocols", "version", "worker_info"):
        with pytest.raises(BadRequest):
            AttachInfo.from_wire(encode({k: v for k, v in GOOD_INFO.items() if k != key}))


def test_attach_info_cuts_a_long_version_for_display() -> None:
    info = AttachInfo.from_wire(encode({**GOOD_INFO, "version": "9" * 500}))
    assert info.version == "9" * 40


def _answer(**change: Any) -> dict[str, Any]:
    return {**AttachAnswer(1, SID, SECRET, 30.0, "0.1.0", True, ("c1",), "w1").to_wire(),
            **change}


def test_attach_answer_round_trips_and_carries_its_proof() -> None:
    a = AttachAnswer.from_wire(_answer())
    assert a == AttachAnswer(1, SID, SECRET, 30.0, "0.1.0", True, ("c1",), "w1")
    assert a.proof == PROOF and SECRET not in repr(a)
    # the fields a later master added: absent means their default
    old = {k: v for k, v in _answer().items() if k not in ("resumed", "commands", "name")}
    assert AttachAnswer.from_wire(old) == AttachAnswer(1, SID, SECRET, 30.0, "0.1.0")
    assert AttachAnswer.from_wire(_answer(grace=5)).grace == 5.0


@pytest.mark.parametrize("change", [
    {"session": "x"}, {"secret": None}, {"protocol": "1"}, {"protocol": True}, {"grace": None},
    {"grace": -1}, {"grace": float("inf")}, {"grace": "60"}, {"master_version": 1},
    {"resumed": 1}, {"resumed": None}, {"commands": "c1"}, {"commands": [1]},
    {"name": 5}, {"name": "a b"}, {"name": "x" * 65},
])
def test_attach_answer_with_garbage_is_a_bad_request(change: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as ei:
        AttachAnswer.from_wire(_answer(**change))
    assert SECRET not in str(ei.value)


def test_drain_answer() -> None:
    assert DrainAnswer.from_wire(DrainAnswer(3).to_wire()) == DrainAnswer(3)
    for bad in (None, [], {}, {"running": "2"}, {"running": -1}, {"running": True}):
        with pytest.raises(BadRequest):
            DrainAnswer.from_wire(bad)


def test_the_other_answers_refuse_garbage_instead_of_defaults() -> None:
    with pytest.raises(BadRequest):
        RunAnswer.from_wire({"rc": None})
    with pytest.raises(BadRequest):
        RunAnswer.from_wire({"rc": 0, "signal": "9"})
    with pytest.raises(BadRequest):
        RunAnswer.from_wire({"rc": 0, "failure_reason": 1})
    assert RunAnswer.from_wire(RunAnswer(1, 9, "killed").to_wire()) == RunAnswer(1, 9, "killed")
    for change in ({"size": -1}, {"mode": 0o10000}, {"manifest": "x"}):
        with pytest.raises(BadRequest):
            FileInfo.from_wire({"kind": "file", "sha256": SHA, **change})
    with pytest.raises(BadRequest):
        ResumeState.from_wire(encode({"completed": 1}))
    with pytest.raises(BadRequest):  # an item out of shape used to be dropped silently
        decode_output(encode([["stdout", "a"], ["stderr", 1]]))
    assert decode_output(encode([["stdout", "a"]])) == [("stdout", "a")]


# -- the worker's state file --------------------------------------------------------------------

STATUS = WorkerStatus(Attachment.ATTACHED, 1700000000.5, 4242, "127.0.0.1:9", None, "fid",
                      Drain.ACCEPTED, Switch("new", SwitchResult.FAILED, "timed out"), "w1")


def test_the_master_to_worker_records_round_trip() -> None:
    pairs = (("b1", "build/b1"), ("b2", "b2"))
    assert BuilderList.from_wire(BuilderList(pairs).to_wire()) == BuilderList(pairs)
    assert builder_names(["b1", "b2"]) == ["b1", "b2"]
    assert FileTimes.from_wire(FileTimes(1.5, 2).to_wire()) == FileTimes(1.5, 2)
    writer, reader = object(), object()
    # as Buildbot gives them: a writer object, a reader it set to None
    args = {"workdir": "w", "maxsize": 10, "writer": writer, "reader": None}
    wire, refs = CommandArgs.split(args)
    assert refs == {"writer": writer}
    back = CommandArgs.from_wire(wire.to_wire())
    assert back.with_refs(refs) == args  # the same keys as over PB, None included
    assert "reader" in back.with_refs({}) and "writer" not in back.with_refs({})
    put = PutRequest("ignored", "dir", SHA, "6" * 64)
    args = put.command_args("sub/tree", reader)
    assert args["path"] == "sub/tree" and args["reader"] is reader and "remote" not in args
    assert PutRequest.from_command_args(args) == PutRequest("sub/tree", "dir", SHA, "6" * 64)
    with pytest.raises(BadRequest):
        PutRequest.from_command_args({**args, "kind": "fifo"})


@pytest.mark.parametrize("make, raw", [
    (BuilderList.from_wire, encode([["b1"]])),
    (BuilderList.from_wire, encode({"b1": "d"})),
    (BuilderList.from_wire, "not bytes"),
    (CommandArgs.from_wire, encode(["a"])),
    (CommandArgs.from_wire, encode({1: "a"})),
    (CommandArgs.from_wire, encode({"writer": "a string in place of a reference"})),
    (FileTimes.from_wire, encode([1, True])),
    (FileTimes.from_wire, encode([1.0])),
    (FileTimes.from_wire, encode([1.0, float("nan")])),
    (builder_names, ["b1", 2]),
    (builder_names, {"b1": 1}),
])
def test_the_master_to_worker_records_refuse_garbage(make: Any, raw: Any) -> None:
    with pytest.raises(BadRequest):
        make(raw)


def test_arguments_that_cannot_be_encoded_are_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="cannot be sent"):
        CommandArgs({"x": object()}).to_wire()


def test_the_state_file_round_trips() -> None:
    for st in (STATUS, WorkerStatus(Attachment.CONNECTING, 1.0, 1, "h:1", "refused", "f")):
        assert WorkerStatus.from_json(st.to_json()) == st
    assert STATUS.attached and not WorkerStatus.from_json(
        STATUS.to_json().replace('"attached"', '"connecting"', 1)).attached
    # written by a daemon that did not know its name yet
    record = json.loads(STATUS.to_json())
    del record["name"]
    assert WorkerStatus.from_json(json.dumps(record)).name == ""


@pytest.mark.parametrize("change", [
    {"state": "attaching"}, {"state": None}, {"since": "now"}, {"since": True}, {"pid": 0},
    {"pid": "42"}, {"pid": 1.5}, {"master": None}, {"last_error": 3}, {"furl_id": None},
    {"drain": "maybe"}, {"drain": True}, {"switch": "x"}, {"switch": {"furl_id": "f"}},
    {"switch": {"furl_id": "f", "result": "won", "error": None}}, {"name": None},
])
def test_a_damaged_state_file_is_a_state_file_error(change: dict[str, Any]) -> None:
    with pytest.raises(StateFileError):
        WorkerStatus.from_json(json.dumps({**json.loads(STATUS.to_json()), **change}))


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '{"drain": "unsupported"}',
                                  '{"state": "attached"}', "NaN"])
def test_a_foreign_file_is_a_state_file_error(text: str) -> None:
    with pytest.raises(StateFileError):
        WorkerStatus.from_json(text)


def test_read_names_the_damaged_file(tmp_path: Path) -> None:
    path = str(tmp_path / "furl-worker.state")
    assert read(path) is None  # none yet: no worker ran here
    Path(path).write_text(STATUS.to_json())
    assert read(path) == STATUS
    for data in (b'{"pid": 1}', b"\xff\xfe", b"{" + b" " * 70_000 + b"}"):
        Path(path).write_bytes(data)
        with pytest.raises(StateFileError, match="furl-worker.state"):
            read(path)
    if os.geteuid() != 0:
        Path(path).write_text(STATUS.to_json())
        os.chmod(path, 0)
        with pytest.raises(StateFileError, match="cannot read"):
            read(path)


# -- exit codes ---------------------------------------------------------------------------------


def test_exit_codes_are_defined_once_for_the_daemons_and_the_cli() -> None:
    from buildbot_furl import exits
    from buildbot_furl.cli import exits as cli_exits

    assert cli_exits.Exit is exits.Exit and cli_exits.MEANING is exits.MEANING
    assert set(exits.MEANING) == set(exits.Exit)


def _running(monkeypatch: pytest.MonkeyPatch, pid: int) -> None:
    from buildbot_furl.cli import worker_cmds

    class Pidfile:
        def running_pid(self) -> int | None:
            return pid

    monkeypatch.setattr(worker_cmds, "_pidfile", lambda paths: Pidfile())


def test_status_says_a_running_workers_state_file_is_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It used to be read as empty: 'not attached', exit 4, whatever the worker did."""
    from buildbot_furl.cli import worker_cmds
    from buildbot_furl.exits import Exit

    _running(monkeypatch, STATUS.pid)
    state = tmp_path / "furl-worker.state"
    state.write_text(STATUS.to_json())
    worker_cmds.status(str(tmp_path), False)  # attached: exit 0
    assert "attached to the master at 127.0.0.1:9 as 'w1'" in capsys.readouterr().out
    state.write_text('{"state": "attached", "pid": 4242}')
    with pytest.raises(SystemExit) as ei:
        worker_cmds.status(str(tmp_path), False)
    out = capsys.readouterr().out
    assert ei.value.code == Exit.ERROR
    assert out.splitlines()[0] == (f"running (pid 4242): attached or not, unknown: {state} is "
                                   "damaged or not a worker's state file: 'since' is not a time")
    with pytest.raises(SystemExit):
        worker_cmds.status(str(tmp_path), True)
    record = json.loads(capsys.readouterr().out)
    assert record["state_error"].startswith(str(state)) and not record["attached"]
