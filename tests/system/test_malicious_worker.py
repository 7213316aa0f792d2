"""A worker holding a valid FURL that breaks the protocol, against a real
furl-master daemon: every misdeed is refused with a typed error and a log
line naming the worker, the master goes on serving everyone else, and the
worker is cut off after a few of them.

The misbehaving worker runs in this process (pytest-twisted's reactor): a
Tub that attaches with a bot of its own, which does what it likes when the
master asks it to run a command (started with ``furl-master run`` or
``get``, from a thread).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from foolscap.api import Referenceable
from twisted.internet import defer, reactor, threads
from zope.interface import implementer

from buildbot_furl import tree
from buildbot_furl.protocol import MAX_PAYLOAD, PROTOCOL_VERSIONS, RIWorkerBot, call, encode
from buildbot_furl.protocol import remote_method
from buildbot_furl.protocol.messages import AttachInfo, encode_failure
from buildbot_furl.tubs import make_tub
from buildbot_furl.testing.farm import Farm
from buildbot_furl.testing.waiting import sleep

# the worker 'evil' breaks the protocol on purpose: refused, then cut off
pytestmark = pytest.mark.expect_log(r"worker evil: refused ",
                                    r"worker evil\b.*cut off after \d+ protocol violations")

Misdeed = Callable[[Any, Any, Any], Any]  # (status, writer, reader) -> Deferred


@implementer(RIWorkerBot)
class EvilBot(Referenceable):
    """Answers what it must to be attached; on startCommand, runs ``misdeed``."""

    def __init__(self, misdeed: Misdeed) -> None:
        self.misdeed = misdeed
        self.done: defer.Deferred[Any] = defer.Deferred()

    @remote_method
    def remote_ping(self) -> str:
        return "pong"

    @remote_method
    def remote_print(self, message: str) -> None:
        pass

    @remote_method
    def remote_getWorkerInfo(self) -> dict[str, Any]:
        return {}

    @remote_method
    def remote_setBuilderList(self, builders: bytes) -> list[str]:
        from buildbot_furl.protocol import decode

        return sorted(name for name, _ in decode(builders))

    @remote_method
    def remote_startBuild(self, builder: str) -> None:
        pass

    @remote_method
    def remote_startCommand(self, builder: str, command_id: str, command: str, args: bytes,
                            status: Any, writer: Any, reader: Any) -> None:
        d = defer.maybeDeferred(self.misdeed, status, writer, reader)
        d.addBoth(lambda r: self.done.called or self.done.callback(r))

    @remote_method
    def remote_interruptCommand(self, builder: str, command_id: str, why: str) -> None:
        pass

    @remote_method
    def remote_shutdown(self) -> None:
        pass

    @remote_method
    def remote_resumeCommand(self, *args: Any) -> str:
        return "unknown"


async def _attach(furl: str, bot: EvilBot) -> Any:
    tub = make_tub(None, keepalive=0, disconnect_timeout=0)
    tub.startService()
    login = await tub.getReference(furl)
    await call(login, "attach", bot, AttachInfo(PROTOCOL_VERSIONS, "evil", {}).to_wire())
    return tub


async def _outcome(d: Any) -> Any:
    try:
        return await d
    except Exception as e:  # noqa: BLE001 - the refusal is what we look at
        return e


def _log(farm: Farm) -> str:
    return (farm.mdir / "master.log").read_text()


async def _run_with(farm: Farm, misdeed: Misdeed, *cmd: str) -> tuple[Any, Any]:
    """Attach an evil worker 'evil', have the master run ``cmd`` on it; the
    CLI's result and the misdeed's."""
    bot = EvilBot(misdeed)
    tub = await _attach(farm.furls["evil"], bot)
    try:
        p = await threads.deferToThread(farm.run, "evil", *(cmd or ("true",)), timeout=60)
        return p, await bot.done
    finally:
        await tub.stopService()


@pytest.fixture
def evil_farm(farm: Farm) -> Farm:
    farm.create_worker("evil")
    farm.create_worker("good")
    farm.start_master()
    farm.start_worker("good", farm.furls["good"])
    return farm


def _unchecked(ref: Any) -> Any:
    """``ref`` with foolscap's outbound argument checks switched off, as a
    worker that does not use our interfaces would send: the master's
    inbound checks are what is tested."""
    real = ref._getMethodInfo

    def without_schema(name: str) -> tuple[Any, Any, None]:
        interface, method, _schema = real(name)
        return interface, method, None

    ref._getMethodInfo = without_schema
    return ref


async def _finish(status: Any, seq: int = 1) -> None:
    await call(status, "update", seq, encode([["rc", 0]]))
    await call(status, "complete", seq + 1, encode_failure(None))


@pytest_twisted.ensureDeferred
async def test_malformed_oversized_and_out_of_order_updates_are_refused(
        evil_farm: Farm) -> None:
    farm = evil_farm

    async def misdeed(status: Any, writer: Any, reader: Any) -> list[Any]:
        seen = []
        # too big for the interface: refused on receipt, before any decoding
        d = _unchecked(status).callRemote("update", 1, b"x" * (MAX_PAYLOAD + 1))
        seen.append(await _outcome(d))
        seen.append(await _outcome(call(status, "update", 1, b"\xc1 garbage")))
        seen.append(await _outcome(call(status, "update", 1, encode([["rc", "not a number"]]))))
        seen.append(await call(status, "update", 1, encode([["stdout", "one\n"]])))
        seen.append(await _outcome(call(status, "update", 7, encode([["stdout", "jump\n"]]))))
        seen.append(await call(status, "update", 1, encode([["stdout", "one\n"]])))  # a replay
        await _finish(status, 2)
        seen.append(await _outcome(call(status, "update", 9, encode([["stdout", "late\n"]]))))
        return seen

    p, seen = await _run_with(farm, misdeed, "true")
    assert p.returncode == 0 and p.stdout == b"one\n"  # what was proper got through, once
    kinds = [type(x).__name__ for x in seen]
    assert kinds[0] in ("Violation", "RemoteException")  # foolscap's own refusal
    assert kinds[1:3] == ["BadRequest", "BadRequest"] and kinds[4] == "BadRequest"
    assert seen[3] == 1 and seen[5] == 1 and kinds[6] == "BadRequest"
    log = _log(farm)
    for what in ("call out of the protocol's bounds", "malformed update batch",
                 "update batch 7 after batch 1", "for a command that has ended"):
        assert "worker evil: refused" in log and what in log, what
    # the master goes on serving everyone else
    good = await threads.deferToThread(farm.run, "good", "echo", "fine")
    assert good.returncode == 0 and good.stdout == b"fine\n"


@pytest_twisted.ensureDeferred
async def test_a_worker_that_keeps_breaking_the_protocol_is_cut_off(evil_farm: Farm) -> None:
    farm = evil_farm

    async def misdeed(status: Any, writer: Any, reader: Any) -> int:
        refused = 0
        for _ in range(12):
            if isinstance(await _outcome(call(status, "update", 5, encode([]))), Exception):
                refused += 1
        return refused

    p, refused = await _run_with(farm, misdeed, "true")
    assert refused >= 10
    assert p.returncode == 2  # the run ended with its worker
    assert "cut off after 10 protocol violations" in _log(farm)
    good = await threads.deferToThread(farm.run, "good", "true")
    assert good.returncode == 0


def _evil_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("fine.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": "/tmp/evil-furl.txt",
                               "symlink": "link", "device": "dev",
                               "dangling": "lf/link"}[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../.."
        elif kind == "dangling":  # leads out once the admin has a directory lf/x (issue 16)
            bad.type, bad.linkname = tarfile.SYMTYPE, "x/../../../evil.txt"
        elif kind == "device":
            bad.type = tarfile.CHRTYPE
        else:
            bad.size = 4
        tf.addfile(bad, io.BytesIO(b"evil") if bad.isreg() else None)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device", "dangling"])
@pytest_twisted.ensureDeferred
async def test_a_hostile_archive_is_refused_and_nothing_lands(evil_farm: Farm, tmp_path: Path,
                                                              kind: str) -> None:
    farm = evil_farm
    payload = _evil_tar(kind)
    manifest = "0" * 64
    if kind == "dangling":  # the true manifest: only the link check may refuse it
        model = tmp_path / "model"
        (model / "lf").mkdir(parents=True)
        (model / "fine.txt").write_bytes(b"ok")
        (model / "lf" / "link").symlink_to("x/../../../evil.txt")
        manifest = tree.manifest_path(str(model))

    async def misdeed(status: Any, writer: Any, reader: Any) -> None:
        import hashlib

        await _outcome(call(writer, "write", 0, payload))
        await _outcome(call(writer, "unpack"))
        info = {"kind": "dir", "sha256": hashlib.sha256(payload).hexdigest(),
                "manifest": manifest, "size": len(payload), "mode": 0o755}
        await call(status, "update", 1, encode([["furl", info], ["rc", 0]]))
        await call(status, "complete", 2, encode_failure(None))

    bot = EvilBot(misdeed)
    tub = await _attach(farm.furls["evil"], bot)
    out = tmp_path / "out"
    out.mkdir()
    try:
        p = await threads.deferToThread(farm.master, "get", "evil", "tree", str(out / "t"))
        await bot.done
    finally:
        await tub.stopService()
    assert p.returncode == 2 and "cannot unpack the directory" in p.stderr, p.stderr
    assert list(out.iterdir()) == [] and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-furl.txt").exists()


@pytest_twisted.ensureDeferred
async def test_a_worker_that_never_answers_is_cut_off(farm: Farm) -> None:
    farm.configure(call_timeout=2)
    farm.create_worker("evil")
    farm.start_master()

    def hang(status: Any, writer: Any, reader: Any) -> Any:
        return None

    bot = EvilBot(hang)
    bot.remote_setBuilderList = lambda builders: defer.Deferred()  # never answers
    tub = await _attach(farm.furls["evil"], bot)
    try:
        p = await threads.deferToThread(farm.run, "evil", "true", timeout=60)
    finally:
        await tub.stopService()
    assert p.returncode == 2
    assert "did not answer setBuilderList within 2 s" in _log(farm)
    await sleep(0)


