#!/usr/bin/env python
"""Side-by-side transport benchmark: buildbot_furl vs Buildbot PB vs raw TLS.

    python bench/bench_transport.py [--quick] [--json FILE] [--transports LIST]

This process is the *master* side of every transport, with one Twisted
reactor; each worker runs in its own child process (bench/_bench_child.py)
with its own reactor, so the two ends of a connection never share one
event loop.  Compared, in the same run and interleaved run by run:

``furl``   buildbot_furl's FurlConnection (master side, fed by a real
           WorkerRegistry on a hardened Tub) driving buildbot_furl's
           WorkerService/FurlBot (the furl-worker daemon's service).
``pb``     Buildbot's own PB Connection (buildbot.worker.protocols.pb),
           handed out by Buildbot's own PBManager/Dispatcher (cred portal,
           username/password login), driving buildbot-worker's own
           ``buildbot_worker.pb.Worker`` (BotPb) -- plain TCP, Buildbot's
           default.
``pbtls``  the same, over TLS (master port ``ssl:``, worker ``tls:``
           connection string, RSA-2048 self-signed certificate pinned as
           the only trust root): PB configured to be as private as FURL.
``tls``    raw TLS baseline: Twisted TLS on both ends moving the same bytes
           (``cat`` piped to the socket, the file itself, a stat) with a
           few bytes of framing and no RPC at all.
``pbnd``, ``pbtlsnd``  diagnostics: ``pb``/``pbtls`` with TCP_NODELAY set on
           both ends (Twisted PB never sets it; foolscap does), to show how
           much of a difference is Nagle's algorithm rather than protocol.

The master-side objects are the same for both RPC transports: Buildbot's
``remotetransfer.FileWriter``/``FileReader`` and a counting subclass of
Buildbot's ``RemoteCommandImpl``; the command arguments are what Buildbot's
steps send (FileUpload's 256 KiB and FileDownload's 16 KiB blocksize).

Metrics (each repeated ``--runs`` times, the median reported):

* connect+attach: ``go`` sent to an already started, idle worker process
  -> the master-side attach hook runs (FURL: WorkerRegistry.on_attach;
  PB: the worker's ``attached(conn)``; TLS: the worker's first line read
  after the handshake).  One fresh process per sample.
* stream: a ``shell`` command ``cat FILE`` (text); MiB/s from
  remoteStartCommand until remote_complete (the rc) arrives.
* upload / download: ``uploadFile`` / ``downloadFile`` of a binary file;
  MiB/s until the command completes (file closed and renamed in place).
* stat / true: sequential ``stat`` commands (no process spawned: pure
  RPC) and ``shell true`` commands; median milliseconds per command.
* CPU: user+system seconds of the worker process (from /proc, its
  children such as ``cat`` excluded) and of this master process, per MiB
  or per command.

Test files live in /dev/shm when it has room (``--tmpdir`` to choose), so
disk writeback does not add noise to the transfer numbers.

Numbers are for comparing transports *in one run*; see docs/performance.md.
Nothing here is a test: no timing is ever asserted.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from buildbot.worker.protocols.base import RemoteCommandImpl
from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_child import set_nodelay  # noqa: E402  (one copy, used by both ends)

CHILD = Path(__file__).resolve().with_name("_bench_child.py")
MiB = 1024 * 1024
BUILDER = "b1"
BUILDDIR = "b1dir"
UPLOAD_BLOCKSIZE = 256 * 1024  # buildbot.steps.transfer.FileUpload's default
DOWNLOAD_BLOCKSIZE = 16 * 1024  # buildbot.steps.transfer.FileDownload's default
OP_TIMEOUT = 180.0

PROFILES = {
    "full": {"stream": 128, "upload": 200, "download": 200, "stat": 200, "true": 100},
    "quick": {"stream": 16, "upload": 16, "download": 16, "stat": 40, "true": 20},
}
TRANSPORTS = {"furl": "FURL", "pb": "PB", "pbtls": "PB+TLS", "tls": "raw TLS",
              "pbnd": "PB nodelay", "pbtlsnd": "PB+TLS nodelay"}
DEFAULT_TRANSPORTS = "furl,pb,pbtls,tls,pbnd,pbtlsnd"
METRICS = [
    # key, label, unit, higher is better
    ("connect", "connect+attach", "ms", False),
    ("stream", "shell `cat` output stream", "MiB/s", True),
    ("upload", "uploadFile", "MiB/s", True),
    ("download", "downloadFile", "MiB/s", True),
    ("stat", "`stat` command round trip", "ms", False),
    ("true", "`shell true` round trip", "ms", False),
]


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def now() -> float:
    return time.perf_counter()


async def within(d: defer.Deferred[Any], seconds: float, what: str) -> Any:
    try:
        return await d.addTimeout(seconds, reactor)
    except defer.TimeoutError:
        raise RuntimeError(f"timed out after {seconds:.0f} s: {what}") from None


# -- test data ---------------------------------------------------------------


def make_text(path: Path, mib: int) -> None:
    """``mib`` MiB of 100-byte numbered text lines (the last one shorter)."""
    filler = "abcdefghijklmnopqrstuvwxyz0123456789" * 3
    block = "".join(f"{i:09d} {filler[:89]}\n" for i in range(MiB // 100 + 1))
    with open(path, "w") as f:
        left = mib * MiB
        while left:
            part = block[: min(left, len(block))]
            if len(part) == left:  # end with a newline, or the worker adds one
                part = part[:-1] + "\n"
            f.write(part)
            left -= len(part)


def make_binary(path: Path, mib: int) -> None:
    """``mib`` MiB of incompressible bytes (8 MiB of random data, repeated)."""
    chunk = os.urandom(8 * MiB)
    with open(path, "wb") as f:
        left = mib * MiB
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


def sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def make_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A self-signed RSA-2048 certificate for 127.0.0.1 (as foolscap's keys
    are RSA-2048): key file, cert file, and a trust-roots directory."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_file, cert_file = tmp / "tls.key", tmp / "tls.crt"
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    cert_file.write_bytes(cert_pem)
    roots = tmp / "trust"
    roots.mkdir()
    (roots / "ca.pem").write_bytes(cert_pem)
    return key_file, cert_file, roots


# -- child processes ---------------------------------------------------------


class Child(protocol.ProcessProtocol):
    """One worker process; see _bench_child.py for its control lines."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended = False
        self._end_waiters: list[defer.Deferred[None]] = []
        self.buf = b""
        self.pid: int | None = None

    def wait(self) -> defer.Deferred[None]:
        """A new Deferred that fires when the process has ended."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.ended:
            d.callback(None)
        else:
            self._end_waiters.append(d)
        return d

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line == b"ready" and not self.ready.called:
                self.ready.callback(None)

    def send(self, line: bytes) -> None:
        with contextlib.suppress(Exception):
            self.transport.write(line + b"\n")

    def processEnded(self, reason: Any) -> None:
        self.pid = None
        self.ended = True
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"worker process {self.label} exited early"))
        waiters, self._end_waiters = self._end_waiters, []
        for d in waiters:
            d.callback(None)


class Children:
    """Every process this benchmark starts; all are stopped by pid."""

    def __init__(self, logdir: Path, profile: bool = False) -> None:
        self.logdir = logdir
        self.profile = profile
        self.all: list[Child] = []

    def spawn(self, label: str, cfg: dict[str, Any], env: dict[str, str] | None = None
              ) -> Child:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FURL_")}
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env["BENCH_CHILD"] = json.dumps(cfg)
        full_env.update(env or {})
        if self.profile:
            full_env["BENCH_PROFILE"] = str(self.logdir / f"{label}.prof")
        child = Child(label)
        with open(self.logdir / f"{label}.log", "wb") as log:
            reactor.spawnProcess(child, sys.executable, [sys.executable, str(CHILD)],
                                 env=full_env, path=cfg["basedir"],
                                 childFDs={0: "w", 1: "r", 2: log.fileno()})
        self.all.append(child)
        return child

    async def stop(self, child: Child, grace: float = 5.0) -> None:
        if child.ended:
            return
        child.send(b"quit")
        with contextlib.suppress(Exception):
            await within(child.wait(), grace, "")
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await within(child.wait(), 5, "")

    async def stop_all(self) -> None:
        await defer.DeferredList([defer.Deferred.fromCoroutine(self.stop(c))
                                  for c in self.all], consumeErrors=True)

    def kill_all_now(self) -> None:
        """Synchronous last resort (reactor shutdown, atexit)."""
        for child in self.all:
            if child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)


# -- the master-side command object ------------------------------------------


class BenchCommand(RemoteCommandImpl):
    """Counts output and records rc, like Buildbot's RemoteCommand would see it."""

    def __init__(self) -> None:
        self.nbytes = 0
        self.rc: Any = None
        self.stat: Any = None
        self.failure: Any = None
        self.t_end = 0.0
        self.done: defer.Deferred[None] = defer.Deferred()

    def remote_update(self, updates: list[Any]) -> int:
        for update, _num in updates:
            for key, value in update.items():
                if key == "stdout":
                    self.nbytes += len(value)
                elif key == "rc":
                    self.rc = value
                elif key == "stat":
                    self.stat = value
        return 0

    def remote_complete(self, failure: Any = None) -> None:
        self.t_end = now()
        self.failure = failure
        # like Buildbot's RemoteCommand: act on it a moment later
        reactor.callLater(0, lambda: self.done.called or self.done.callback(None))


