"""Files that hold secrets: written 0600 (atomically), refused when others can read them."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import stat

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


def write_private(path: str, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 (temp, fsync, rename)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def reserve_private(path: str) -> int:
    """Create ``path`` empty, 0600, failing if it exists; an open descriptor
    to write the secret into (so a secret is never written over a file
    someone else may have made readable)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; not overwriting it") from None
