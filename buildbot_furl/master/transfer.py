"""Master-side file sinks and sources that need no Buildbot master.

They have the method names and semantics of Buildbot's master-side
``FileWriter``, ``DirectoryWriter`` and ``FileReader`` (``remote_write``,
``remote_utime``, ``remote_unpack``, ``remote_close``, ``remote_read``),
so :class:`~buildbot_furl.master.connection.FileWriterAdapter` and
:class:`~buildbot_furl.master.connection.FileReaderAdapter` wrap them
the same way.  Used by the standalone admin CLI's ``put``/``get``.

Nothing is ever held whole in memory: writes go to a temporary file
beside the destination (renamed into place on close, so a reader never
sees half a file), and reads are by the chunk asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import Any

from buildbot_furl import tree
from buildbot_furl.errors import BadRequest


def _default_mode() -> int:
    """0666 less the process umask: what open() would have given."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _TempWriter:
    """Bytes to a temporary file in ``tmp_dir``, hashed as they arrive."""

    def __init__(self, tmp_dir: str, prefix: str, maxsize: int | None = None) -> None:
        os.makedirs(tmp_dir, exist_ok=True)
        fd, self.tmp_path = tempfile.mkstemp(dir=tmp_dir, prefix=prefix, suffix=".tmp")
        self.fp: Any = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.size = 0
        self.maxsize = maxsize

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def remote_write(self, data: bytes | str) -> None:
        if self.fp is None:
            raise BadRequest("write after close")
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.maxsize is not None and self.size + len(data) > self.maxsize:
            raise BadRequest(f"upload exceeds its limit of {self.maxsize} bytes")
        self.fp.write(data)
        self._sha.update(data)
        self.size += len(data)

    def _close_tmp(self) -> None:
        if self.fp is not None:
            self.fp.flush()
            os.fsync(self.fp.fileno())
            self.fp.close()
            self.fp = None

    def cancel(self) -> None:
        """Abandon the transfer: close and remove the temporary file."""
        if self.fp is not None:
            with contextlib.suppress(OSError):
                self.fp.close()
            self.fp = None
        if self.tmp_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp_path)
            self.tmp_path = None


class LocalFileWriter(_TempWriter):
    """Receives one file; ``remote_close`` fsyncs it and renames it into place."""

    def __init__(self, path_final: str, mode: int | None = None,
                 maxsize: int | None = None) -> None:
        self.path = os.path.abspath(path_final)
        self.mode = mode
        self.closed = False
        self._utime: tuple[float, float] | None = None
        super().__init__(os.path.dirname(self.path) or ".",
                         "." + os.path.basename(self.path) + ".", maxsize)

    def remote_utime(self, accessed_modified: Any) -> None:
        times = (float(accessed_modified[0]), float(accessed_modified[1]))
        if self.closed:
            os.utime(self.path, times)
        else:  # applied once the file is in place
            self._utime = times

    def remote_unpack(self) -> None:
        raise BadRequest("this is a file upload, not a directory upload")

    def remote_close(self) -> None:
        if self.closed:
            return
        if self.tmp_path is None:
            raise BadRequest("the transfer was cancelled")
        self._close_tmp()
        os.chmod(self.tmp_path, self.mode if self.mode is not None else _default_mode())
        os.replace(self.tmp_path, self.path)
        self.tmp_path = None
        self.closed = True
        _fsync_dir(os.path.dirname(self.path))
        if self._utime is not None:
            os.utime(self.path, self._utime)


class LocalDirectoryWriter(_TempWriter):
    """Receives a tar stream (as buildbot-worker's uploadDirectory sends:
    plain, gz or bz2, per its ``compress`` argument) and unpacks it into
    ``dest_dir`` on ``remote_unpack``.

    Extraction is :func:`buildbot_furl.tree.unpack_into`: a member that
    would land outside ``dest_dir`` (``..``, absolute or escaping links),
    device files and the like are refused with :class:`PathRefused`, and
    what was written before is removed.
    """

    def __init__(self, dest_dir: str, compress: str | None = None,
                 maxsize: int | None = None) -> None:
        self.dest_dir = os.path.abspath(dest_dir)
        self.compress = compress  # informational: the format is detected on read
        self.unpacked = False
        prefix = "." + (os.path.basename(self.dest_dir) or "upload") + ".tar-"
        try:  # beside the destination, so it is not among what gets unpacked
            super().__init__(os.path.dirname(self.dest_dir) or ".", prefix, maxsize)
        except PermissionError:  # e.g. a writable directory in a read-only one
            super().__init__(self.dest_dir, prefix, maxsize)

    def remote_utime(self, accessed_modified: Any) -> None:
        pass  # the members carry their own times

    def remote_close(self) -> None:
        self._close_tmp()

    def remote_unpack(self) -> None:
        if self.unpacked:
            return
        if self.tmp_path is None:
            raise BadRequest("the transfer was cancelled")
        self._close_tmp()
        try:
            os.makedirs(self.dest_dir, exist_ok=True)
            self._extract()
            self.unpacked = True
        finally:
            self.cancel()  # removes the temporary archive

    def _extract(self) -> None:
        assert self.tmp_path is not None
        top = os.open(self.dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            with open(self.tmp_path, "rb") as src:
                tree.unpack_into(src, top)
        except BaseException:
            tree.empty_dir(top)
            raise
        finally:
            os.close(top)


class LocalFileReader:
    """Serves one local file by chunks; sha256 of what was read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fp: Any = open(path, "rb")  # noqa: SIM115 - closed by remote_close
        self._sha = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def remote_read(self, maxlength: int) -> bytes:
        if self.fp is None:
            return b""
        data = self.fp.read(max(0, int(maxlength)))
        self._sha.update(data)
        self.size += len(data)
        return data

    def remote_close(self) -> None:
        if self.fp is not None:
            self.fp.close()
            self.fp = None