# -- transports: master side ------------------------------------------------


class Side:
    key = ""
    supports = ("connect", "stream", "upload", "download", "stat", "true")

    def __init__(self, tmp: Path, children: Children) -> None:
        self.tmp = tmp / self.key
        self.tmp.mkdir()
        self.children = children
        self.waiters: dict[str, defer.Deferred[Any]] = {}
        self.attached_at: dict[str, float] = {}
        self.worker_basedir: Path | None = None
        self.child: Child | None = None

    def _attached(self, name: str, handle: Any) -> None:
        self.attached_at[name] = now()
        d = self.waiters.get(name)
        if d is not None and not d.called:
            d.callback(handle)

    def spawn(self, i: int) -> Child:
        name = f"w{i}"
        basedir = self.tmp / f"worker-{name}"
        (basedir / BUILDDIR / "build").mkdir(parents=True)
        self.waiters[name] = defer.Deferred()
        cfg, env = self.child_config(name, str(basedir))
        return self.children.spawn(f"{self.key}-{name}", cfg, env)

    async def connect(self, i: int, child: Child) -> float:
        name = f"w{i}"
        t0 = now()
        child.send(b"go")
        handle = await within(self.waiters[name], 30, f"{self.key} worker {name} to attach")
        self.handle, self.worker_basedir = handle, self.tmp / f"worker-{name}"
        return (self.attached_at[name] - t0) * 1000

    # subclasses: setup(n), child_config(name, basedir), prepare(), metrics, teardown()


