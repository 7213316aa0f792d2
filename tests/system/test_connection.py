"""FurlConnection against a real FurlBot, over two hardened Tubs on 127.0.0.1.

Master side: FurlConnection + CommandStatus, with Buildbot's own file
writers and readers (buildbot.process.remotetransfer) as a Buildbot step
hands them over.  Worker side: buildbot-worker's own commands run by
buildbot_furl.worker.bot.FurlBot.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from foolscap.util import allocate_tcp_port
from twisted.internet import defer, reactor
from twisted.python.failure import Failure

from buildbot_furl.errors import BadRequest, CommandFailed, PathRefused, RemoteError
from buildbot.process.remotetransfer import DirectoryWriter, FileReader, FileWriter
from buildbot_worker.commands.base import command_version
from buildbot_furl.master.commands import CommandStatus
from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.files import FileReaderAdapter, FileWriterAdapter
from buildbot_furl.master.session import WorkerSession, peer_of
from buildbot_furl.protocol.messages import AttachInfo
from buildbot_furl.protocol import MAX_CHUNK, encode, unwrap
from buildbot_furl.tubs import make_tub
from buildbot_furl.worker.bot import FurlBot
from buildbot_furl.testing.timing import Timing
from buildbot_furl.testing.waiting import sleep

BUILDER = "b1"
BUILDDIR = "b1dir"


async def within(d: defer.Deferred[Any], seconds: float) -> Any:
    d.addTimeout(seconds, reactor)
    return await d


class FakeRemoteCommand:
    """Records what Buildbot's RemoteCommand would be given."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.chunks: dict[str, list[str]] = {}
        self.values: dict[str, list[Any]] = {}
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.completions = 0
        self.failure: Any = None

    def remote_update(self, updates: list[Any]) -> int:
        self.calls.append(updates)
        for update, num in updates:
            assert num == 0
            assert isinstance(update, dict) and len(update) == 1
            for key, value in update.items():
                if key in ("stdout", "stderr", "header"):
                    self.chunks.setdefault(key, []).append(value)
                else:
                    self.values.setdefault(key, []).append(value)
        return 0

    def remote_complete(self, failure: Any = None) -> None:
        self.completions += 1
        self.failure = failure
        if not self.done.called:
            self.done.callback(None)

    def text(self, key: str) -> str:
        return "".join(self.chunks.get(key, []))

    @property
    def rc(self) -> Any:
        return self.values.get("rc", [None])[-1]


class Pair:
    """A FurlBot on a 'worker' Tub and a FurlConnection on a 'master' Tub."""

    async def start(self, basedir: Path) -> Pair:
        self.basedir = basedir
        basedir.mkdir(parents=True, exist_ok=True)
        self.wtub = make_tub()
        self.mtub = make_tub()
        port = allocate_tcp_port()
        self.wtub.listenOn(f"tcp:{port}:interface=127.0.0.1")
        self.wtub.setLocation(f"127.0.0.1:{port}")
        self.wtub.startService()
        self.mtub.startService()
        self.bot = FurlBot(str(basedir))
        self.bot.startService()
        furl = self.wtub.registerReference(self.bot)
        self.rref = await self.mtub.getReference(furl)
        self.session = WorkerSession("w1", self.rref, AttachInfo((1,), "test", {"x": "y"}), 1,
                                     peer_of(self.rref))
        self.conn = FurlConnection(self.session)
        return self

    async def stop(self) -> None:
        await defer.maybeDeferred(self.bot.stopService)
        for tub in (self.mtub, self.wtub):
            if tub.running:
                await tub.stopService()

    async def run(self, command: str, args: dict[str, Any], timeout: float = 30,
                  builder: str = BUILDER) -> FakeRemoteCommand:
        rc = FakeRemoteCommand()
        self.seq = getattr(self, "seq", 0) + 1
        await self.conn.remoteStartCommand(rc, builder, str(self.seq), command, args)
        await within(rc.done, timeout)
        assert rc.failure is None, rc.failure
        return rc

    def path(self, *parts: str) -> Path:
        return self.basedir.joinpath(BUILDDIR, *parts)


@pytest_twisted.async_yield_fixture(scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory):
    p = await Pair().start(tmp_path_factory.mktemp("worker"))
    names = await p.conn.remoteSetBuilderList([(BUILDER, BUILDDIR), ("b2", "b2dir")])
    assert names == [BUILDER, "b2"]
    yield p
    await p.stop()


