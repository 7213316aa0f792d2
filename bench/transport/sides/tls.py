"""``tls``: the raw TLS baseline's master end -- the same bytes, no RPC.

Twisted TLS on both ends, a few bytes of framing (see the worker end,
raw_worker.py): the stream is ``cat`` piped to the socket, then
``R rc``; an upload is the file itself, written to a temporary file and
renamed into place as Buildbot's FileWriter does; a download is the file,
answered by ``K``; a stat is a one-line request answered by one line.
There is no ``shell true``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor, ssl
from twisted.protocols.basic import FileSender

from bench.transport.clock import OP_TIMEOUT, now, within
from bench.transport.sides.base import Side


class RawMaster(protocol.Protocol):
    """One worker's connection.  ``mode`` says what the incoming bytes are:
    ``line`` (answers), ``count`` (stream output, counted and dropped),
    ``header`` (an upload's 8-byte size), ``file`` (an upload's bytes)."""

    def __init__(self, side: TlsSide) -> None:
        self.side = side
        self.mode = "line"
        self.buf = b""
        self.left = 0
        self.fp: Any = None
        self.tmp_name = ""
        self.dest: Path | None = None
        self.t_end = 0.0
        self.waiter: defer.Deferred[Any] | None = None

    def request(self, line: str, mode: str = "line", left: int = 0) -> defer.Deferred[Any]:
        """Send one request line; the Deferred fires with its answer."""
        self.mode, self.left = mode, left
        self.waiter = defer.Deferred()
        self.transport.write(line.encode() + b"\n")
        return self.waiter

    def _fire(self, value: Any) -> None:
        self.t_end = now()
        d, self.waiter = self.waiter, None
        if d is not None:
            reactor.callLater(0, lambda: d.called or d.callback(value))

    def dataReceived(self, data: bytes) -> None:
        while data:
            if self.mode == "count":
                data = self._count(data)
            elif self.mode == "header":
                data = self._header(data)
            elif self.mode == "file":
                data = self._file(data)
            else:
                data = self._lines(data)

    def _count(self, data: bytes) -> bytes:
        """A shell stream: discarded, like a log would be."""
        n = min(len(data), self.left)
        self.left -= n
        if self.left == 0:
            self.mode = "line"
        return data[n:]

    def _header(self, data: bytes) -> bytes:
        self.buf += data
        if len(self.buf) < 8:
            return b""
        (self.left,), data, self.buf = struct.unpack(">Q", self.buf[:8]), self.buf[8:], b""
        self.mode = "file"
        if self.left == 0:
            self._file_done()
        return data

    def _file(self, data: bytes) -> bytes:
        take = data[: self.left]
        self.fp.write(take)
        self.left -= len(take)
        if self.left == 0:
            self._file_done()
        return data[len(take):]

    def _file_done(self) -> None:
        # what Buildbot's FileWriter.remote_close does: close, rename into place
        self.fp.close()
        self.fp = None
        os.replace(self.tmp_name, self.dest)  # type: ignore[arg-type]
        self.mode = "line"
        self._fire(None)

    def _lines(self, data: bytes) -> bytes:
        self.buf += data
        while self.mode == "line" and b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self._line(line.decode())
        if self.mode == "line":
            return b""
        data, self.buf = self.buf, b""
        return data

    def _line(self, line: str) -> None:
        if line.startswith("hello "):
            self.side._attached(line[6:], self)
        elif line.startswith("R "):
            self._fire(int(line[2:]))
        else:  # "K" or a stat answer
            self._fire(line)


class TlsSide(Side):
    key = "tls"
    label = "raw TLS"
    needs_cert = True
    supports = ("connect", "stream", "upload", "download", "stat")
    conn: RawMaster

    async def setup(self, n: int) -> None:
        assert self.cert is not None
        key, cert = self.cert.key.read_bytes(), self.cert.cert.read_bytes()
        options = ssl.PrivateCertificate.loadPEM(key + cert).options()
        factory = protocol.Factory.forProtocol(lambda: RawMaster(self))
        self.listener = reactor.listenSSL(0, factory, options, interface="127.0.0.1")

    def child_config(self, name: str, basedir: str) -> tuple[dict[str, Any], dict[str, str]]:
        assert self.cert is not None
        return {"kind": "tls", "basedir": basedir, "name": name,
                "port": self.listener.getHost().port, "cert": str(self.cert.cert)}, {}

    async def prepare(self) -> None:
        self.conn = self.handle
        assert self.worker_basedir is not None
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
        dest = self.build_dir / dest_name
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
