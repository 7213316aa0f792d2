"""The worker end of the raw TLS baseline: Twisted TLS, a little framing, no RPC.

Requests are lines; answers are lines or raw bytes:

    ``C PATH``    run ``cat PATH``; its output, then ``R rc``
    ``U PATH``    8-byte big-endian size, then the file's bytes
    ``D N PATH``  N raw bytes follow; written to PATH, then ``K``
    ``T PATH``    os.stat(PATH) as one line

On connecting it says ``hello NAME``: the master's "attach".  The master
end is sides/tls.py.  Imported by child.py only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol, reactor, ssl
from twisted.protocols.basic import FileSender


class CatRelay(protocol.ProcessProtocol):
    """``cat FILE``'s stdout, forwarded to the TLS connection as it comes;
    the process's pipe is paused while TLS cannot keep up."""

    def __init__(self, out: RawWorker) -> None:
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
    """Answers the requests above, one at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buf = b""
        self.sink: Any = None  # the file a ``D`` request is writing
        self.left = 0

    def connectionMade(self) -> None:
        # written before the handshake ends; TLS sends it right after
        self.transport.write(b"hello %s\n" % self.name.encode())

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
        """Bytes of a download, into the sink; returns what follows them."""
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
        handler = {"C": self._cat, "U": self._send_file, "D": self._receive_file,
                   "T": self._stat}.get(op)
        if handler is None:
            self.transport.loseConnection()
        else:
            handler(rest)

    def _cat(self, path: str) -> None:
        reactor.spawnProcess(CatRelay(self), "cat", ["cat", path],
                             env=os.environ, childFDs={0: "w", 1: "r", 2: 2})

    def _send_file(self, path: str) -> None:
        fp = open(path, "rb")  # noqa: SIM115 - closed when sent
        self.transport.write(struct.pack(">Q", os.fstat(fp.fileno()).st_size))
        d = FileSender().beginFileTransfer(fp, self.transport)
        d.addBoth(lambda _: fp.close())

    def _receive_file(self, rest: str) -> None:
        n, _, path = rest.partition(" ")
        self.left = int(n)
        self.sink = open(path, "wb")  # noqa: SIM115 - closed in _raw
        if self.left == 0:
            self._raw(b"")

    def _stat(self, path: str) -> None:
        self.transport.write(repr(tuple(os.stat(path))).encode() + b"\n")


def build(cfg: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    """(connect, disconnect) to the master at ``cfg["port"]``, pinning ``cfg["cert"]``."""
    with open(cfg["cert"], "rb") as f:
        trust = ssl.Certificate.loadPEM(f.read())
    options = ssl.optionsForClientTLS("127.0.0.1", trustRoot=trust)
    factory = protocol.ClientFactory.forProtocol(lambda: RawWorker(cfg["name"]))
    conn: dict[str, Any] = {}

    def start() -> None:
        conn["c"] = reactor.connectSSL("127.0.0.1", cfg["port"], factory, options)

    def stop() -> None:
        if "c" in conn:
            conn["c"].disconnect()

    return start, stop
