"""Directory trees as tar streams, and their digests, by file descriptor.

Used at both ends of a standalone ``put``/``get`` of a directory (the
worker, and the admin's CLI), so both compute the same digest the same
way.  Nothing here follows a symlink: a tree is read and written through
directory descriptors (``openat`` with ``O_NOFOLLOW``), so a symlink in it,
or one swapped in while it is read or written, can neither lead the
reader outside nor make the writer write outside.

* :func:`pack` writes a tree as a plain tar stream (directories, regular
  files, symlinks; other kinds are left out) and returns its manifest.
* :func:`unpack` extracts such a stream into a new directory, refusing
  absolute or ``..`` names, hard links, devices and symlinks that lead out
  of the tree, and returns the manifest of what it wrote.  A symlink is
  judged by its text as if every component existed (a dangling link must
  not lead out once a directory appears: see :func:`_check_link_text`),
  and again as the kernel resolves it once everything is written.
* :func:`manifest` digests a tree: every entry's relative path and type,
  file contents and symlink targets (modes and times are left out).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from buildbot_furl.confine import DIR_FLAGS, Root, open_dir_strict
from buildbot_furl.errors import BadRequest, PathRefused

BLOCK = 1 << 20
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Digest:
    """The manifest being built; one NUL-separated record per entry."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def add(self, kind: str, rel: str, extra: str = "") -> None:
        rec = "\0".join((kind, rel, extra)).encode("utf-8", "surrogateescape")
        self.h.update(rec + b"\0\n")

    def hexdigest(self) -> str:
        return self.h.hexdigest()



def transferred_mode(mode: int) -> int:
    """The mode a single transferred file gets: its permission bits only.

    setuid, setgid and sticky never cross a transfer in either direction (a
    worker's 6755 file must not arrive setuid-root on the admin's machine, nor
    a master's request create a setuid file on the worker); trees mask them too.
    """
    return mode & 0o777

def _entries(top_fd: int) -> Iterator[tuple[str, int, os.stat_result, str]]:
    """(relative path, descriptor of its directory, lstat, name) for every
    entry below ``top_fd``, depth first, sorted by name; never follows a
    symlink.  Directory descriptors are closed once their entries are done."""
    stack: list[tuple[str, int, list[str]]] = []
    names = sorted(os.listdir(top_fd))
    stack.append(("", os.dup(top_fd), names))
    try:
        while stack:
            prefix, fd, names = stack[-1]
            if not names:
                os.close(fd)
                stack.pop()
                continue
            name = names.pop(0)
            rel = f"{prefix}{name}"
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walked
            yield rel, fd, st, name
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        continue
                    raise
                stack.append((rel + "/", sub, sorted(os.listdir(sub))))
    finally:
        for _, fd, _ in stack:
            os.close(fd)


def _file_digest(fd: int) -> str:
    h = hashlib.sha256()
    while True:
        block = os.read(fd, BLOCK)
        if not block:
            return h.hexdigest()
        h.update(block)


def manifest(top_fd: int) -> str:
    """The digest of the tree below directory descriptor ``top_fd``."""
    d = _Digest()
    for rel, fd, st, name in _entries(top_fd):
        if stat.S_ISDIR(st.st_mode):
            d.add("D", rel)
        elif stat.S_ISLNK(st.st_mode):
            d.add("L", rel, os.readlink(name, dir_fd=fd))
        elif stat.S_ISREG(st.st_mode):
            ffd = os.open(name, FILE_FLAGS, dir_fd=fd)
            try:
                d.add("F", rel, _file_digest(ffd))
            finally:
                os.close(ffd)
    return d.hexdigest()


def manifest_path(path: str) -> str:
    """:func:`manifest` of the directory at ``path``."""
    fd = os.open(path, DIR_FLAGS)
    try:
        return manifest(fd)
    finally:
        os.close(fd)


