"""``furl-master put``/``get``: files and directories, verified end to end.

What is sent is hashed as it is read here and checked on the worker
before it takes its final name there; what is received is checked here
against the digest the worker computed over the very bytes it sent, and
only then renamed to its final name.  A directory travels as a tar stream
(:mod:`buildbot_furl.tree`) and is compared by its manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from typing import IO, Any

from foolscap.api import Referenceable
from zope.interface import implementer

from buildbot_furl import tree
from buildbot_furl.client.connect import require_standalone, run_with_admin
from buildbot_furl.client.progress import Progress
from buildbot_furl.errors import (
    BadRequest,
    CommandFailed,
    FurlError,
    Interrupted,
    LocalFileError,
)
from buildbot_furl.layout import MasterPaths
from buildbot_furl.protocol import (
    MAX_CHUNK,
    RIFileReader,
    RIFileWriter,
    call,
    remote_method,
)
from buildbot_furl.protocol.messages import FileInfo, GetRequest, PutAnswer, PutRequest


class TransferFailed(FurlError):
    """A put/get did not complete; nothing was left under the final name."""


@implementer(RIFileReader)
class LocalSource(Referenceable):
    """What a put reads: an open file, hashed and counted as it is read."""

    def __init__(self, fp: IO[bytes], progress: Progress) -> None:
        self.fp: IO[bytes] | None = fp
        self.progress = progress
        self.sha = hashlib.sha256()
        self.size = 0

    @remote_method
    def remote_read(self, offset: int, length: int) -> bytes:
        if self.fp is None:
            return b""
        if not isinstance(length, int) or length < 0:
            raise BadRequest("read wants a non-negative length")
        if offset != self.size:
            raise BadRequest(f"read at {offset}: the copy is at {self.size}")
        data = self.fp.read(min(length, MAX_CHUNK))
        self.sha.update(data)
        self.size += len(data)
        self.progress.add(len(data))
        return data

    @remote_method
    def remote_close(self) -> None:
        self.fp = None


@implementer(RIFileWriter)
class LocalSink(Referenceable):
    """What a get writes into: a temporary file beside the destination."""

    def __init__(self, dest: str, progress: Progress) -> None:
        self.dest = dest
        self.progress = progress
        self.dir = os.path.dirname(os.path.abspath(dest)) or "."
        fd, self.tmp_path = tempfile.mkstemp(
            dir=self.dir, prefix=f".{os.path.basename(dest)[:100]}.", suffix=".furl-part")
        self.fp: IO[bytes] | None = os.fdopen(fd, "w+b")
        self.sha = hashlib.sha256()
        self.size = 0
        self.finished = False
        self.is_tar = False
        #: why writing here failed (a full disk...): what the admin is told
        self.error: LocalFileError | None = None

    @remote_method
    def remote_write(self, offset: int, data: bytes) -> int:
        if self.error is not None:
            raise CommandFailed(str(self.error))
        if self.fp is None or self.finished:
            raise BadRequest("write after close")
        if not isinstance(data, bytes):
            raise BadRequest("write wants bytes")
        if offset != self.size:
            raise BadRequest(f"write at {offset}: the copy is at {self.size}")
        try:
            self.fp.write(data)
            self.fp.flush()  # a full disk is found now, not at the end
        except OSError as e:
            self.error = LocalFileError(f"cannot write {self.dest}: {e.strerror or e}")
            self.cancel()  # nothing is kept: free the space at once
            # a typed error, so that the worker stops sending (no traceback here)
            raise CommandFailed(str(self.error)) from None
        self.sha.update(data)
        self.size += len(data)
        self.progress.add(len(data))
        return self.size

    @remote_method
    def remote_utime(self, times: bytes) -> None:
        pass  # a get gives the file the time it arrives

    @remote_method
    def remote_unpack(self) -> None:
        self.is_tar = True
        self.finished = True

    @remote_method
    def remote_close(self) -> None:
        self.finished = True

    def commit(self, info: FileInfo) -> None:
        """Give the verified result its final name, or raise TransferFailed."""
        if self.fp is None:
            raise TransferFailed("the transfer was cancelled")
        if not self.finished:
            raise TransferFailed("the transfer did not finish")
        if self.sha.hexdigest() != info.sha256:
            raise TransferFailed("checksum mismatch; nothing was kept "
                                 "(did the file change during the copy?)")
        self.fp.flush()
        os.fsync(self.fp.fileno())
        if info.kind == "dir":
            self._commit_tree(info.manifest)
            return
        if info.mode is not None:
            os.chmod(self.tmp_path, tree.transferred_mode(info.mode))
        self.fp.close()
        self.fp = None
        os.replace(self.tmp_path, self.dest)

    def _commit_tree(self, expect: Any) -> None:
        assert self.fp is not None
        if os.path.lexists(self.dest):
            raise TransferFailed(f"{self.dest} already exists; not replacing it")
        part = f".{os.path.basename(self.dest)[:100]}.{secrets.token_hex(4)}.furl-part"
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fp.seek(0)
            try:
                digest = tree.unpack(self.fp, dfd, part)
            except OSError as e:
                raise LocalFileError(f"cannot write {self.dest}: {e.strerror or e}") from None
            except FurlError as e:
                raise TransferFailed(f"cannot unpack the directory: {e}") from None
            if digest != expect:
                tree.remove_tree(dfd, part)
                raise TransferFailed("the unpacked tree differs from the worker's; "
                                     "nothing kept")
            os.rename(part, os.path.basename(self.dest), src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)

    def cancel(self) -> None:
        if self.fp is not None:
            with contextlib.suppress(OSError):
                self.fp.close()
            self.fp = None
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)


class PutOperation:
    """One ``put`` of a local file or directory to a worker."""

    def __init__(self, paths: MasterPaths, worker: str, local: str, remote: str,
                 progress: bool) -> None:
        self.paths = paths
        self.worker = worker
        self.local = local
        self.remote = remote
        self.progress = progress

    def run(self) -> dict[str, Any]:
        """Copy it; the master's answer plus ``size``."""
        if os.path.isdir(self.local):
            with tempfile.TemporaryFile() as tmp:
                try:
                    manifest = tree.pack_path(self.local, tmp)
                except BadRequest as e:
                    raise TransferFailed(f"{self.local}: {e}") from None
                size = tmp.tell()
                tmp.seek(0)
                return self._send(tmp, size, "dir", manifest, None)
        try:
            fp = open(self.local, "rb")  # noqa: SIM115 - closed below
        except (IsADirectoryError, FileNotFoundError):
            raise TransferFailed(f"{self.local} is not a readable file or directory") from None
        with fp:
            st = os.fstat(fp.fileno())
            return self._send(fp, st.st_size, "file", None, st.st_mode & 0o777)

    def _send(self, fp: IO[bytes], size: int, kind: str, manifest: str | None,
              mode: int | None) -> dict[str, Any]:
        # the digest the worker checks: of the bytes about to be sent
        start = fp.tell()
        digest = _sha256_file(fp)
        fp.seek(start)
        bar = Progress(f"put {os.path.basename(self.local.rstrip('/'))}", size, self.progress)
        source = LocalSource(fp, bar)
        request = PutRequest(self.remote, kind, digest, manifest, mode)

        async def go(admin: Any) -> PutAnswer:
            require_standalone(admin)
            return PutAnswer.from_wire(
                await call(admin, "put", self.worker, request.to_wire(), source))

        try:
            result = run_with_admin(self.paths, go)
        except (Interrupted, KeyboardInterrupt):
            # the master interrupts the transfer when we go: the worker removes its part
            raise Interrupted(f"interrupted: {self.remote} was not written on worker "
                              f"{self.worker!r} (it discards what it received)") from None
        finally:
            bar.finish()
        if source.sha.hexdigest() != digest:
            raise TransferFailed(f"{self.local} changed while it was being copied")
        return {"size": size, **result.to_wire()}