class RpcSide(Side):
    """Drives a Buildbot-style Connection (``self.conn``)."""

    conn: Any
    cid = 0

    async def run(self, command: str, args: dict[str, Any]) -> tuple[float, Any]:
        rc = BenchCommand()
        self.cid += 1
        t0 = now()
        await self.conn.remoteStartCommand(rc, BUILDER, str(self.cid), command, args)
        await within(rc.done, OP_TIMEOUT, f"{self.key} {command}")
        if rc.failure is not None:
            raise RuntimeError(f"{self.key} {command} failed: {rc.failure}")
        return rc.t_end - t0, rc

    @staticmethod
    def shell(cmd: list[str]) -> dict[str, Any]:
        return {"workdir": "build", "command": cmd, "env": None, "want_stdout": 1,
                "want_stderr": 1, "logfiles": {}, "timeout": 1200, "maxTime": None,
                "sigtermTime": None, "logEnviron": False, "usePTY": False}

    async def prepare(self) -> None:
        await self.conn.remoteSetBuilderList([(BUILDER, BUILDDIR)])
        await self.run("stat", {"file": str(self.worker_basedir), "workdir": "build"})
        await self.run("shell", self.shell(["true"]))

    async def stream(self, path: Path, size: int) -> float:
        elapsed, rc = await self.run("shell", self.shell(["cat", str(path)]))
        if rc.rc != 0 or rc.nbytes != size:
            raise RuntimeError(f"{self.key} stream: rc {rc.rc}, {rc.nbytes} of {size} bytes")
        return elapsed

    async def upload(self, src: Path, dest: Path) -> float:
        from buildbot.process.remotetransfer import FileWriter

        writer = FileWriter(str(dest), None, None)
        elapsed, rc = await self.run("uploadFile", {
            "workdir": "build", "workersrc": str(src), "writer": writer, "maxsize": None,
            "blocksize": UPLOAD_BLOCKSIZE, "keepstamp": False})
        if rc.rc != 0:
            raise RuntimeError(f"{self.key} upload: rc {rc.rc}")
        return elapsed

    async def download(self, src: Path, dest_name: str) -> float:
        from buildbot.process.remotetransfer import FileReader

        fp = open(src, "rb")  # noqa: SIM115 - closed by the reader
        try:
            elapsed, rc = await self.run("downloadFile", {
                "workdir": "build", "workerdest": dest_name, "reader": FileReader(fp),
                "maxsize": None, "blocksize": DOWNLOAD_BLOCKSIZE, "mode": None})
        finally:
            fp.close()
        if rc.rc != 0:
            raise RuntimeError(f"{self.key} download: rc {rc.rc}")
        return elapsed

    async def stat(self, path: Path) -> float:
        elapsed, rc = await self.run("stat", {"file": str(path), "workdir": "build"})
        if rc.rc != 0 or not rc.stat:
            raise RuntimeError(f"{self.key} stat: rc {rc.rc}")
        return elapsed

    async def true(self) -> float:
        elapsed, rc = await self.run("shell", self.shell(["true"]))
        if rc.rc != 0:
            raise RuntimeError(f"{self.key} true: rc {rc.rc}")
        return elapsed