class _HashingReader:
    """A file object over a descriptor that hashes what is read from it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = os.read(self.fd, n if n >= 0 else BLOCK)
        self.h.update(data)
        return data


class TooLarge(Exception):
    """A pack grew past the limit it was given (nothing more was written)."""


class _Bounded:
    """A write-only file that refuses to grow past ``limit`` bytes."""

    def __init__(self, out: IO[bytes], limit: int) -> None:
        self.out, self.limit, self.written = out, limit, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise TooLarge(self.limit)
        return self.out.write(data)


def pack(top_fd: int, out: IO[bytes], limit: int | None = None) -> str:
    """Write the tree below ``top_fd`` to ``out`` as a tar stream; its manifest.

    A file that changes size while it is read fails the whole pack (the
    archive would not say what the tree holds).  With ``limit``, a stream
    that would be longer raises TooLarge as soon as it gets there (the worker's
    ``max_upload``: a 200 MB tree is not packed whole to find out).
    """
    d = _Digest()
    if limit is not None:
        out = _Bounded(out, limit)  # type: ignore[assignment]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for rel, fd, st, name in _entries(top_fd):
            ti = tarfile.TarInfo(rel)
            ti.mtime = int(st.st_mtime)
            ti.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
                d.add("D", rel)
            elif stat.S_ISLNK(st.st_mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(name, dir_fd=fd)
                tf.addfile(ti)
                d.add("L", rel, ti.linkname)
            elif stat.S_ISREG(st.st_mode):
                try:
                    ffd = os.open(name, FILE_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ELOOP):
                        continue  # removed or replaced by a symlink meanwhile: leave it out
                    raise
                try:
                    fst = os.fstat(ffd)
                    if not stat.S_ISREG(fst.st_mode):
                        continue
                    ti.size = fst.st_size
                    reader = _HashingReader(ffd)
                    try:
                        tf.addfile(ti, reader)  # type: ignore[arg-type]
                    except OSError as e:
                        raise BadRequest(f"{rel!r} changed while it was being read") from e
                    d.add("F", rel, reader.h.hexdigest())
                finally:
                    os.close(ffd)
    return d.hexdigest()


def pack_path(path: str, out: IO[bytes]) -> str:
    """:func:`pack` of the directory at ``path``."""
    fd = os.open(path, DIR_FLAGS)
    try:
        return pack(fd, out)
    finally:
        os.close(fd)


# -- unpacking ------------------------------------------------------------------


def _member_parts(member: tarfile.TarInfo) -> list[str]:
    name = member.name
    if name.startswith("/") or "\x00" in name:
        raise PathRefused(f"archive member {name!r} has an absolute or invalid name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathRefused(f"archive member {name!r} would leave the destination")
    return parts


def _check_link_text(name: str, depth: int, target: str) -> None:
    """Judge a symlink's target by its text alone, as if every component of
    it existed: it may climb (``..``) only at its start and no higher than
    the tree's top (the link sits ``depth`` directories below it), then only
    descend.

    Resolving it against the disk is not enough: ``lf/link -> x/../../..``
    dangles while ``x`` is missing and leads out as soon as a directory ``x``
    appears (a later member, a later ``mkdir`` or transfer); and ``x/..`` is
    refused even where it stays inside, because ``x`` may later be a link
    that climbs (``a/b/x -> ../..`` makes ``a/b/x/..`` the tree's parent).
    """
    climbs, named = 0, False
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp != "..":
            named = True
        elif named:
            raise PathRefused(f"archive member {name!r} is a symlink with '..' after a name "
                              f"in its target {target[:100]!r} (it could lead out once that name "
                              "exists)")
        else:
            climbs += 1
            if climbs > depth:
                raise PathRefused(f"archive member {name!r} is a symlink that leads out of "
                                  "the destination")


def _check_member(member: tarfile.TarInfo) -> list[str]:
    """The member's path parts, or PathRefused for what may not be unpacked."""
    parts = _member_parts(member)
    if member.issym():
        if member.linkname.startswith("/"):
            raise PathRefused(f"archive member {member.name!r} is a symlink to an absolute "
                              "path")
        if not member.linkname or "\x00" in member.linkname:
            raise PathRefused(f"archive member {member.name!r} is a symlink to nothing")
        _check_link_text(member.name, len(parts) - 1, member.linkname)
    elif member.islnk():
        raise PathRefused(f"archive member {member.name!r} is a hard link (not supported)")
    elif member.issparse():  # its size on disk is not bounded by the archive's
        raise PathRefused(f"archive member {member.name!r} is a sparse file (not supported)")
    elif not (member.isreg() or member.isdir()):
        raise PathRefused(f"archive member {member.name!r} is a device, FIFO or other "
                          "special file")
    if not parts and not member.isdir():
        raise PathRefused("an archive member has an empty name")
    return parts


def _write_member(tf: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str],
                  root_fd: int) -> None:
    if not parts:  # the top directory itself
        return
    parent = open_dir_strict(root_fd, parts[:-1], create=True)
    name = parts[-1]
    try:
        if member.isdir():
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)  # must be a real directory
            try:
                os.fchmod(fd, (member.mode & 0o755) | 0o700)
            finally:
                os.close(fd)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)
        else:
            src = tf.extractfile(member)
            assert src is not None
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o600, dir_fd=parent)
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    shutil.copyfileobj(src, f, BLOCK)
                os.fchmod(fd, (member.mode & 0o755) | 0o600)
            finally:
                os.close(fd)
        if not member.issym():
            with contextlib.suppress(OverflowError, ValueError):  # a time past time_t: now
                os.utime(name, (member.mtime, member.mtime), dir_fd=parent,
                         follow_symlinks=False)
    except FileExistsError:
        raise PathRefused(f"archive member {member.name!r} appears twice") from None
    finally:
        os.close(parent)