def shell(cmd: list[str] | tuple[str, ...] | str, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"workdir": "build", "command": cmd, "env": None,
                            "timeout": None, "logEnviron": False}
    args.update(extra)
    return args


# -- the Connection API ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_worker_info_and_peer(pair: Pair) -> None:
    assert pair.conn.info == {"x": "y"}  # from attach, until the master sets it
    info = await pair.conn.remoteGetWorkerInfo()
    assert info["basedir"] == str(pair.basedir)
    assert info["system"] == os.name
    # buildbot-worker's own command version (3.2 in 4.0.4, 3.3 from 4.1.0)
    assert info["worker_commands"]["shell"] == command_version
    assert info["worker_commands"]["uploadDirectory"] == command_version
    assert isinstance(info["environ"], dict) and "PATH" in info["environ"]
    assert "version" in info and "numcpus" in info
    host, port = pair.conn.get_peer().rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert await pair.conn.remotePrint(message="hello") is None
    assert await pair.conn.remoteStartBuild(BUILDER) is None
    with pytest.raises(BadRequest):
        await pair.conn.remoteStartBuild("nope")


@pytest_twisted.ensureDeferred
async def test_set_builder_list(pair: Pair) -> None:
    names = await pair.conn.remoteSetBuilderList(builders=[(BUILDER, BUILDDIR), ("b2", "b2dir"),
                                                           ("b3", "b3dir")])
    assert names == [BUILDER, "b2", "b3"]
    assert (pair.basedir / "b3dir").is_dir()
    assert sorted(pair.bot.builders) == [BUILDER, "b2", "b3"]
    names = await pair.conn.remoteSetBuilderList([(BUILDER, BUILDDIR), ("b2", "b2dir")])
    assert names == [BUILDER, "b2"]
    assert sorted(pair.bot.builders) == [BUILDER, "b2"]


@pytest_twisted.ensureDeferred
async def test_shell_stdout_stderr_rc(pair: Pair) -> None:
    # a tuple command (msgpack sends it as a list)
    rc = await pair.run("shell", shell(("sh", "-c", "echo out; echo err >&2; exit 3"),
                                       env={"FOO": "bar"}))
    assert rc.text("stdout") == "out\n"
    assert rc.text("stderr") == "err\n"
    assert rc.rc == 3
    assert rc.completions == 1
    assert "elapsed" in rc.values


@pytest_twisted.ensureDeferred
async def test_shell_logfile_arrives_as_tuple(pair: Pair) -> None:
    rc = await pair.run("shell", shell(
        ["sh", "-c", "sleep 0.3; echo logged >> extra.log; sleep 1.5"],
        logfiles={"extra": "extra.log"}))
    assert rc.rc == 0
    logs = rc.values.get("log", [])
    assert logs and all(isinstance(v, tuple) and v[0] == "extra" for v in logs)
    assert "".join(v[1] for v in logs) == "logged\n"


@pytest_twisted.ensureDeferred
async def test_large_output_byte_exact_in_order(pair: Pair, timing: Timing) -> None:
    lines = 200_000  # 100 bytes each: 20 MB
    script = (
        "import sys\n"
        "w = sys.stdout.write\n"
        f"for i in range({lines}):\n"
        "    w('%09d' % i + 'x' * 90 + '\\n')\n"
    )
    t0 = time.monotonic()
    rc = await pair.run("shell", shell([sys.executable, "-c", script]), timeout=45)
    got = rc.text("stdout")
    expected = "".join("%09d" % i + "x" * 90 + "\n" for i in range(lines))
    assert len(got) == len(expected) == 100 * lines
    assert got == expected
    assert rc.rc == 0
    timing.record("20 MB of output, byte-exact", time.monotonic() - t0, 40)


@pytest_twisted.ensureDeferred
async def test_interrupt(pair: Pair, timing: Timing) -> None:
    rc = FakeRemoteCommand()
    await pair.conn.remoteStartCommand(rc, BUILDER, "int-1", "shell",
                                       shell(["sh", "-c", "echo started; exec sleep 30"]))
    # the command runs (its first output came up), not a fixed pause
    for _ in range(400):
        if "started" in rc.text("stdout") or rc.done.called:
            break
        await sleep(0.05)
    assert "started" in rc.text("stdout") and not rc.done.called
    t0 = time.monotonic()
    assert await pair.conn.remoteInterruptCommand(BUILDER, "int-1", "stop it") is None
    await within(rc.done, 25)  # well short of the command's 30 s
    assert rc.failure is None
    timing.record("an interrupted command ends", time.monotonic() - t0, 10)
    assert rc.rc not in (None, 0)