class FurlSide(RpcSide):
    key = "furl"

    async def setup(self, n: int) -> None:
        from foolscap.util import allocate_tcp_port

        from buildbot_furl import furlsfile
        from buildbot_furl.furl import Furl, new_swissnum
        from buildbot_furl.master.registry import WorkerRegistry
        from buildbot_furl.tubs import make_tub

        self.tub = make_tub()
        port = allocate_tcp_port()
        self.tub.listenOn(f"tcp:{port}:interface=127.0.0.1")
        self.tub.setLocation(f"127.0.0.1:{port}")
        self.tub.startService()
        tubid = self.tub.getTubID()
        path = str(self.tmp / "workers.furls")
        self.furls: dict[str, str] = {}
        with furlsfile.update(path, tubid) as ff:
            for i in range(n):
                furl = Furl(tubid, (f"tcp:127.0.0.1:{port}",), new_swissnum())
                ff.add(f"w{i}", furl)
                self.furls[f"w{i}"] = str(furl)
        self.registry = WorkerRegistry(self.tub, path, on_attach=self._on_attach,
                                       reload_interval=3600)
        self.registry.start()

    def _on_attach(self, session: Any) -> None:
        self._attached(session.name, session)

    def child_config(self, name: str, basedir: str) -> tuple[dict[str, Any], dict[str, str]]:
        return {"kind": "furl", "basedir": basedir}, {"BENCH_FURL": self.furls[name]}

    async def prepare(self) -> None:
        from buildbot_furl.master.connection import FurlConnection

        self.conn = FurlConnection(self.handle)
        await super().prepare()

    async def teardown(self) -> None:
        self.registry.stop()
        await self.tub.stopService()


class PbSide(RpcSide):
    key = "pb"
    tls = False
    nodelay = False

    async def setup(self, n: int) -> None:
        from buildbot.util.service import MasterService
        from buildbot.worker.protocols import pb as bbpb
        from buildbot.worker.protocols.manager.pb import PBManager

        side = self

        class BenchMaster(MasterService):
            """What Buildbot's PBManager/Dispatcher/Connection need of a master."""

            def __init__(self) -> None:
                super().__init__()
                self.initLock = defer.DeferredLock()
                self.reactor = reactor

        class BenchWorker:
            """What pb.Connection needs of Buildbot's Worker."""

            def __init__(self, name: str) -> None:
                self.workername = name

            def attached(self, conn: Any) -> None:
                side._attached(self.workername, conn)

            def messageReceivedFromWorker(self) -> None:
                pass

            def shutdownRequested(self) -> None:
                pass

        def make_connection(mind: Any, username: str) -> Any:
            if self.nodelay:
                set_nodelay(mind.broker.transport)
            return bbpb.Connection(self.master, BenchWorker(username), mind)

        self.master = BenchMaster()
        self.pbmanager = PBManager()
        await self.pbmanager.setServiceParent(self.master)
        await self.master.startService()
        self.password = "bench-" + os.urandom(8).hex()
        if self.tls:
            portstr = (f"ssl:0:interface=127.0.0.1:privateKey={self.cert[0]}"
                       f":certKey={self.cert[1]}")
        else:
            portstr = "tcp:0:interface=127.0.0.1"
        for i in range(n):
            reg = await self.pbmanager.register(portstr, f"w{i}", self.password,
                                                make_connection)
        self.port = reg.getPort()

    def child_config(self, name: str, basedir: str) -> tuple[dict[str, Any], dict[str, str]]:
        if self.tls:
            cs = f"tls:host=127.0.0.1:port={self.port}:trustRoots={self.cert[2]}"
        else:
            cs = f"tcp:host=127.0.0.1:port={self.port}"
        cfg = {"kind": "pb", "basedir": basedir, "name": name, "connection_string": cs,
               "nodelay": self.nodelay}
        return cfg, {"BENCH_PASSWORD": self.password}

    async def prepare(self) -> None:
        self.conn = self.handle
        await super().prepare()

    async def teardown(self) -> None:
        await self.master.stopService()


