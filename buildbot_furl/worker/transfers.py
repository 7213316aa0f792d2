"""The worker's side of standalone ``put``/``get``: confined, verified transfers.

Two worker commands, run through buildbot-worker's command machinery like
its own (so output, interrupts and file chunks travel the same way):

``furl.put`` (master -> worker)
    args ``path``, ``reader``, ``kind`` ("file" or "dir"), ``sha256`` (of
    the bytes sent), ``manifest`` (of the tree, for "dir"), ``mode``.
    Receives into a temporary name beside ``path`` (a file) or a temporary
    file (a tar stream), checks the digest, and only then gives it its final
    name.  Answers ``("furl", {"sha256": ..., "manifest": ...})``.
``furl.get`` (worker -> master)
    args ``path``, ``writer``.  Sends the file, or the directory as a tar
    stream (then ``unpack``), and answers ``("furl", {"kind", "size",
    "mode", "sha256", "manifest"})`` computed from the very bytes sent.

Both resolve ``path`` beneath the worker's directory at the moment of
opening (:mod:`buildbot_furl.confine`): a path that leaves it, through
``..`` or a symlink, is refused, and so is a symlink swapped in while the
transfer runs.  The worker's own files (its FURL, pid, state, logs) cannot
be written, and its FURL cannot be read.  Errors are sent as
``("furl_error", {"class": ..., "message": ...})`` and rc 1.

Unlike buildbot-worker's ``downloadFile``/``uploadFile`` (which Buildbot's
steps use, with Buildbot's semantics: absolute worker paths are allowed
there), these are for the standalone CLI only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from collections.abc import Callable
from typing import Any

from buildbot_worker.commands import registry
from buildbot_worker.commands.base import Command
from twisted.internet import defer, threads

from buildbot_furl import tree
from buildbot_furl.confine import Resolved, Root
from buildbot_furl.errors import BadRequest, CommandFailed, PathRefused, WireError
from buildbot_furl.layout import WORKER_FILES
from buildbot_furl.protocol import GET_COMMAND, MAX_CHUNK, PUT_COMMAND
from buildbot_furl.protocol.messages import (
    TRANSFER_ERROR,
    TRANSFER_RESULT,
    FileInfo,
    PutRequest,
    transfer_error,
)

#: the worker's own files in its directory: never written by a put
PRIVATE_NAMES = WORKER_FILES
#: ... and never read by a get
SECRET_NAMES = ("master.furl",)



def _is_private(root: Root, res: Resolved, names: tuple[str, ...]) -> bool:
    if not res.name:
        return False
    st = os.fstat(res.dir_fd)
    if (st.st_dev, st.st_ino) != root.identity():
        return False
    return any(res.name == n or res.name.startswith(n + ".") for n in names)


class _Transfer(Command):
    """What put and get share: the confined root, error reporting."""

    def setup(self, args: dict[str, Any]) -> None:
        self.path = args["path"]
        if not isinstance(self.path, str) or not self.path.strip("/."):
            raise ValueError("a transfer needs a path")
        self.rc = 0

    def _root(self) -> Root:
        return Root(self.protocol_command.worker_basedir, label="the worker's directory")

    def _fail(self, e: Exception) -> None:
        if isinstance(e, WireError):
            error = e
        elif isinstance(e, FileNotFoundError):
            error = CommandFailed(f"{self.path!r} does not exist")
        elif isinstance(e, NotADirectoryError):
            error = CommandFailed(f"{self.path!r}: a part of it is not a directory")
        elif isinstance(e, IsADirectoryError):
            error = CommandFailed(f"{self.path!r} is a directory")
        elif isinstance(e, OSError):
            error = CommandFailed(f"{self.path!r}: {e.strerror or e}")
        else:
            error = CommandFailed(f"{type(e).__name__}: {e}")
        self.rc = 1
        self.sendStatus([(TRANSFER_ERROR, transfer_error(error)), ("rc", 1)])

    def _check_interrupted(self) -> None:
        if self.interrupted:
            raise CommandFailed("interrupted")

    def interrupt(self) -> None:
        self.interrupted = True

    @defer.inlineCallbacks
    def start(self) -> Any:
        try:
            result = yield defer.ensureDeferred(self.run())
        except Exception as e:  # noqa: BLE001 - every failure is reported to the master
            self._fail(e)
            return
        self.sendStatus([(TRANSFER_RESULT, result), ("rc", 0)])

    async def run(self) -> dict[str, Any]:
        raise NotImplementedError


class PutCommand(_Transfer):
    requiredArgs = ["path", "reader", "kind", "sha256"]

    def setup(self, args: dict[str, Any]) -> None:
        super().setup(args)
        self.reader = args["reader"]
        request = PutRequest.from_command_args(args)  # BadRequest when out of shape
        self.kind, self.sha256 = request.kind, request.sha256
        self.manifest, self.mode = request.manifest, request.mode

    async def _receive(self, write: Callable[[bytes], Any]) -> str:
        """Read everything the master sends, passing it to ``write``; its sha256."""
        h = hashlib.sha256()
        while True:
            self._check_interrupted()
            data = await self.protocol_command.protocol_update_read_file(self.reader, MAX_CHUNK)
            if not data:
                return h.hexdigest()
            h.update(data)
            write(data)

    async def run(self) -> dict[str, Any]:
        try:
            with self._root() as root:
                with root.resolve(self.path, create_dirs=True) as dest:
                    if not dest.name:
                        raise PathRefused(f"{self.path!r} names the worker's directory itself")
                    if _is_private(root, dest, PRIVATE_NAMES):
                        raise PathRefused(f"{self.path!r} is one of the worker's own files")
                    if self.kind == "file":
                        return await self._put_file(dest)
                    return await self._put_dir(dest)
        finally:
            with contextlib.suppress(Exception):
                await self.protocol_command.protocol_update_read_file_close(self.reader)

    async def _put_file(self, dest: Resolved) -> dict[str, Any]:
        part = f".{dest.name[:100]}.furl-part-{secrets.token_hex(4)}"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dest.dir_fd)
        try:
            digest = await self._receive(lambda data: _write_all(fd, data))
            if digest != self.sha256:
                raise CommandFailed(f"checksum mismatch after copying to {self.path!r}; "
                                    "nothing kept")
            mode = self.mode if self.mode is not None else _default_mode()
            os.fchmod(fd, tree.transferred_mode(mode))
            os.fsync(fd)
            os.close(fd)
            fd = -1
            try:
                os.rename(part, dest.name, src_dir_fd=dest.dir_fd, dst_dir_fd=dest.dir_fd)
            except IsADirectoryError:
                raise CommandFailed(f"{self.path!r} is a directory") from None
            with contextlib.suppress(OSError):
                os.fsync(dest.dir_fd)
            return FileInfo("file", digest, mode=tree.transferred_mode(mode)).to_wire()
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part, dir_fd=dest.dir_fd)

    async def _put_dir(self, dest: Resolved) -> dict[str, Any]:
        if not isinstance(self.manifest, str):
            raise BadRequest("a directory put needs the tree's manifest")
        if _exists(dest):
            raise CommandFailed(f"{self.path!r} already exists; not replacing it with "
                                "a directory")
        with tempfile.TemporaryFile() as tmp:  # unnamed: nothing to swap
            if await self._receive(tmp.write) != self.sha256:
                raise CommandFailed(f"checksum mismatch in the archive for {self.path!r}; "
                                    "nothing kept")
            tmp.seek(0)
            part = f".{dest.name[:100]}.furl-part-{secrets.token_hex(4)}"
            digest = await threads.deferToThread(tree.unpack, tmp, dest.dir_fd, part)
        try:
            if digest != self.manifest:
                raise CommandFailed(f"the tree unpacked at {self.path!r} differs from the one "
                                    "sent; nothing kept")
            if _exists(dest):
                raise CommandFailed(f"{self.path!r} appeared during the copy; "
                                    "nothing kept")
            os.rename(part, dest.name, src_dir_fd=dest.dir_fd, dst_dir_fd=dest.dir_fd)
        except BaseException:
            tree.remove_tree(dest.dir_fd, part)
            raise
        return FileInfo("dir", self.sha256, manifest=digest).to_wire()


class GetCommand(_Transfer):
    requiredArgs = ["path", "writer"]

    def setup(self, args: dict[str, Any]) -> None:
        super().setup(args)
        self.writer = args["writer"]

    async def _send(self, data: bytes) -> None:
        self._check_interrupted()
        await self.protocol_command.protocol_update_upload_file_write(self.writer, data)

    async def run(self) -> dict[str, Any]:
        with self._root() as root, root.resolve(self.path) as src:
            if not src.name:
                raise PathRefused(f"{self.path!r} names the worker's directory itself")
            if _is_private(root, src, SECRET_NAMES):
                raise PathRefused(f"{self.path!r} holds the worker's FURL; it is never sent")
            fd = src.open(os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            info = tree.stat_fields(st)
            manifest = None
            if info["kind"] == "file":
                os.set_blocking(fd, True)
                sha256 = await self._send_fd(fd)
                await self.protocol_command.protocol_update_upload_file_close(self.writer)
            elif info["kind"] == "dir":
                limit = self.protocol_command.limits.upload
                with tempfile.TemporaryFile() as tmp:
                    try:
                        manifest = await threads.deferToThread(tree.pack, fd, tmp, limit)
                    except tree.TooLarge:
                        # refused as a transfer past the limit is, before a byte goes
                        self.protocol_command.count_moved("upload", limit + 1)
                        raise
                    tmp.seek(0)
                    sha256 = await self._send_fd(tmp.fileno())
                await self.protocol_command.protocol_update_upload_directory(self.writer)
            else:
                raise CommandFailed(f"{self.path!r} is neither a file nor a directory")
        finally:
            os.close(fd)
        return FileInfo(info["kind"], sha256, info["size"], info["mode"], manifest).to_wire()

    async def _send_fd(self, fd: int) -> str:
        h = hashlib.sha256()
        while True:
            data = os.read(fd, MAX_CHUNK)
            if not data:
                return h.hexdigest()
            h.update(data)
            await self._send(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _exists(res: Resolved) -> bool:
    try:
        os.stat(res.name, dir_fd=res.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _default_mode() -> int:
    """0666 less this process's umask (read without changing it: threads
    may be creating files meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    return 0o644


def register() -> None:
    """Make the two commands known to buildbot-worker's command registry."""
    registry.commandRegistry.setdefault(PUT_COMMAND, PutCommand)
    registry.commandRegistry.setdefault(GET_COMMAND, GetCommand)