class GetOperation:
    """One ``get`` of a worker's file or directory to a local path."""

    def __init__(self, paths: MasterPaths, worker: str, remote: str, local: str,
                 progress: bool) -> None:
        self.paths = paths
        self.worker = worker
        self.remote = remote
        self.local = local  # the copy's own path, never a directory to copy into (as put)
        self.progress = progress

    def run(self) -> dict[str, Any]:
        parent = os.path.dirname(os.path.abspath(self.local))
        if not os.path.isdir(parent):
            raise TransferFailed(f"{parent} does not exist")
        bar = Progress(f"get {os.path.basename(self.remote.rstrip('/'))}", None, self.progress)
        sink = LocalSink(self.local, bar)

        async def go(admin: Any) -> FileInfo:
            require_standalone(admin)
            answer = await call(admin, "get", self.worker, GetRequest(self.remote).to_wire(),
                                sink)
            return FileInfo.from_wire(answer)

        try:
            info = run_with_admin(self.paths, go)
            sink.commit(info)
        except (Interrupted, KeyboardInterrupt):
            raise Interrupted(f"interrupted: nothing was written to {self.local}") from None
        except FurlError:
            if sink.error is not None:  # the cause; what the worker or master said follows from it
                raise sink.error from None
            raise
        except OSError as e:  # at the end: fsync, rename, unpack
            raise LocalFileError(f"cannot write {self.local}: {e.strerror or e}") from None
        finally:
            bar.finish()
            sink.cancel()
        return {"local": self.local, **info.to_wire()}


def _sha256_file(fp: IO[bytes]) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: fp.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()