class PbTlsSide(PbSide):
    key = "pbtls"
    tls = True


class PbNoDelaySide(PbSide):
    """Diagnostic: PB with TCP_NODELAY set on both ends (stock PB never does)."""

    key = "pbnd"
    nodelay = True


class PbTlsNoDelaySide(PbTlsSide):
    key = "pbtlsnd"
    nodelay = True


class RawMaster(protocol.Protocol):
    """Master end of the raw TLS baseline (see RawWorker in _bench_child.py)."""

    def __init__(self, side: TlsSide) -> None:
        self.side = side
        self.mode = "line"
        self.buf = b""
        self.left = 0
        self.fp: Any = None
        self.waiter: defer.Deferred[Any] | None = None

    def _fire(self, value: Any) -> None:
        self.t_end = now()
        d, self.waiter = self.waiter, None
        if d is not None:
            reactor.callLater(0, lambda: d.called or d.callback(value))

    def dataReceived(self, data: bytes) -> None:
        while data:
            if self.mode == "count":  # a shell stream: discard, like a log would be
                n = min(len(data), self.left)
                self.left -= n
                data = data[n:]
                if self.left == 0:
                    self.mode = "line"
            elif self.mode == "header":
                self.buf += data
                if len(self.buf) < 8:
                    return
                (self.left,), data, self.buf = struct.unpack(">Q", self.buf[:8]), \
                    self.buf[8:], b""
                self.mode = "file"
                if self.left == 0:
                    self._file_done()
            elif self.mode == "file":
                take = data[: self.left]
                self.fp.write(take)
                self.left -= len(take)
                data = data[len(take):]
                if self.left == 0:
                    self._file_done()
            else:
                self.buf += data
                data = b""
                while self.mode == "line" and b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    self._line(line.decode())
                if self.mode != "line":
                    data, self.buf = self.buf, b""

    def _file_done(self) -> None:
        # what Buildbot's FileWriter.remote_close does: close, rename into place
        self.fp.close()
        self.fp = None
        os.replace(self.tmp_name, self.dest)
        self.mode = "line"
        self._fire(None)

    def _line(self, line: str) -> None:
        if line.startswith("hello "):
            self.side._attached(line[6:], self)
        elif line.startswith("R "):
            self._fire(int(line[2:]))
        else:  # "K" or a stat answer
            self._fire(line)

    def request(self, line: str, mode: str = "line", left: int = 0) -> defer.Deferred[Any]:
        self.mode, self.left = mode, left
        self.waiter = defer.Deferred()
        self.transport.write(line.encode() + b"\n")
        return self.waiter


class TlsSide(Side):
    key = "tls"
    supports = ("connect", "stream", "upload", "download", "stat")

    async def setup(self, n: int) -> None:
        with open(self.cert[0], "rb") as f:
            key = f.read()
        with open(self.cert[1], "rb") as f:
            cert = f.read()
        options = ssl.PrivateCertificate.loadPEM(key + cert).options()
        factory = protocol.Factory.forProtocol(lambda: RawMaster(self))
        self.listener = reactor.listenSSL(0, factory, options, interface="127.0.0.1")

    def child_config(self, name: str, basedir: str) -> tuple[dict[str, Any], dict[str, str]]:
        return {"kind": "tls", "basedir": basedir, "name": name,
                "port": self.listener.getHost().port, "cert": str(self.cert[1])}, {}

    async def prepare(self) -> None:
        self.conn: RawMaster = self.handle
        await self.stat(self.worker_basedir)

    async def stream(self, path: Path, size: int) -> float:
        t0 = now()
        rc = await within(self.conn.request(f"C {path}", "count", size), OP_TIMEOUT, "tls cat")
        if rc != 0:
            raise RuntimeError(f"tls stream: rc {rc}")
        return self.conn.t_end - t0

    async def upload(self, src: Path, dest: Path) -> float:
        t0 = now()
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix="raw-transfer-")
        self.conn.fp, self.conn.tmp_name, self.conn.dest = os.fdopen(fd, "wb"), tmp_name, dest
        await within(self.conn.request(f"U {src}", "header"), OP_TIMEOUT, "tls upload")
        return self.conn.t_end - t0

    async def download(self, src: Path, dest_name: str) -> float:
        assert self.worker_basedir is not None
        dest = self.worker_basedir / BUILDDIR / "build" / dest_name
        t0 = now()
        size = src.stat().st_size
        d = self.conn.request(f"D {size} {dest}")
        with open(src, "rb") as fp:
            await FileSender().beginFileTransfer(fp, self.conn.transport)
            await within(d, OP_TIMEOUT, "tls download")
        return self.conn.t_end - t0

    async def stat(self, path: Path) -> float:
        t0 = now()
        answer = await within(self.conn.request(f"T {path}"), OP_TIMEOUT, "tls stat")
        if not answer.startswith("("):
            raise RuntimeError(f"tls stat: {answer!r}")
        return self.conn.t_end - t0

    async def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.transport.loseConnection()
        await self.listener.stopListening()


