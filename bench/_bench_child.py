"""Worker side of bench_transport.py: one process, one transport, its own reactor.

Started by bench_transport.py, never by hand.  The parent passes a JSON
config in the environment variable ``BENCH_CHILD``::

    {"kind": "furl" | "pb" | "tls", "basedir": DIR, ...}

* ``furl``: buildbot_furl's WorkerService (the furl-worker daemon's
  service: FurlBot + foolscap Reconnector + attach) dialing ``furl``.
* ``pb``: buildbot-worker's own ``buildbot_worker.pb.Worker`` (BotPb,
  AutoLoginPBFactory, ClientService) dialing ``connection_string``
  (``tcp:...`` or ``tls:...``), with ``name``/``password``.
* ``tls``: a bare Twisted TLS client speaking the tiny framing protocol of
  :class:`RawWorker` (no RPC at all): the baseline.

Control is by lines on stdin/stdout, so that the expensive part of start-up
(imports, key generation) is over before the parent starts its clock:

    child  -> parent   ``ready``   set up, not connected yet
    parent -> child    ``go``      connect now (the parent times go -> attach)
    parent -> child    ``quit``    stop the service and exit (EOF does the same)

The child asks the kernel to SIGTERM it when the parent dies, so a crashed
benchmark leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: the stdin EOF rule below still applies
        pass
    if os.getppid() == 1:
        sys.exit(1)


# -- the raw TLS baseline ------------------------------------------------------


def build_tls(cfg: dict[str, Any]) -> tuple[Any, Any]:
    from twisted.internet import protocol, reactor, ssl
    from twisted.protocols.basic import FileSender

    with open(cfg["cert"], "rb") as f:
        trust = ssl.Certificate.loadPEM(f.read())
    options = ssl.optionsForClientTLS("127.0.0.1", trustRoot=trust)

    class CatRelay(protocol.ProcessProtocol):
        """``cat FILE``'s stdout, forwarded to the TLS connection as it comes;
        the process's pipe is paused while TLS cannot keep up."""

        def __init__(self, out: Any) -> None:
            self.out = out

        def connectionMade(self) -> None:
            self.out.transport.registerProducer(self.transport, True)

        def outReceived(self, data: bytes) -> None:
            self.out.transport.write(data)

        def processEnded(self, reason: Any) -> None:
            self.out.transport.unregisterProducer()
            code = getattr(reason.value, "exitCode", 1)
            self.out.transport.write(b"R %d\n" % (code or 0))

    class RawWorker(protocol.Protocol):
        """Requests are lines; answers are lines or raw bytes.

        ``C PATH``   run ``cat PATH``; its output, then ``R rc``
        ``U PATH``   8-byte big-endian size, then the file's bytes
        ``D N PATH`` N raw bytes follow; written to PATH, then ``K``
        ``T PATH``   os.stat(PATH) as one line
        """

        def __init__(self) -> None:
            self.buf = b""
            self.sink: Any = None
            self.left = 0

        def connectionMade(self) -> None:
            # written before the handshake ends; TLS sends it right after
            self.transport.write(b"hello %s\n" % cfg["name"].encode())

        def dataReceived(self, data: bytes) -> None:
            if self.sink is not None:
                data = self._raw(data)
            self.buf += data
            while self.sink is None and b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                self._request(line.decode())
                if self.sink is not None and self.buf:
                    rest, self.buf = self.buf, b""
                    self.buf = self._raw(rest)

        def _raw(self, data: bytes) -> bytes:
            take = data[: self.left]
            self.sink.write(take)
            self.left -= len(take)
            if self.left == 0:
                self.sink.close()
                self.sink = None
                self.transport.write(b"K\n")
            return data[len(take):]

        def _request(self, line: str) -> None:
            op, _, rest = line.partition(" ")
            if op == "C":
                reactor.spawnProcess(CatRelay(self), "cat", ["cat", rest],
                                     env=os.environ, childFDs={0: "w", 1: "r", 2: 2})
            elif op == "U":
                fp = open(rest, "rb")  # noqa: SIM115 - closed when sent
                self.transport.write(struct.pack(">Q", os.fstat(fp.fileno()).st_size))
                d = FileSender().beginFileTransfer(fp, self.transport)
                d.addBoth(lambda _: fp.close())
            elif op == "D":
                n, _, path = rest.partition(" ")
                self.left = int(n)
                self.sink = open(path, "wb")  # noqa: SIM115 - closed in _raw
                if self.left == 0:
                    self._raw(b"")
            elif op == "T":
                st = os.stat(rest)
                self.transport.write(repr(tuple(st)).encode() + b"\n")
            else:
                self.transport.loseConnection()

    factory = protocol.ClientFactory.forProtocol(RawWorker)
    conn: dict[str, Any] = {}

    def start() -> None:
        conn["c"] = reactor.connectSSL("127.0.0.1", cfg["port"], factory, options)

    def stop() -> None:
        if "c" in conn:
            conn["c"].disconnect()

    return start, stop


