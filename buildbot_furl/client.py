"""The admin side of standalone use: run a command, put and get files.

These talk to a running master through its admin FURL
(:mod:`buildbot_furl.admin_client`); the CLI only parses and prints.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import tarfile
import tempfile
import time
from typing import Any, BinaryIO

from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from zope.interface import implementer

from buildbot_furl import fileops
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
    if result.get("failure_reason") in ("timeout", "timeout_without_output"):
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
    """Receives a file, or a directory's tar stream (then ``unpack`` is
    called), into a temp file; nothing reaches the final name unverified."""

    def __init__(self, path: str, progress: Progress) -> None:
        super().__init__(path)
        self.progress = progress
        self.finished = False
        self.is_tar = False

    def remote_write(self, data: bytes | str) -> None:
        super().remote_write(data)
        self.progress.add(len(data))

    def remote_utime(self, accessed_modified: Any) -> None:
        pass

    def remote_unpack(self) -> None:
        self.is_tar = True
        self.remote_close()

    def remote_close(self) -> None:
        self._close_tmp()
        self.finished = True

    def commit(self, expect: str, mode: int | None) -> None:
        """Move the verified result to its final name, or raise TransferFailed."""
        if self.tmp_path is None:
            raise TransferFailed("the transfer was cancelled")
        if self.is_tar:
            if os.path.lexists(self.path):
                raise TransferFailed(f"{self.path} already exists; not replacing a directory")
            try:
                digest = fileops.unpack(self.tmp_path, self.path, expect)
            except (OSError, tarfile.TarError) as e:
                raise TransferFailed(f"cannot unpack the directory: {e}") from None
            finally:
                self.tmp_path = None
            if digest != expect:
                raise TransferFailed("the unpacked tree differs from the worker's; nothing kept")
            return
        if self.sha256 != expect:
            raise TransferFailed("checksum mismatch; nothing was kept "
                                 "(did the file change during the copy?)")
        if mode is not None:
            os.chmod(self.tmp_path, mode)
        os.replace(self.tmp_path, self.path)
        self.tmp_path = None


def _tar_directory(src: str, dest_fd: int) -> None:
    with os.fdopen(dest_fd, "wb") as f, tarfile.open(fileobj=f, mode="w|") as tf:
        for name in sorted(os.listdir(src)):
            tf.add(os.path.join(src, name), arcname=name)


def put_file(paths: MasterPaths, worker: str, local: str, remote: str,
             progress: bool) -> dict[str, Any]:
    """Copy the file or directory ``local`` to ``remote`` on the worker."""
    if os.path.isdir(local):
        fd, tar_path = tempfile.mkstemp(prefix="furl-put-", suffix=".tar")
        try:
            _tar_directory(local, fd)
            tree = fileops.manifest(local)
            return _put(paths, worker, tar_path, remote, progress, "dir", tree, local)
        finally:
            os.unlink(tar_path)
    if not os.path.isfile(local):
        raise TransferFailed(f"{local} is not a readable file or directory")
    return _put(paths, worker, local, remote, progress, "file", None, local)


def _put(paths: MasterPaths, worker: str, path: str, remote: str, progress: bool, kind: str,
         tree: str | None, label: str) -> dict[str, Any]:
    digest = fileops.sha256_file(path)
    size = os.path.getsize(path)
    bar = Progress(f"put {os.path.basename(label.rstrip('/'))}", size, progress)
    reader = _CountingReader(path, bar)

    async def go(admin: Any) -> dict[str, Any]:
        req = {"remote": remote, "sha256": digest, "kind": kind, "manifest": tree,
               "mode": os.stat(path).st_mode & 0o777}
        return await call(admin, "put", worker, encode(req), FileReaderAdapter(reader))

    try:
        result = run_with_admin(paths, go)
    finally:
        reader.remote_close()
        bar.finish()
    if reader.sha256 != digest:
        raise TransferFailed(f"{label} changed while it was being copied")
    return {"size": size, **result}


def get_file(paths: MasterPaths, worker: str, remote: str, local: str,
             progress: bool) -> dict[str, Any]:
    """Copy the worker's file or directory ``remote`` to ``local``."""
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(remote.rstrip("/")))
    parent = os.path.dirname(os.path.abspath(local))
    if not os.path.isdir(parent):
        raise TransferFailed(f"{parent} does not exist")
    bar = Progress(f"get {os.path.basename(remote.rstrip('/'))}", None, progress)
    writer = _HeldWriter(local, bar)

    async def go(admin: Any) -> dict[str, Any]:
        return await call(admin, "get", worker, encode({"remote": remote}),
                          FileWriterAdapter(writer))

    try:
        result = run_with_admin(paths, go)
        if not writer.finished:
            raise TransferFailed("the transfer did not finish")
        writer.commit(result["sha256"], result.get("mode") if result.get("kind") == "file"
                      else None)
    finally:
        bar.finish()
        with contextlib.suppress(Exception):
            writer.cancel()
    return {"local": local, **result}