@pytest_twisted.ensureDeferred
async def test_unknown_command_and_unencodable_args(pair: Pair) -> None:
    with pytest.raises(CommandFailed):
        await pair.conn.remoteStartCommand(FakeRemoteCommand(), BUILDER, "u1", "nosuch", {})
    with pytest.raises(BadRequest):
        await pair.conn.remoteStartCommand(FakeRemoteCommand(), BUILDER, "u2", "shell",
                                           shell(["true"], weird=object()))
    with pytest.raises(BadRequest):
        await pair.conn.remoteStartCommand(FakeRemoteCommand(), "nope", "u3", "shell",
                                           shell(["true"]))


@pytest_twisted.ensureDeferred
async def test_shutdown(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildbot_worker.pb import BotPbLike

    asked: list[bool] = []
    # the real one stops the reactor
    monkeypatch.setattr(BotPbLike, "remote_shutdown", lambda self: asked.append(True))
    assert await pair.conn.remoteShutdown() is None
    assert asked == [True]


# -- transfers ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_upload_file_30mib(pair: Pair, tmp_path: Path) -> None:
    src = pair.path("build", "big.bin")
    src.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1024 * 1024)
    with open(src, "wb") as f:
        for i in range(30):
            f.write(bytes([i]) + block[1:])
        f.write(b"tail")
    os.utime(src, (1_000_000_000, 1_200_000_000))
    dest = tmp_path / "got.bin"
    writer = FileWriter(str(dest), None, None)
    rc = await pair.run("uploadFile", {
        "workdir": "build", "workersrc": "big.bin", "writer": writer,
        "maxsize": None, "blocksize": 256 * 1024, "keepstamp": True,
    })
    assert rc.rc == 0, rc.text("stderr")
    data = src.read_bytes()
    assert dest.stat().st_size == len(data) == 30 * 1024 * 1024 + 4
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert int(dest.stat().st_mtime) == 1_200_000_000  # keepstamp: utime after close
    assert [p.name for p in tmp_path.iterdir()] == ["got.bin"]  # no temp file left


@pytest_twisted.ensureDeferred
async def test_upload_missing_file_fails_cleanly(pair: Pair, tmp_path: Path) -> None:
    writer = FileWriter(str(tmp_path / "never.bin"), None, None)
    rc = await pair.run("uploadFile", {
        "workdir": "build", "workersrc": "no-such-file", "writer": writer,
        "maxsize": None, "blocksize": 16384, "keepstamp": False,
    })
    assert rc.rc == 1
    assert "Cannot open file" in rc.text("stderr")


