"""Paths confined to a directory, resolved at the moment of opening.

A check on the path string (no ``..``, not absolute) is not confinement:
a symlink inside the directory may point anywhere, and one may be swapped
in between a check and the open.  Here every path is walked one component
at a time from an open directory file descriptor (``openat`` with
``O_NOFOLLOW``), and a symlink met on the way is read and its target
walked the same way; a ``..`` or a symlink that would leave the root is
refused with :class:`~buildbot_furl.errors.PathRefused`.  What the caller
gets back is a file descriptor of the last directory and a final name that
is not a symlink: it opens that name relative to the descriptor, again with
``O_NOFOLLOW``, so a symlink put there meanwhile makes the open fail rather
than lead outside.  Nothing is ever resolved by path string after the walk.

This is what Linux's ``openat2(RESOLVE_BENEATH)`` does, in portable Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from collections import deque

from buildbot_furl.errors import PathRefused

MAX_SYMLINKS = 40  # as the kernel's own limit for one path
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_DIR = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)


@dataclasses.dataclass
class Resolved:
    """A directory descriptor and a name in it (``name`` is "" for the
    directory itself).  Close it with :meth:`close` or use ``with``."""

    dir_fd: int
    name: str
    shown: str  # the path as the caller gave it, for messages

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, flags: int, mode: int = 0o666) -> int:
        """``openat(dir_fd, name, flags | O_NOFOLLOW)``: a symlink swapped in
        since the walk is refused, never followed."""
        target = self.name or "."
        try:
            return os.open(target, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=self.dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathRefused(f"{self.shown!r} became a symlink while it was being "
                                  "opened; refused") from None
            raise


class Root:
    """A directory that paths are confined to (held open by descriptor)."""

    def __init__(self, path: str, fd: int | None = None,
                 label: str = "the directory it is confined to") -> None:
        """Open ``path``; or, with ``fd``, use a copy of that descriptor
        (``path`` is then its known location, for absolute symlinks).
        ``label`` names the root in messages."""
        self.label = label
        self.path = os.path.realpath(path)
        self.fd = os.dup(fd) if fd is not None else os.open(self.path, DIR_FLAGS)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def identity(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return (st.st_dev, st.st_ino)

    def resolve(self, path: str, *, create_dirs: bool = False,
                follow_final: bool = True) -> Resolved:
        """Walk ``path`` (relative to the root) beneath the root.

        Every directory on the way must be reached without leaving the root;
        missing ones are made (mode 0777 less umask) with ``create_dirs``.
        With ``follow_final`` a final component that is a symlink is
        followed too (beneath the root); the returned name is then never a
        symlink at the time of the walk.
        """
        shown = path
        if not isinstance(path, str) or "\x00" in path:
            raise PathRefused("invalid path")
        parts = deque(path.split("/"))
        if path.startswith("/"):
            parts = deque(self._absolute(path, shown))
        stack = [os.dup(self.fd)]
        links = 0
        try:
            while parts:
                comp = parts.popleft()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if len(stack) == 1:
                        raise PathRefused(f"{shown!r} leads outside {self.label}")
                    os.close(stack.pop())
                    continue
                last = not any(p not in ("", ".") for p in parts)
                cur = stack[-1]
                if last:
                    target = _readlink(cur, comp)
                    if target is None or not follow_final:
                        return Resolved(stack.pop(), comp, shown)
                else:
                    try:
                        stack.append(os.open(comp, DIR_FLAGS, dir_fd=cur))
                        continue
                    except FileNotFoundError:
                        if not create_dirs:
                            raise
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(comp, 0o777, dir_fd=cur)
                        parts.appendleft(comp)  # open it (and re-check it) next round
                        continue
                    except OSError as e:
                        if e.errno not in _NOT_DIR:
                            raise
                        target = _readlink(cur, comp)
                        if target is None:
                            raise NotADirectoryError(
                                errno.ENOTDIR, f"{comp!r} in {shown!r} is not a directory"
                            ) from None
                links += 1
                if links > MAX_SYMLINKS:
                    raise PathRefused(f"{shown!r}: too many levels of symbolic links")
                if target.startswith("/"):
                    for fd in stack[1:]:
                        os.close(fd)
                    del stack[1:]
                    parts.extendleft(reversed(self._absolute(target, shown)))
                else:
                    parts.extendleft(reversed(target.split("/")))
            return Resolved(stack.pop(), "", shown)
        finally:
            for fd in stack:
                os.close(fd)

    def _absolute(self, target: str, shown: str) -> list[str]:
        """An absolute path (or symlink target) beneath the root, as parts
        relative to it; anything else is refused."""
        norm = os.path.normpath(target)
        if norm == self.path:
            return []
        if not norm.startswith(self.path.rstrip("/") + "/"):
            raise PathRefused(f"{shown!r} leads outside {self.label}")
        return norm[len(self.path.rstrip("/")) + 1:].split("/")


def _readlink(dir_fd: int, name: str) -> str | None:
    """The target of ``name`` if it is a symlink, else None."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):
            return None
        if e.errno == errno.ENAMETOOLONG:
            raise PathRefused(f"a path component is too long ({len(name)} characters)") \
                from None
        raise


def open_dir_strict(dir_fd: int, parts: list[str], create: bool) -> int:
    """Descend ``parts`` from ``dir_fd`` following no symlink at all (for
    unpacking archives into a directory made for them); a new descriptor."""
    fd = os.dup(dir_fd)
    try:
        for comp in parts:
            if comp in ("", ".", ".."):
                raise PathRefused(f"invalid path component {comp!r}")
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(comp, 0o700, dir_fd=fd)
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in _NOT_DIR:
                    raise PathRefused(f"{'/'.join(parts)!r} passes through something that "
                                      "is not a directory") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def beneath(dir_fd: int, roots: list[tuple[int, int]]) -> bool:
    """Is the directory ``dir_fd`` one of ``roots`` (their ``(st_dev,
    st_ino)``) or inside one?  Walked up by ``..`` from the descriptor, so
    it is where the directory is, not what a path string said."""
    fd = os.dup(dir_fd)
    try:
        while True:
            st = os.fstat(fd)
            here = (st.st_dev, st.st_ino)
            if here in roots:
                return True
            up = os.open("..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == here:  # "/": its ".." is itself
                return False
    finally:
        os.close(fd)


def open_file_beneath(path: str, roots: tuple[str, ...]) -> int:
    """A descriptor of the regular file at the absolute ``path``, opened for
    reading, if it lies beneath one of the directories ``roots``.

    The path is walked as the kernel would walk it, symlinks and all (so a
    link from one root into another is fine), but by descriptor; the
    directory reached must be inside a root, and the file is opened in it
    with ``O_NOFOLLOW``: what is checked is what is opened.  PathRefused if
    it leads elsewhere or is no regular file; OSError as ``open`` raises it.
    """
    if not path.startswith("/"):
        path = os.path.join(os.getcwd(), path)  # not abspath: it would fold '..' by text
    ids = []
    for r in roots:
        with contextlib.suppress(OSError):
            st = os.stat(r)
            ids.append((st.st_dev, st.st_ino))
    with Root("/", label="the file system") as top, \
            top.resolve(path.lstrip("/")) as res:  # relative: walked '..' by '..'
        if not res.name or not beneath(res.dir_fd, ids):
            raise PathRefused(f"{path!r} leads outside the paths the worker's policy allows")
        fd = res.open(os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathRefused(f"{path!r} is not a regular file")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise
