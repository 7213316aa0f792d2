"""The daemons' log files: size-based rotation, reopened on SIGHUP.

``master.log``/``worker.log`` are rotated when they reach ``max_bytes``
(``master.log.1`` is the newest old one, up to ``keep`` of them are kept),
and reopened by name on SIGHUP, so an external ``logrotate`` (rename, then
``kill -HUP``) works too.  Files are created 0600, and made 0600 at start
when they were looser (a copied directory).  A daemon's stdout and
stderr follow the current file, so stray output (a warning printed by a
library) lands in it rather than in a rotated-away one.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    PredicateResult,
    globalLogBeginner,
    textFileLogObserver,
)

from buildbot_furl.errors import ConfigError
from buildbot_furl.sizes import parse_bytes

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5


def parse_size(text: str | int) -> int:
    """``10M``, ``512k``, ``1G`` or a number of bytes; 0 turns rotation off."""
    n = parse_bytes(text, "log size")
    if 0 < n < 64 * 1024:
        raise ConfigError("a log size below 64k would rotate all the time (0 turns it off)")
    return n


def check_keep(value: str | int) -> int:
    """How many rotated logs to keep: 1 to 1000."""
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"bad log_keep {value!r}: give a whole number") from None
    if not 1 <= n <= 1000:
        raise ConfigError("log_keep must be between 1 and 1000")
    return n


def _make_private(fd: int) -> bool:
    """0600 for a log that was looser (a copied directory, an old release):
    logs hold worker names and addresses.  True if it was changed."""
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
            return True
    except OSError:  # not ours to change: it is still written to
        pass
    return False


def make_old_logs_private(path: str) -> list[str]:
    """The rotated ``path.N`` files made 0600 (see _make_private); those changed."""
    directory, base = os.path.split(os.path.abspath(path))
    changed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in sorted(names):
        if name.startswith(base + ".") and name[len(base) + 1:].isdigit():
            try:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                if _make_private(fd):
                    changed.append(name)
            finally:
                os.close(fd)
    return changed


class RotatingFile:
    """A text file object for twisted.logger that rotates by size."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP,
                 own_stdio: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self.own_stdio = own_stdio
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.was_loose = _make_private(fd)
        old, self.fd = self.fd, fd
        self.size = os.fstat(fd).st_size
        if self.own_stdio:
            for std in (1, 2):
                os.dup2(fd, std)
        if old >= 0:
            os.close(old)

    def reopen(self) -> None:
        """Open the file by its name again (after an external rotation)."""
        self._open()

    def rotate(self) -> None:
        for n in range(self.keep - 1, 0, -1):
            src = f"{self.path}.{n}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{n + 1}")
        if os.path.exists(self.path):
            os.replace(self.path, f"{self.path}.1")
        self._open()

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        if self.max_bytes and self.size and self.size + len(data) > self.max_bytes:
            try:
                self.rotate()
            except OSError as e:
                sys.stderr.write(f"cannot rotate {self.path}: {e}\n")
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def flush(self) -> None:
        pass  # every write goes straight to the file

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def no_chatter(event: dict[str, Any]) -> PredicateResult:
    """Drop the info lines of the libraries behind invites: the mailbox
    server's lines per websocket (nameplates made, clients connecting) and
    the wormhole client's factory starts and stops, a few per claim, none of
    use to an admin (invites log what matters themselves).  Their warnings
    and errors pass."""
    level = event.get("log_level")
    if level is not None and level >= LogLevel.warn:
        return PredicateResult.maybe
    system = str(event.get("log_system", ""))
    namespace = str(event.get("log_namespace", ""))
    if system.startswith("_GenericHTTPChannelProtocol") or \
            namespace.startswith(("wormhole.", "autobahn.")):
        return PredicateResult.no
    return PredicateResult.maybe


def start_logging(path: str, to_stderr: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
                  keep: int = DEFAULT_KEEP, level: LogLevel = LogLevel.info) -> RotatingFile:
    """Send twisted.logger events to ``path`` (and stderr in the foreground);
    returns the file, whose ``reopen()`` a SIGHUP handler should call."""
    f = RotatingFile(path, max_bytes, keep, own_stdio=not to_stderr)
    made_private = ([os.path.basename(path)] if f.was_loose else []) + \
        make_old_logs_private(path)
    predicates = [LogLevelFilterPredicate(defaultLogLevel=level), no_chatter]
    observers: list[Any] = [FilteringLogObserver(textFileLogObserver(f), predicates)]
    if to_stderr:
        observers.append(FilteringLogObserver(textFileLogObserver(sys.stderr), predicates))
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    if made_private:
        Logger().info("made {files} mode 0600 (they were readable by others; logs hold "
                      "worker names and addresses)", files=", ".join(made_private))
    return f
