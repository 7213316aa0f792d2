"""Protocol layer: envelopes, typed errors, payload bounds, attach rules."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from buildbot_furl import errors, furlsfile
from buildbot_furl.furl import Furl, new_swissnum
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.protocol import (
    MAX_PAYLOAD,
    PROTOCOL_VERSIONS,
    decode,
    encode,
    remote_method,
    unwrap,
)
from buildbot_furl.protocol.messages import AttachAnswer, AttachInfo, SessionProof
from buildbot_furl.testing.fakes import FakeBot
from buildbot_furl.tubs import make_tub


def _info(protocols: list[int]) -> AttachInfo:
    return AttachInfo(tuple(protocols), "test", {})


class Thing:
    @remote_method
    def remote_ok(self) -> dict[str, int]:
        return {"a": 1}

    @remote_method
    def remote_typed(self) -> None:
        raise errors.PathRefused("nope", path="x")

    @remote_method
    async def remote_crash(self) -> None:
        raise ZeroDivisionError("secret detail")


@pytest_twisted.inlineCallbacks
def test_envelopes_carry_values_and_typed_errors() -> Any:
    t = Thing()
    assert unwrap((yield t.remote_ok())) == {"a": 1}
    with pytest.raises(errors.PathRefused) as ei:
        unwrap((yield t.remote_typed()))
    assert str(ei.value) == "nope" and ei.value.fields == {"path": "x"}
    raw = yield t.remote_crash()
    with pytest.raises(errors.RemoteError) as ei2:
        unwrap(raw)
    assert "crash failed" in str(ei2.value)


def test_unknown_error_class_becomes_remote_error() -> None:
    e = errors.from_wire("SomethingNew", {"message": "m", "k": "v"})
    assert type(e) is errors.RemoteError
    assert e.fields == {"k": "v", "remote_class": "SomethingNew"}


def test_malformed_answers_and_payloads_are_bad_requests() -> None:
    for raw in (b"\xc1", encode(["maybe", 1]), encode(["error", 3, {}]), encode(5)):
        with pytest.raises(errors.BadRequest):
            unwrap(raw)
    with pytest.raises(errors.BadRequest):
        encode("x" * (MAX_PAYLOAD + 1))
    assert decode(encode({"t": (1, 2), "b": b"\x00"})) == {"t": [1, 2], "b": b"\x00"}


def _registry(tmp_path: Any) -> tuple[WorkerRegistry, str]:
    tub = make_tub(str(tmp_path / "tub.pem"))
    path = str(tmp_path / "workers.furls")
    tubid = tub.getTubID()
    swiss = new_swissnum()
    with furlsfile.update(path, tubid) as ff:
        ff.add("w1", Furl(tubid, ("tcp:127.0.0.1:9",), swiss))
    reg = WorkerRegistry(tub, path)
    reg.reload(strict=True)
    return reg, swiss


@pytest_twisted.ensureDeferred
async def test_attach_negotiates_and_refuses(tmp_path: Any) -> None:
    reg, swiss = _registry(tmp_path)
    login = reg._lookup(swiss)
    assert login is not None and reg._lookup("x" * 32) is None
    with pytest.raises(errors.IncompatibleProtocol):
        await reg.attach(login, FakeBot(), _info([99]))
    reply = await reg.attach(login, FakeBot(), _info([0, *PROTOCOL_VERSIONS]))
    assert reply["protocol"] == max(PROTOCOL_VERSIONS) and len(reply["session"]) == 32
    assert reg.sessions["w1"].peer == "127.0.0.1:4242"
    # the first connection still answers pings: a second one is refused
    with pytest.raises(errors.DuplicateWorker):
        await reg.attach(login, FakeBot(), _info([1]))
    # rotation: the old login object is dead even for a holder of it
    with furlsfile.update(reg.furls_path, reg.tubid) as ff:
        ff.replace_furl("w1", Furl(reg.tubid, ("tcp:127.0.0.1:9",), new_swissnum()))
    reg.reload()
    assert reg._lookup(swiss) is None
    with pytest.raises(errors.Revoked):
        await reg.attach(login, FakeBot(), _info([1]))


@pytest_twisted.ensureDeferred
async def test_leave_and_drain_take_a_session_proof(tmp_path: Any) -> None:
    """A malformed proof is a BadRequest answer; a well-formed one of another
    session is no session (leave: False; drain: BadRequest, as before)."""
    reg, swiss = _registry(tmp_path)
    login = reg._lookup(swiss)
    answer = AttachAnswer.from_wire(await reg.attach(login, FakeBot(), _info([1])))
    for garbage in (b"\xc1", encode(5), encode({"session": answer.session})):
        for method in (login.remote_leave, login.remote_drain):
            with pytest.raises(errors.BadRequest):
                unwrap(await defer.maybeDeferred(method, garbage))
    other = SessionProof(answer.session, "0" * 64).to_wire()
    assert unwrap(await defer.maybeDeferred(login.remote_leave, other)) is False
    with pytest.raises(errors.BadRequest, match="current session"):
        unwrap(await defer.maybeDeferred(login.remote_drain, other))
    assert unwrap(await defer.maybeDeferred(login.remote_drain,
                                            answer.proof.to_wire())) == {"running": 0}
    assert unwrap(await defer.maybeDeferred(login.remote_leave, answer.proof.to_wire()))
    assert "w1" not in reg.sessions or reg.sessions["w1"].gone


@pytest_twisted.ensureDeferred
async def test_sessions_resume_only_with_their_secret(tmp_path: Any) -> None:
    reg, swiss = _registry(tmp_path)
    reg.grace = lambda name: 60.0
    login = reg._lookup(swiss)
    bot1 = FakeBot()
    first = AttachAnswer.from_wire(await reg.attach(login, bot1, _info([1])))
    assert not first.resumed and first.grace == 60
    session = reg.sessions["w1"]
    bot1.lose()  # the connection drops: the session is kept for its grace period
    assert not session.attached and not session.gone
    bot2 = FakeBot()
    proof = AttachInfo((1,), "t", {}, first.proof)
    again = AttachAnswer.from_wire(await reg.attach(login, bot2, proof))
    assert again.resumed and again.session == first.session
    assert reg.sessions["w1"] is session and session.bot is bot2 and session.attached
    bot2.lose()
    wrong = AttachInfo((1,), "t", {}, SessionProof(first.session, "0" * 64))
    fresh = AttachAnswer.from_wire(await reg.attach(login, FakeBot(), wrong))
    assert not fresh.resumed and fresh.session != first.session
    assert session.gone and reg.sessions["w1"] is not session
    # the secret is never shown
    assert first.secret not in repr(proof) and first.secret not in repr(first)
    assert session.secret == ""  # handed out once, kept only as a digest


@pytest_twisted.ensureDeferred
async def test_a_session_without_grace_ends_with_its_connection(tmp_path: Any) -> None:
    reg, swiss = _registry(tmp_path)
    login = reg._lookup(swiss)
    bot = FakeBot()
    await reg.attach(login, bot, _info([1]))
    session = reg.sessions["w1"]
    bot.lose()
    assert session.gone and "w1" not in reg.sessions


def test_bad_edit_keeps_the_previous_workers(tmp_path: Any) -> None:
    reg, swiss = _registry(tmp_path)
    with open(reg.furls_path, "a") as f:
        f.write("broken\n")
    assert reg.reload() is False
    assert reg._lookup(swiss) is not None


@pytest_twisted.ensureDeferred
async def test_oversized_and_malformed_attach_over_the_wire(tmp_path: Any) -> None:
    """A peer holding a valid FURL cannot make the master decode an unbounded
    payload, nor crash it with garbage: it gets an error and the next attach works."""
    from buildbot_furl.testing.procs import free_port
    from foolscap.api import Referenceable
    from zope.interface import implementer

    from buildbot_furl.protocol import RIWorkerBot, call
    from buildbot_furl.tubs import listen

    @implementer(RIWorkerBot)
    class Bot(Referenceable):
        @remote_method
        def remote_ping(self) -> str:
            return "pong"

    reg, swiss = _registry(tmp_path)
    port = free_port()
    reg.tub.startService()
    _, listening = listen(reg.tub, f"tcp:{port}:interface=127.0.0.1")
    await listening
    reg.tub.setLocation(f"tcp:127.0.0.1:{port}")
    reg.tub.registerNameLookupHandler(reg._lookup)
    client = make_tub(None)
    client.startService()
    try:
        login = await client.getReference(f"pb://{reg.tubid}@tcp:127.0.0.1:{port}/{swiss}")
        # our side checks outbound arguments too ...
        with pytest.raises(errors.BadRequest):
            await call(login, "attach", Bot(), b"\x00" * (MAX_PAYLOAD + 1))
        # ... so skip that, as a hostile peer would: the master refuses it on receipt
        with pytest.raises((errors.RemoteError, errors.ConnectionLost)):
            await call(login, "attach", Bot(), b"\x00" * (MAX_PAYLOAD + 1), _useSchema=False)
        assert reg.sessions == {}
        with pytest.raises(errors.BadRequest):
            await call(login, "attach", Bot(), b"\xc1garbage")
        # decodable, but out of shape: refused, not read as defaults
        with pytest.raises(errors.BadRequest, match="protocol versions"):
            await call(login, "attach", Bot(), encode({"protocols": "1", "version": "t",
                                                       "worker_info": {}}))
        with pytest.raises(errors.RemoteError):
            await call(login, "attach", "not a bot", encode({}), _useSchema=False)
        login = await client.getReference(f"pb://{reg.tubid}@tcp:127.0.0.1:{port}/{swiss}")
        reply = await call(login, "attach", Bot(), AttachInfo((1,), "t", {}).to_wire())
        assert reply["protocol"] == 1
    finally:
        await client.stopService()
        await reg.tub.stopService()


def test_tcp_listeners_get_a_deep_backlog() -> None:
    """Twisted's default backlog (50) overflows when a thousand workers redial
    a restarted master; a description that names its own is left alone."""
    from buildbot_furl.tubs import LISTEN_BACKLOG, with_backlog

    assert with_backlog("tcp:9990:interface=127.0.0.1") == \
        f"tcp:9990:interface=127.0.0.1:backlog={LISTEN_BACKLOG}"
    assert with_backlog("tcp6:9990") == f"tcp6:9990:backlog={LISTEN_BACKLOG}"
    assert with_backlog("tcp:9990:backlog=5") == "tcp:9990:backlog=5"
    assert with_backlog("unix:/run/furl.sock") == "unix:/run/furl.sock"


def test_a_reload_that_adds_thousands_logs_a_few_lines(tmp_path: Any) -> None:
    from twisted.logger import globalLogPublisher

    from buildbot_furl.master.registry import NAMED_IN_LOG

    reg, _ = _registry(tmp_path)
    tubid = reg.tubid
    with furlsfile.update(reg.furls_path, tubid) as ff:
        for i in range(2, 1002):
            ff.add(f"w{i}", Furl(tubid, ("tcp:127.0.0.1:9",), new_swissnum()))
    lines: list[str] = []

    def seen(event: dict[str, Any]) -> None:
        if "added" in event.get("log_format", "") or "FURL" in event.get("log_format", ""):
            lines.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(seen)
    try:
        assert reg.reload()
    finally:
        globalLogPublisher.removeObserver(seen)
    assert len(reg.entries) == 1001 and reg.by_name["w1001"] is not None
    assert len(lines) == NAMED_IN_LOG + 1, lines[-3:]
    assert lines[0] == "worker w2 added"
    assert lines[-1] == f"... and {1000 - NAMED_IN_LOG} more workers added (w22 to w1001)"
    # and taking them out again
    with furlsfile.update(reg.furls_path, tubid) as ff:
        for i in range(2, 1002):
            ff.remove(f"w{i}")
    lines.clear()
    globalLogPublisher.addObserver(seen)
    try:
        assert reg.reload()
    finally:
        globalLogPublisher.removeObserver(seen)
    assert list(reg.entries) == ["w1"] and "w500" not in reg.by_name
    assert len(lines) == NAMED_IN_LOG + 1, lines[-3:]
    assert lines[0] == "worker w2 revoked: its old FURL no longer works"
    assert lines[-1].startswith(f"... and {1000 - NAMED_IN_LOG} more workers revoked")


@pytest_twisted.ensureDeferred
async def test_a_missing_workers_furls_keeps_the_last_good_list(tmp_path: Any) -> None:
    """A moved file or an NFS lapse must not revoke every worker: only an
    existing file that says so removes workers."""
    import os

    reg, swiss = _registry(tmp_path)
    login = reg._lookup(swiss)
    await reg.attach(login, FakeBot(), _info([1]))
    session = reg.sessions["w1"]
    aside = reg.furls_path + ".aside"
    os.rename(reg.furls_path, aside)
    reg.poll()
    assert reg._lookup(swiss) is login and reg.sessions.get("w1") is session
    assert reg.problem is not None and "missing" in reg.problem
    assert session.state == "attached"
    os.rename(aside, reg.furls_path)
    reg.poll()
    assert reg.problem is None and reg._lookup(swiss) is login
    # an existing, empty file does remove the worker
    with furlsfile.update(reg.furls_path, reg.tubid) as ff:
        ff.remove("w1")
    reg.poll()
    assert reg._lookup(swiss) is None


class _SilentBot(FakeBot):
    """A thief's first connection: attached, and never answers a ping."""

    def callRemote(self, method: str, *args: Any) -> Any:
        return defer.Deferred()


