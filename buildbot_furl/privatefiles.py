"""Files that hold secrets: written 0600 (atomically), refused when others can read them."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shlex
import stat
from collections.abc import Callable

from buildbot_furl.errors import ConfigError


def check_private_mode(path: str) -> None:
    """Refuse a secret-holding file or directory that group or others can read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_mode & 0o077:
        want = "700" if stat.S_ISDIR(st.st_mode) else "600"
        raise ConfigError(
            f"{path} holds secrets but is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); fix it with: "
            f"chmod {want} {shlex.quote(path)}"
        )


class Changed(Exception):
    """The file changed under a conditional write; nothing was written."""


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux renameat2); False where the
    system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def write_private(path: str, data: str | bytes,
                  unchanged: Callable[[str], bool] | None = None, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 (temp, fsync unless not
    ``sync``, rename).

    With ``unchanged`` (a test of the file it replaces, given that file's
    path) the write is conditional: if the file was changed since the caller
    read it, Changed is raised and the file is left as the other writer left
    it.  The test runs on the very file that was swapped out (renameat2
    ``RENAME_EXCHANGE``), so an edit landing while we write is never lost.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if sync:  # (not for a file rewritten every few seconds: see master/heartbeat.py)
                os.fsync(f.fileno())
        if unchanged is None:
            os.replace(tmp, path)
        else:
            _replace_if(tmp, path, unchanged)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _replace_if(tmp: str, path: str, unchanged: Callable[[str], bool]) -> None:
    if not os.path.lexists(path):
        try:
            os.link(tmp, path)  # fails if someone made the file meanwhile
        except FileExistsError:
            raise Changed(path) from None
        os.unlink(tmp)
        return
    if not _exchange(tmp, path):
        # no atomic swap here: check, then replace (a small window remains)
        if not unchanged(path):
            raise Changed(path)
        os.replace(tmp, path)
        return
    # ``tmp`` now holds the file we replaced: was it the one the caller read?
    if not unchanged(tmp):
        _exchange(tmp, path)  # put the other writer's file back
        raise Changed(path)
    os.unlink(tmp)


def reserve_private(path: str) -> int:
    """Create ``path`` empty, 0600, failing if it exists; an open descriptor
    to write the secret into (so a secret is never written over a file
    someone else may have made readable)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; not overwriting it") from None
