"""The admin side of standalone use: run a command, put and get files.

These talk to a running master through its admin FURL
(:mod:`buildbot_furl.admin_client`); the CLI only parses and prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import sys
import time
from typing import Any, BinaryIO

from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from zope.interface import implementer

from buildbot_furl.admin_client import run_with_admin
from buildbot_furl.errors import BadRequest, FurlError
from buildbot_furl.master.config import MasterPaths
from buildbot_furl.master.connection import FileReaderAdapter, FileWriterAdapter
from buildbot_furl.master.transfer import LocalFileReader, LocalFileWriter
from buildbot_furl.protocol import RIOutput, call, decode, encode, remote_method


class TransferFailed(FurlError):
    """A put/get did not complete; nothing was left under the final name."""


@implementer(RIOutput)
class OutputSink(Referenceable):
    """Receives a run's output and writes it to our stdout/stderr as it comes."""

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO, verbose: bool = False) -> None:
        self.streams = {"stdout": stdout, "stderr": stderr}
        self.verbose = verbose

    @remote_method
    def remote_output(self, batch: bytes) -> None:
        items = decode(batch)
        if not isinstance(items, list):
            raise BadRequest("output wants a list")
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)):
                continue
            key, text = item
            if key == "header":
                if self.verbose:
                    self.streams["stderr"].write(text.encode("utf-8", "replace"))
                continue
            stream = self.streams.get(key)
            if stream is not None:
                stream.write(text.encode("utf-8", "surrogateescape"))
                stream.flush()


def run_command(paths: MasterPaths, worker: str, argv: list[str], workdir: str | None,
                env: dict[str, str], timeout: float | None, verbose: bool = False
                ) -> tuple[int, str | None]:
    """Run ``argv`` on ``worker``; (exit code, message for stderr or None).

    A remote signal N gives 128+N; Ctrl-C interrupts the remote command
    (a second Ctrl-C gives up waiting) and gives 130.
    """
    run_id = f"cli-{secrets.token_hex(8)}"
    sink = OutputSink(sys.stdout.buffer, sys.stderr.buffer, verbose)
    interrupted = {"n": 0}

    async def go(admin: Any) -> dict[str, Any]:
        def on_sigint(signum: int, frame: Any) -> None:
            interrupted["n"] += 1
            if interrupted["n"] == 1:
                sys.stderr.write("\ninterrupting the remote command (Ctrl-C again to stop "
                                 "waiting)\n")
                reactor.callFromThread(_interrupt, admin, run_id)
            else:
                os._exit(130)

        signal.signal(signal.SIGINT, on_sigint)
        request = {"argv": argv, "workdir": workdir, "env": env, "timeout": timeout,
                   "run_id": run_id}
        return await call(admin, "run", worker, encode(request), sink)

    result = run_with_admin(paths, go)
    if interrupted["n"]:
        return 130, "interrupted"
    message = None
    if result.get("failure_reason") == "timeout":
        message = f"the command timed out after {timeout:g} s and was killed"
    if result.get("signal"):
        return 128 + int(result["signal"]), message or f"killed by signal {result['signal']}"
    rc = result.get("rc")
    return (rc if isinstance(rc, int) and 0 <= rc < 256 else 1), message


def _interrupt(admin: Any, run_id: str) -> None:
    d = defer.Deferred.fromCoroutine(call(admin, "interrupt", run_id))
    d.addErrback(lambda f: None)


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last > 0.1:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        rate = self.done / max(time.monotonic() - self.started, 1e-6) / 2**20
        if self.total:
            pct = 100 * self.done / self.total
            bar = "#" * int(pct / 4)
            line = f"{self.label} [{bar:<25}] {pct:5.1f}% {self.done / 2**20:.1f} MiB {rate:.0f} MiB/s"
        else:
            line = f"{self.label} {self.done / 2**20:.1f} MiB {rate:.0f} MiB/s"
        sys.stderr.write("\r" + line)
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")


class _CountingReader(LocalFileReader):
    def __init__(self, path: str, progress: Progress) -> None:
        super().__init__(path)
        self.progress = progress

    def remote_read(self, maxlength: int) -> bytes:
        data = super().remote_read(maxlength)
        self.progress.add(len(data))
        return data


class _HeldWriter(LocalFileWriter):
    """Writes to a temp file; renamed into place only once verified."""

    def __init__(self, path: str, progress: Progress) -> None:
        super().__init__(path)
        self.progress = progress
        self.finished = False

    def remote_write(self, data: bytes | str) -> None:
        super().remote_write(data)
        self.progress.add(len(data))

    def remote_utime(self, accessed_modified: Any) -> None:
        pass

    def remote_close(self) -> None:
        self._close_tmp()
        self.finished = True

    def commit(self, mode: int | None) -> None:
        if self.tmp_path is None:
            raise TransferFailed("the transfer was cancelled")
        if mode is not None:
            os.chmod(self.tmp_path, mode)
        os.replace(self.tmp_path, self.path)
        self.tmp_path = None


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def put_file(paths: MasterPaths, worker: str, local: str, remote: str,
             progress: bool) -> dict[str, Any]:
    """Copy ``local`` to ``remote`` (relative to the worker's directory)."""
    if not os.path.isfile(local):
        raise TransferFailed(f"{local} is not a readable file")
    digest = sha256_of(local)
    size = os.path.getsize(local)
    bar = Progress(f"put {os.path.basename(local)}", size, progress)
    reader = _CountingReader(local, bar)
    mode = os.stat(local).st_mode & 0o777

    async def go(admin: Any) -> dict[str, Any]:
        req = {"remote": remote, "sha256": digest, "mode": mode}
        return await call(admin, "put", worker, encode(req), FileReaderAdapter(reader))

    try:
        result = run_with_admin(paths, go)
    finally:
        reader.remote_close()
        bar.finish()
    if reader.sha256 != digest or result.get("sha256") != digest:
        raise TransferFailed(f"{local} changed while it was being copied; nothing was kept")
    return {"size": size, **result}


def get_file(paths: MasterPaths, worker: str, remote: str, local: str,
             progress: bool) -> dict[str, Any]:
    """Copy the worker's ``remote`` file to ``local``; verified, then renamed."""
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(remote.rstrip("/")))
    parent = os.path.dirname(os.path.abspath(local))
    if not os.path.isdir(parent):
        raise TransferFailed(f"{parent} does not exist")
    bar = Progress(f"get {os.path.basename(remote)}", None, progress)
    writer = _HeldWriter(local, bar)

    async def go(admin: Any) -> dict[str, Any]:
        return await call(admin, "get", worker, encode({"remote": remote}),
                          FileWriterAdapter(writer))

    try:
        result = run_with_admin(paths, go)
        if not writer.finished:
            raise TransferFailed("the transfer did not finish")
        if writer.sha256 != result.get("sha256"):
            raise TransferFailed(f"checksum mismatch for {remote}; nothing was kept "
                                 "(did the file change during the copy?)")
        writer.commit(result.get("mode"))
    finally:
        bar.finish()
        with contextlib.suppress(Exception):
            writer.cancel()
    return result