SIDES = {"furl": FurlSide, "pb": PbSide, "pbtls": PbTlsSide, "tls": TlsSide,
         "pbnd": PbNoDelaySide, "pbtlsnd": PbTlsNoDelaySide}


# -- the run -----------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import buildbot
    import buildbot_worker
    import foolscap
    import msgpack
    import OpenSSL
    import twisted

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "foolscap": foolscap.__version__,
        "buildbot": buildbot.version,
        "buildbot_worker": buildbot_worker.version,
        "pyopenssl": OpenSSL.__version__,
        "openssl": OpenSSL.SSL.SSLeay_version(OpenSSL.SSL.SSLEAY_VERSION).decode(),
        "msgpack": ".".join(map(str, msgpack.version)),
    }


async def bench(args: argparse.Namespace, tmp: Path, children: Children) -> dict[str, Any]:
    load_before = os.getloadavg()
    profile = dict(PROFILES["quick" if args.quick else "full"])
    runs = args.runs
    keys = args.transports
    data = tmp / "data"
    data.mkdir()
    stream_file, blob = data / "stream.txt", data / "blob.bin"
    note(f"creating test files ({profile['stream']} MiB text, "
         f"{max(profile['upload'], profile['download'])} MiB binary) in {tmp}")
    make_text(stream_file, profile["stream"])
    make_binary(blob, max(profile["upload"], profile["download"]))
    blob_up = blob_down = blob
    for name, mib in (("up", profile["upload"]), ("down", profile["download"])):
        if mib * MiB != blob.stat().st_size:
            path = data / f"blob-{name}.bin"
            with open(blob, "rb") as src, open(path, "wb") as dst:
                dst.write(src.read(mib * MiB))
            if name == "up":
                blob_up = path
            else:
                blob_down = path
    sums = {blob_up: sha256(blob_up), blob_down: sha256(blob_down)}
    cert = make_cert(tmp) if {"pbtls", "pbtlsnd", "tls"} & set(keys) else None

    sides: dict[str, Side] = {}
    for key in keys:
        side = SIDES[key](tmp, children)
        side.cert = cert  # type: ignore[attr-defined]
        await side.setup(runs)
        sides[key] = side

    results: dict[str, dict[str, list[float]]] = {m[0]: {k: [] for k in keys} for m in METRICS}
    cpu: dict[str, dict[str, dict[str, list[float]]]] = {
        m[0]: {k: {"worker": [], "master": []} for k in keys} for m in METRICS[1:]}

    # connect+attach: one fresh, idle, already-imported worker process per sample
    note(f"starting {runs * len(keys)} worker processes")
    pending = {(k, i): sides[k].spawn(i) for i in range(runs) for k in keys}
    await within(defer.gatherResults([c.ready for c in pending.values()], consumeErrors=True),
                 120, "worker processes to start")
    await task.deferLater(reactor, 0.5, lambda: None)
    for i in range(runs):
        for key in keys:
            child = pending[(key, i)]
            ms = await sides[key].connect(i, child)
            results["connect"][key].append(ms)
            if i < runs - 1:  # the last sample's worker stays for the rest
                await task.deferLater(reactor, 0.2, lambda: None)
                await children.stop(child)
            else:
                sides[key].child = child
    note("connect+attach: " + ", ".join(
        f"{k} {statistics.median(results['connect'][k]):.1f} ms" for k in keys))

    for key in keys:
        await sides[key].prepare()

    def record(metric: str, key: str, cpu0: tuple[float, float], units: float) -> None:
        w0, m0 = cpu0
        w1, m1 = cpu_seconds(sides[key].child.pid), master_cpu_seconds()
        cpu[metric][key]["worker"].append((w1 - w0) * 1000 / units)
        cpu[metric][key]["master"].append((m1 - m0) * 1000 / units)

    sizes = {"stream": profile["stream"], "upload": profile["upload"],
             "download": profile["download"]}
    for metric in ("stream", "upload", "download"):
        if metric not in args.only:
            continue
        for run in range(runs):
            for key in keys:
                side = sides[key]
                cpu0 = cpu_seconds(side.child.pid), master_cpu_seconds()
                if metric == "stream":
                    secs = await side.stream(stream_file, sizes[metric] * MiB)
                    record(metric, key, cpu0, sizes[metric])
                elif metric == "upload":
                    dest = side.tmp / "uploaded.bin"
                    secs = await side.upload(blob_up, dest)
                    record(metric, key, cpu0, sizes[metric])
                    if dest.stat().st_size != blob_up.stat().st_size or (
                            run == 0 and sha256(dest) != sums[blob_up]):
                        raise RuntimeError(f"{key} upload: the file arrived damaged")
                    dest.unlink()
                else:
                    assert side.worker_basedir is not None
                    dest = side.worker_basedir / BUILDDIR / "build" / "downloaded.bin"
                    secs = await side.download(blob_down, dest.name)
                    record(metric, key, cpu0, sizes[metric])
                    if dest.stat().st_size != blob_down.stat().st_size or (
                            run == 0 and sha256(dest) != sums[blob_down]):
                        raise RuntimeError(f"{key} download: the file arrived damaged")
                    dest.unlink()
                results[metric][key].append(sizes[metric] / secs)
        note(f"{metric}: " + ", ".join(
            f"{k} {statistics.median(results[metric][k]):.0f} MiB/s" for k in keys))

    for metric in ("stat", "true"):
        if metric not in args.only:
            continue
        for run in range(runs):
            for key in keys:
                side = sides[key]
                if metric not in side.supports:
                    continue
                times = []
                cpu0 = cpu_seconds(side.child.pid), master_cpu_seconds()
                for _ in range(profile[metric]):
                    if metric == "stat":
                        times.append(await side.stat(stream_file))
                    else:
                        times.append(await side.true())  # type: ignore[attr-defined]
                record(metric, key, cpu0, profile[metric])
                results[metric][key].append(statistics.median(times) * 1000)
        note(f"{metric}: " + ", ".join(
            f"{k} {statistics.median(results[metric][k]):.2f} ms" for k in keys
            if results[metric][k]))

    await children.stop_all()
    for key in keys:
        with contextlib.suppress(Exception):
            await sides[key].teardown()

    def med(v: list[float]) -> float | None:
        v = [x for x in v if x == x]  # drop NaN (a process already gone)
        return statistics.median(v) if v else None

    return {
        "profile": "quick" if args.quick else "full",
        "runs": runs,
        "transports": keys,
        "sizes_mib": sizes,
        "commands": {"stat": profile["stat"], "true": profile["true"]},
        "machine": machine(),
        "loadavg_1min": {"before": round(load_before[0], 2),
                         "after": round(os.getloadavg()[0], 2)},
        "results": {m: {k: {"runs": v, "median": med(v)} for k, v in per.items()}
                    for m, per in results.items()},
        "cpu_ms_per_unit": {m: {k: {who: med(v) for who, v in w.items()}
                                for k, w in per.items()} for m, per in cpu.items()},
    }


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds of a live process (not of its children)."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def master_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def _label(report: dict[str, Any], key: str, label: str) -> str:
    if key in report["sizes_mib"]:
        return f"{label} ({report['sizes_mib'][key]} MiB)"
    if key in report["commands"]:
        return f"{label} (median of {report['commands'][key]})"
    return label


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def tables(report: dict[str, Any]) -> str:
    """Markdown: ratios, then absolute values, then CPU cost."""
    keys = report["transports"]
    res = report["results"]
    out = []
    others = [k for k in keys if k != "furl"]
    if "furl" in keys and others:
        out.append("Ratios of medians, FURL / other:\n")
        out.append(_row(["metric"] + [f"FURL/{TRANSPORTS[k]}" for k in others]))
        out.append("|" + "---|" * (1 + len(others)))
        for key, label, unit, higher in METRICS:
            sense = ">1: FURL faster" if higher else "<1: FURL faster"
            out.append(_row([f"{_label(report, key, label)}, {unit} ({sense})"]
                            + [ratio(res[key]["furl"]["median"], res[key][k]["median"])
                               for k in others]))
        out.append("")
    out.append(f"Medians of {report['runs']} runs [min-max]:\n")
    out.append(_row(["metric"] + [TRANSPORTS[k] for k in keys]))
    out.append("|" + "---|" * (1 + len(keys)))
    for key, label, unit, higher in METRICS:
        cells = []
        fmt = "{:.0f}" if unit == "MiB/s" else "{:.2f}" if key != "connect" else "{:.1f}"
        for k in keys:
            v, runs = res[key][k]["median"], res[key][k]["runs"]
            if v is None:
                cells.append("n/a")
            else:
                spread = f" [{fmt.format(min(runs))}-{fmt.format(max(runs))}]"
                cells.append(fmt.format(v) + (spread if len(runs) > 1 else ""))
        better = "higher" if higher else "lower"
        out.append(_row([f"{_label(report, key, label)}, {unit} ({better} is better)"] + cells))
    out.append("")
    out.append("CPU, worker process + master process (ms per MiB, or per command):\n")
    out.append(_row(["metric"] + [TRANSPORTS[k] for k in keys]))
    out.append("|" + "---|" * (1 + len(keys)))
    for key, label, _unit, _h in METRICS[1:]:
        cells = []
        for k in keys:
            c = report["cpu_ms_per_unit"][key][k]
            if c["worker"] is None:
                cells.append("n/a")
            else:
                cells.append(f"{c['worker']:.1f} + {c['master']:.1f}")
        out.append(_row([label] + cells))
    return "\n".join(out)