# -- buildbot_furl's worker ----------------------------------------------------


def build_furl(cfg: dict[str, Any]) -> tuple[Any, Any]:
    from buildbot_furl.furl import parse_furl
    from buildbot_furl.worker.config import WorkerPaths
    from buildbot_furl.worker.service import WorkerService

    os.chdir(cfg["basedir"])
    svc = WorkerService(WorkerPaths(cfg["basedir"]), parse_furl(os.environ["BENCH_FURL"]))
    return svc.startService, svc.stopService


# -- buildbot-worker's PB worker -----------------------------------------------


def build_pb(cfg: dict[str, Any]) -> tuple[Any, Any]:
    from buildbot_worker.pb import Worker

    if cfg.get("nodelay"):
        # diagnostic variant: Twisted PB never sets TCP_NODELAY (foolscap does)
        from twisted.spread import pb

        made = pb.Broker.connectionMade

        def connectionMade(self: Any) -> None:
            made(self)
            set_nodelay(self.transport)

        pb.Broker.connectionMade = connectionMade

    os.chdir(cfg["basedir"])
    worker = Worker(None, None, cfg["name"], os.environ["BENCH_PASSWORD"], cfg["basedir"],
                    keepalive=0, connection_string=cfg["connection_string"])
    return worker.startService, worker.stopService


def set_nodelay(transport: Any) -> None:
    """TCP_NODELAY on the TCP transport under ``transport`` (TLS included)."""
    while transport is not None:
        if hasattr(transport, "setTcpNoDelay"):
            try:
                transport.setTcpNoDelay(True)
                return
            except Exception:
                pass
        transport = getattr(transport, "transport", None)


# -- control -------------------------------------------------------------------


def main() -> None:
    _die_with_parent()
    cfg = json.loads(os.environ["BENCH_CHILD"])
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineOnlyReceiver

    start, stop = {"tls": build_tls, "furl": build_furl, "pb": build_pb}[cfg["kind"]](cfg)
    state = {"stopping": False}

    def shutdown() -> None:
        if state["stopping"]:
            return
        state["stopping"] = True
        d = defer.maybeDeferred(stop)
        d.addTimeout(5, reactor)
        d.addBoth(lambda _: reactor.stop())

    class Control(LineOnlyReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.sendLine(b"ready")

        def lineReceived(self, line: bytes) -> None:
            if line == b"go":
                start()
            elif line == b"quit":
                shutdown()

        def connectionLost(self, reason: Any) -> None:
            shutdown()

    reactor.callWhenRunning(stdio.StandardIO, Control())
    profile = os.environ.get("BENCH_PROFILE")
    if profile:  # diagnostic: where the worker's CPU goes
        import cProfile

        prof = cProfile.Profile()
        prof.runcall(reactor.run)
        prof.dump_stats(profile)
    else:
        reactor.run()


if __name__ == "__main__":
    main()