def _check_links(top_fd: int, links: list[str]) -> None:
    """Every symlink written must resolve inside the tree (as the kernel
    would resolve it, symlink by symlink, not by its text alone)."""
    if not links:
        return
    with Root("/nonexistent-furl-tree", top_fd) as root:
        for rel in links:
            try:
                root.resolve(rel).close()
            except (FileNotFoundError, NotADirectoryError):
                pass  # dangling: leads nowhere
            except PathRefused:
                raise PathRefused(f"archive member {rel!r} is a symlink that leads out of "
                                  "the destination") from None


def unpack_into(src: IO[bytes], top_fd: int) -> str:
    """Extract plain (uncompressed, as :func:`pack` writes it: what is
    written is then never larger than the stream) tar stream ``src`` into the (empty)
    directory ``top_fd``; the manifest of what was written.  On an error
    what was written stays: the caller removes it."""
    links: list[str] = []
    try:
        with tarfile.open(fileobj=src, mode="r|") as tf:
            for member in tf:
                parts = _check_member(member)
                try:
                    _write_member(tf, member, parts, top_fd)
                except OSError as e:
                    if e.errno == errno.ENAMETOOLONG:
                        raise PathRefused(f"archive member {member.name[:100]!r}... has a "
                                          "name too long for the file system") from None
                    if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EISDIR):
                        raise PathRefused(f"archive member {member.name!r} clashes with an "
                                          "earlier member of the same name") from None
                    raise
                if member.issym():
                    links.append("/".join(parts))
    except tarfile.TarError as e:
        raise BadRequest(f"not a valid tar archive: {e}") from None
    _check_links(top_fd, links)
    return manifest(top_fd)


def unpack(src: IO[bytes], parent_fd: int, name: str) -> str:
    """Extract ``src`` into a new directory ``name`` of the directory
    ``parent_fd``; the manifest of what was written.  ``name`` must not
    exist; on any error nothing is left of it."""
    os.mkdir(name, 0o777, dir_fd=parent_fd)
    try:
        top = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        try:
            return unpack_into(src, top)
        finally:
            os.close(top)
    except BaseException:
        remove_tree(parent_fd, name)
        raise


def empty_dir(top_fd: int) -> None:
    """Remove everything in the directory ``top_fd`` (never following symlinks)."""
    for name in os.listdir(top_fd):
        remove_tree(top_fd, name)


def remove_tree(parent_fd: int, name: str) -> None:
    """Remove ``name`` in ``parent_fd`` (file or tree) without following symlinks."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)


def sha256_fd(fd: int) -> str:
    """sha256 of what is left to read from ``fd``."""
    return _file_digest(fd)


def sha256_path(path: str) -> str:
    fd = os.open(path, FILE_FLAGS & ~os.O_NONBLOCK)
    try:
        return _file_digest(fd)
    finally:
        os.close(fd)


def stat_fields(st: os.stat_result) -> dict[str, Any]:
    """kind/size/mode of a stat result, as put/get report them."""
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else None
    return {"kind": kind, "size": st.st_size, "mode": stat.S_IMODE(st.st_mode)}