def default_tmpdir() -> str | None:
    """/dev/shm when it is writable with room for the files (about 0.75 GiB
    at peak for the full profile): the benchmark is about transports, and
    page-cache writeback of the copies is the largest source of noise."""
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize > 3 * 1024 * MiB:
        return shm
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 60 s)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per metric (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--transports", default=DEFAULT_TRANSPORTS,
                        help=f"comma-separated, from: {','.join(TRANSPORTS)} "
                             f"(default {DEFAULT_TRANSPORTS}; the *nd ones are PB with "
                             "TCP_NODELAY on both ends, a diagnostic)")
    parser.add_argument("--profile-workers", action="store_true",
                        help="run each worker under cProfile (stats in the kept tmpdir); "
                             "numbers are then not comparable")
    parser.add_argument("--only", default=",".join(m[0] for m in METRICS[1:]),
                        help="comma-separated metrics to run besides connect "
                             "(stream,upload,download,stat,true)")
    parser.add_argument("--tmpdir", default=None,
                        help="where test files go (default: /dev/shm if it has room, so "
                             "that disk writeback does not add noise; else $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    args.only = {m.strip() for m in args.only.split(",") if m.strip()}
    bad = [t for t in args.transports if t not in TRANSPORTS]
    bad += [m for m in args.only if m not in dict((x[0], x) for x in METRICS[1:])]
    if bad or not args.transports or args.runs < 1:
        parser.error(f"unknown transport(s)/metric(s) {bad}" if bad else "nothing to run")

    tmp = Path(tempfile.mkdtemp(prefix="furlbench-", dir=args.tmpdir or default_tmpdir()))
    tmp.chmod(0o700)
    (tmp / "logs").mkdir()
    children = Children(tmp / "logs", args.profile_workers)
    args.keep = args.keep or args.profile_workers
    atexit.register(children.kill_all_now)
    reactor.addSystemEventTrigger("before", "shutdown", children.kill_all_now)
    outcome: dict[str, Any] = {}

    async def run() -> None:
        t0 = now()
        try:
            outcome["report"] = await bench(args, tmp, children)
            outcome["report"]["wall_seconds"] = round(now() - t0, 1)
        except BaseException as e:  # reported below, after every process is gone
            outcome["error"] = e
            outcome["traceback"] = Failure().getTraceback()
        finally:
            await children.stop_all()

    def start() -> None:
        d = defer.Deferred.fromCoroutine(run())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    children.kill_all_now()

    if "report" not in outcome:
        note(outcome.get("traceback", "interrupted"))
        if not args.keep:  # the test files are large and may sit in RAM (/dev/shm)
            for entry in tmp.iterdir():
                if entry.name != "logs":
                    shutil.rmtree(entry, ignore_errors=True)
                    with contextlib.suppress(OSError):
                        entry.unlink()
        note(f"benchmark failed: {outcome.get('error', 'interrupted')}; "
             f"logs kept in {tmp / 'logs'}")
        return 1
    report = outcome["report"]
    print(tables(report))
    note(f"({report['runs']} runs per metric, median; {report['wall_seconds']} s in all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if args.keep:
        note(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