@pytest_twisted.ensureDeferred
async def test_download_file(pair: Pair, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    reader = FileReader(open(src, "rb"))  # noqa: SIM115 - the worker's close closes it
    rc = await pair.run("downloadFile", {
        "workdir": "build", "workerdest": "sub/down.bin", "reader": reader,
        "maxsize": None, "blocksize": 16 * 1024, "mode": 0o640,
    })
    assert rc.rc == 0, rc.text("stderr")
    got = pair.path("build", "sub", "down.bin")
    assert got.read_bytes() == data
    assert stat.S_IMODE(got.stat().st_mode) == 0o640
    assert reader.fp is None  # closed by the worker


@pytest_twisted.ensureDeferred
async def test_download_file_never_sets_setuid_or_setgid(pair: Pair, tmp_path: Path) -> None:
    """A master asking for mode 6755 gets 0755: no setuid file on the worker,
    whatever the policy lets it transfer."""
    src = tmp_path / "tool"
    src.write_bytes(b"#!/bin/sh\n")
    reader = FileReader(open(src, "rb"))  # noqa: SIM115 - the worker's close closes it
    rc = await pair.run("downloadFile", {
        "workdir": "build", "workerdest": "suid-tool", "reader": reader,
        "maxsize": None, "blocksize": 16 * 1024, "mode": 0o6755,
    })
    assert rc.rc == 0, rc.text("stderr")
    assert stat.S_IMODE(pair.path("build", "suid-tool").stat().st_mode) == 0o755


@pytest.mark.parametrize("compress", [None, "gz", "bz2"])
@pytest_twisted.ensureDeferred
async def test_upload_directory(pair: Pair, tmp_path: Path, compress: str | None) -> None:
    tree = pair.path("build", "tree")
    (tree / "a" / "b").mkdir(parents=True, exist_ok=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "a" / "b" / "deep.bin").write_bytes(bytes(range(256)) * 1000)
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    dest = tmp_path / "out"
    writer = DirectoryWriter(str(dest), None, compress, None)
    rc = await pair.run("uploadDirectory", {
        "workdir": "build", "workersrc": "tree", "writer": writer,
        "maxsize": None, "blocksize": 16 * 1024, "compress": compress,
    })
    assert rc.rc == 0, rc.text("stderr")
    assert (dest / "top.txt").read_text() == "top\n"
    assert (dest / "a" / "b" / "deep.bin").read_bytes() == bytes(range(256)) * 1000
    assert os.access(dest / "run.sh", os.X_OK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not os.path.exists(writer.tarname)  # temp tar removed


def _tar_bytes(add: Any) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        add(t)
    return buf.getvalue()


def _file_member(t: tarfile.TarFile, name: str, content: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    t.addfile(info, io.BytesIO(content))


class _RefusingWriter:
    """A file writer whose unpack refuses the archive (as a sink may)."""

    def __init__(self) -> None:
        self.data = b""

    def remote_write(self, data: bytes) -> None:
        self.data += data

    def remote_unpack(self) -> None:
        raise PathRefused("refused to unpack: '../evil' would leave the destination")


@pytest_twisted.ensureDeferred
async def test_adapters_report_typed_errors(tmp_path: Path) -> None:
    data = _tar_bytes(lambda t: _file_member(t, "../evil"))
    adapter = FileWriterAdapter(_RefusingWriter())
    assert unwrap(await adapter.remote_write(0, data)) == len(data)
    with pytest.raises(PathRefused):
        unwrap(await adapter.remote_unpack())
    with pytest.raises(BadRequest):
        unwrap(await adapter.remote_utime(encode(["a", 1])))
    src = tmp_path / "r.bin"
    src.write_bytes(b"z" * (MAX_CHUNK + 10))
    reader = FileReaderAdapter(FileReader(open(src, "rb")))  # noqa: SIM115
    assert len(unwrap(await reader.remote_read(0, 10 * MAX_CHUNK))) == MAX_CHUNK
    assert unwrap(await reader.remote_read(MAX_CHUNK, 100)) == b"z" * 10
    assert unwrap(await reader.remote_read(MAX_CHUNK + 10, 100)) == b""
    with pytest.raises(BadRequest):
        unwrap(await reader.remote_read(0, -1))
    assert unwrap(await reader.remote_close()) is None


@pytest_twisted.ensureDeferred
async def test_adapters_take_each_byte_once_across_replays(tmp_path: Path) -> None:
    """After a reattach the worker sends again what was not acknowledged,
    and asks again for what it did not receive: the writer gets each byte
    once, in order, and replayed reads get the same bytes."""

    class Sink:
        def __init__(self) -> None:
            self.data = b""
            self.closed = 0

        def remote_write(self, data: bytes) -> None:
            self.data += data

        def remote_close(self) -> None:
            self.closed += 1

    sink = Sink()
    w = FileWriterAdapter(sink)
    assert unwrap(await w.remote_write(0, b"abcd")) == 4
    assert unwrap(await w.remote_write(2, b"cdef")) == 6  # overlaps: only 'ef' is new
    assert unwrap(await w.remote_write(0, b"abcdef")) == 6  # all of it seen already
    with pytest.raises(BadRequest):
        unwrap(await w.remote_write(9, b"gap"))
    for _ in range(2):
        assert unwrap(await w.remote_close()) is None
    assert sink.data == b"abcdef" and sink.closed == 1
    src = tmp_path / "r.bin"
    blob = os.urandom(3 * MAX_CHUNK + 7)
    src.write_bytes(blob)
    r = FileReaderAdapter(FileReader(open(src, "rb")))  # noqa: SIM115
    first = unwrap(await r.remote_read(0, MAX_CHUNK))
    second = unwrap(await r.remote_read(MAX_CHUNK, MAX_CHUNK))
    assert unwrap(await r.remote_read(0, MAX_CHUNK)) == first  # its answer was lost
    assert unwrap(await r.remote_read(MAX_CHUNK, MAX_CHUNK)) == second
    rest = unwrap(await r.remote_read(2 * MAX_CHUNK, MAX_CHUNK))
    tail = unwrap(await r.remote_read(3 * MAX_CHUNK, MAX_CHUNK))
    assert first + second + rest + tail == blob


# -- filesystem commands ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_fs_commands(pair: Pair) -> None:
    work = pair.path("fs")
    work.mkdir(parents=True, exist_ok=True)
    (work / "f1.txt").write_text("one")
    (work / "f2.txt").write_text("two")

    rc = await pair.run("stat", {"file": "f1.txt", "workdir": "fs"})
    assert rc.rc == 0
    st = rc.values["stat"][-1]
    assert isinstance(st, tuple)
    assert stat.S_ISREG(st[stat.ST_MODE]) and st[stat.ST_SIZE] == 3

    rc = await pair.run("stat", {"file": "missing", "workdir": "fs"})
    assert rc.rc == 2  # ENOENT

    rc = await pair.run("glob", {"path": "fs/*.txt"})
    assert rc.rc == 0
    assert sorted(os.path.basename(f) for f in rc.values["files"][-1]) == ["f1.txt", "f2.txt"]

    rc = await pair.run("listdir", {"dir": "fs"})
    assert sorted(rc.values["files"][-1]) == ["f1.txt", "f2.txt"]

    rc = await pair.run("mkdir", {"dir": "fs/new/sub", "logEnviron": False})
    assert rc.rc == 0 and (work / "new" / "sub").is_dir()

    rc = await pair.run("cpdir", {"fromdir": "fs", "todir": "fs-copy", "logEnviron": False})
    assert rc.rc == 0
    assert (pair.path("fs-copy", "f2.txt")).read_text() == "two"
    assert (pair.path("fs-copy", "new", "sub")).is_dir()

    rc = await pair.run("rmfile", {"path": "fs/f1.txt"})
    assert rc.rc == 0 and not (work / "f1.txt").exists()

    rc = await pair.run("rmdir", {"dir": ["fs", "fs-copy"], "logEnviron": False})
    assert rc.rc == 0
    assert not work.exists() and not pair.path("fs-copy").exists()


# -- CommandStatus ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_command_status_applies_each_seq_once() -> None:
    rc = FakeRemoteCommand()
    cs = CommandStatus(rc)
    assert unwrap(await cs.remote_update(1, encode([["stdout", "a"], ["stat", [1, 2]]]))) == 1
    assert unwrap(await cs.remote_update(1, encode([["stdout", "a"]]))) == 1  # replay
    assert unwrap(await cs.remote_update(2, encode([["stdout", "b"], ["log", ["l", "x"]]]))) == 2
    assert unwrap(await cs.remote_update(2, encode([["stdout", "b"]]))) == 2
    assert unwrap(await cs.remote_update(1, encode([["stdout", "a"]]))) == 2  # old
    assert rc.text("stdout") == "ab"
    assert rc.values["stat"] == [(1, 2)]
    assert rc.values["log"] == [("l", "x")]
    assert rc.calls[0] == [[{"stdout": "a"}, 0], [{"stat": (1, 2)}, 0]]
    assert len(rc.calls) == 2

    assert unwrap(await cs.remote_complete(3, encode(None))) == 3
    assert unwrap(await cs.remote_complete(3, encode(None))) == 3  # replayed: once only
    await rc.done
    assert rc.failure is None and rc.completions == 1
    # an update after the end is a violation: refused, never applied
    with pytest.raises(BadRequest, match="has ended"):
        unwrap(await cs.remote_update(4, encode([["stdout", "late"]])))
    assert rc.text("stdout") == "ab"


@pytest_twisted.ensureDeferred
async def test_command_status_refuses_gaps_and_blames_the_worker() -> None:
    rc = FakeRemoteCommand()
    blamed: list[str] = []
    cs = CommandStatus(rc, blamed.append)
    assert unwrap(await cs.remote_update(1, encode([["stdout", "a"]]))) == 1
    with pytest.raises(BadRequest, match="one after another"):
        unwrap(await cs.remote_update(5, encode([["stdout", "jumped"]])))
    with pytest.raises(BadRequest):
        unwrap(await cs.remote_update(2, b"\xc1 not msgpack"))
    assert rc.text("stdout") == "a" and len(blamed) == 2


@pytest_twisted.ensureDeferred
async def test_command_status_failure_becomes_failure() -> None:
    rc = FakeRemoteCommand()
    cs = CommandStatus(rc)
    assert unwrap(await cs.remote_complete(1, encode("OSError: disk full"))) == 1
    await rc.done
    failure = rc.failure
    assert isinstance(failure, Failure)
    assert failure.check(RemoteError)
    assert str(failure.value) == "OSError: disk full"
    with pytest.raises(RemoteError):
        failure.raiseException()


@pytest.mark.parametrize("seq,batch", [
    (1, b"\xc1"),  # not msgpack
    (1, encode({"stdout": "x"})),  # not a list
    (1, encode(["stdout", "x"])),  # items not pairs
    (1, encode([["stdout", 5]])),
    (1, encode([["stdout", b"bytes"]])),
    (1, encode([[5, "x"]])),
    (1, encode([["log", "x"]])),
    (1, encode([["log", ["a", 1]]])),
    (1, encode([["rc", "zero"]])),
    (1, encode([["stat", ["a"]]])),
    (1, encode([["elapsed", "soon"]])),
    (1, encode([["files", "f"]])),
    (-1, encode([["stdout", "x"]])),
    ("1", encode([["stdout", "x"]])),
    (1, "not bytes"),
])
@pytest_twisted.ensureDeferred
async def test_command_status_bad_batch(seq: Any, batch: Any) -> None:
    rc = FakeRemoteCommand()
    cs = CommandStatus(rc)
    with pytest.raises(BadRequest):
        unwrap(await cs.remote_update(seq, batch))
    assert rc.calls == []
    # still usable afterwards
    assert unwrap(await cs.remote_update(1, encode([["stdout", "ok"]]))) == 1
    with pytest.raises(BadRequest):
        unwrap(await cs.remote_complete(2, encode(7)))
    assert rc.completions == 0


@pytest_twisted.ensureDeferred
async def test_command_status_over_the_wire(pair: Pair) -> None:
    """Duplicate and malformed batches sent through foolscap, as a worker would."""
    rc = FakeRemoteCommand()
    cs = CommandStatus(rc)
    furl = pair.wtub.registerReference(cs)  # the tub with a location
    ref = await pair.mtub.getReference(furl)
    from buildbot_furl.protocol import call

    assert await call(ref, "update", 1, encode([["stdout", "x"]])) == 1
    assert await call(ref, "update", 1, encode([["stdout", "x"]])) == 1
    assert await call(ref, "update", 2, encode([["stderr", "y"]])) == 2
    with pytest.raises(BadRequest):
        await call(ref, "update", 3, encode([["stdout", 1]]))
    with pytest.raises(BadRequest):  # foolscap's own bound on the argument
        await call(ref, "update", 3, "text, not bytes")
    assert rc.text("stdout") == "x" and rc.text("stderr") == "y"
    pair.wtub.unregisterReference(cs)


# -- disconnection --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_lose_connection_notifies_once(tmp_path: Path) -> None:
    p = await Pair().start(tmp_path / "w")
    try:
        calls: list[str] = []
        p.conn.notifyOnDisconnect(lambda: calls.append("a"))
        sub = p.conn.notifyOnDisconnect(lambda: calls.append("never"))
        sub.unsubscribe()
        slow: defer.Deferred[None] = defer.Deferred()
        p.conn.notifyOnDisconnect(lambda: slow)
        started = p.conn.wait_shutdown_started()
        p.conn.loseConnection()
        assert calls == ["a"]
        await within(started, 2)
        waiting = p.conn.waitShutdown()
        assert not waiting.called
        slow.callback(None)
        assert waiting.called
        p.conn.loseConnection()
        p.conn.notifyDisconnected()
        # the transport closes and the session notices; still only once
        for _ in range(50):
            if p.session.gone:
                break
            await sleep(0.05)
        assert p.session.gone
        assert calls == ["a"]
        late: list[str] = []
        p.conn.notifyOnDisconnect(lambda: late.append("late"))
        await sleep(0.05)
        assert late == ["late"]
    finally:
        await p.stop()


@pytest_twisted.ensureDeferred
async def test_worker_going_away_notifies(tmp_path: Path) -> None:
    p = await Pair().start(tmp_path / "w")
    try:
        gone: defer.Deferred[None] = defer.Deferred()
        p.conn.notifyOnDisconnect(lambda: gone.callback(None))
        await p.wtub.stopService()  # the worker's side closes
        await within(gone, 10)
        with pytest.raises(Exception) as e:
            await p.conn.remotePrint("anyone?")
        assert type(e.value).__name__ == "ConnectionLost"
        assert await p.conn.remoteShutdown() is None  # lost counts as done
    finally:
        await p.stop()