@pytest_twisted.ensureDeferred
async def test_a_rotation_during_an_attach_never_yields_a_session(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thief holds connection A (ignoring the duplicate-check ping) and starts a
    second attach B on the same login; the admin rotates meanwhile.  B must not
    become the worker, and the real worker's new FURL must attach."""
    from buildbot_furl.master import registry as registry_module

    monkeypatch.setattr(registry_module, "DUPLICATE_PING_TIMEOUT", 0.2)
    monkeypatch.setattr(registry_module, "REFUSED_HANGUP_DELAY", 0.0)
    reg, swiss = _registry(tmp_path)
    login = reg._lookup(swiss)
    await reg.attach(login, _SilentBot(), _info([1]))  # A
    pending = defer.Deferred.fromCoroutine(reg.attach(login, FakeBot(), _info([1])))  # B
    assert login.attaching, "B is waiting on A's ping"
    new = new_swissnum()
    with furlsfile.update(reg.furls_path, reg.tubid) as ff:
        ff.replace_furl("w1", Furl(reg.tubid, ("tcp:127.0.0.1:9",), new))
    reg.reload()
    assert "w1" not in reg.sessions  # A was dropped
    with pytest.raises(errors.Revoked):
        await pending
    assert "w1" not in reg.sessions
    fresh = await reg.attach(reg._lookup(new), FakeBot(), _info([1]))
    assert AttachAnswer.from_wire(fresh).session and "w1" in reg.sessions
    # the old login, called again (in a loop, say), is refused without a log line each
    for _ in range(5):
        with pytest.raises(errors.Revoked):
            await reg.attach(login, FakeBot(), _info([1]))
    assert reg.refusals.total >= 5


@pytest_twisted.ensureDeferred
async def test_an_oversized_or_malformed_attach_is_refused_before_decoding(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 MiB of empty msgpack arrays would decode to ~300 MB of lists: the size is
    checked first, the refusal is counted (rationed log) and the caller cut."""
    import resource

    from buildbot_furl.master import registry as registry_module
    from buildbot_furl.protocol import unwrap

    cut: list[str] = []
    monkeypatch.setattr(registry_module, "sever", lambda bot, why: cut.append(why))
    monkeypatch.setattr(registry_module, "REFUSED_HANGUP_DELAY", 0.0)
    reg, swiss = _registry(tmp_path)
    login = reg._lookup(swiss)
    bomb = b"\xdc\x00\x40" + (b"\xdc\xff\xff" + b"\x90" * 65535) * 64
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for payload, why in ((bomb, "too large"), (b"\xc1", "undecodable")):
        with pytest.raises(errors.BadRequest, match=why):
            unwrap(await login.remote_attach(FakeBot(), payload))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 50_000, f"RSS grew by {grown} KiB"
    # decodable garbage is refused, counted and cut the same way (it was read as
    # defaults: no protocols, so an IncompatibleProtocol answer, uncounted)
    good = {"protocols": [1], "version": "t", "worker_info": {}}
    for value in (5, {**good, "protocols": None}, {**good, "version": 1},
                  {**good, "worker_info": []}, {**good, "resume": {"session": "x"}}):
        with pytest.raises(errors.BadRequest):
            unwrap(await login.remote_attach(FakeBot(), encode(value)))
    await defer.Deferred.fromCoroutine(_turn())
    assert reg.refusals.total == 7 and len(cut) == 7
    assert "w1" not in reg.sessions


async def _turn() -> None:
    from twisted.internet import reactor, task

    await task.deferLater(reactor, 0.01, lambda: None)


class _CutBot(FakeBot):
    """A connection that is cut while ``shutdown`` is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def callRemote(self, method: str, *args: Any) -> Any:
        from foolscap.api import DeadReferenceError

        self.calls.append(method)
        self.lose()
        return defer.fail(DeadReferenceError("cut"))


@pytest_twisted.ensureDeferred
async def test_a_shutdown_lost_with_a_cut_is_sent_again_after_the_resume(
        tmp_path: Any) -> None:
    """A graceful stop must not hang because the cut took the master's call."""
    from buildbot_furl.master.connection import FurlConnection

    reg, swiss = _registry(tmp_path)
    reg.grace = lambda name: 60.0
    login = reg._lookup(swiss)
    first = _CutBot()
    answer = AttachAnswer.from_wire(await reg.attach(login, first, _info([1])))
    session = reg.sessions["w1"]
    done = FurlConnection(session).remoteShutdown()
    assert first.calls == ["shutdown"] and not done.called  # lost with the link
    second = FakeBot()
    sent: list[str] = []
    orig = second.callRemote
    second.callRemote = lambda method, *a: (sent.append(method), orig(method, *a))[1]
    proof = AttachInfo((1,), "test", {}, answer.proof)
    await reg.attach(login, second, proof)  # the worker resumes its session
    await done
    assert sent == ["shutdown"]
    session.end("test over")


@pytest_twisted.ensureDeferred
async def test_a_link_lost_while_attaching_frees_the_name_at_once(tmp_path: Any) -> None:
    """The worker never got the session's secret: no grace keeps a session
    nobody can resume, so its next attach is not refused (seen in CI: Buildbot's
    attach waited for the lost link for the whole grace period, and every
    retry was "attaching from elsewhere right now")."""
    reg, swiss = _registry(tmp_path)
    reg.grace = lambda name: 60.0
    login = reg._lookup(swiss)
    taking: defer.Deferred[None] = defer.Deferred()
    reg.on_attach = lambda session: taking  # Buildbot takes its time
    first = FakeBot()
    attaching = defer.ensureDeferred(reg.attach(login, first, _info([1])))
    session = reg.sessions["w1"]
    first.lose()  # before the answer reached the worker
    assert session.gone and "w1" not in reg.sessions
    taking.errback(errors.ConnectionLost("gone"))  # what Buildbot's calls then say
    with pytest.raises(errors.ConnectionLost):
        await attaching
    reg.on_attach = None
    again = AttachAnswer.from_wire(await reg.attach(login, FakeBot(), _info([1])))
    assert not again.resumed and again.grace == 60  # the grace, once it has the secret
