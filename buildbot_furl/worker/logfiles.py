"""A shell command's logfiles, opened under the worker's policy when they are opened.

buildbot-worker watches a command's ``logfiles`` with ``LogFileWatcher``
(``buildbot_worker.runprocess``): it polls the path every 2 s and, once the
file appears or changes, opens it *by path* and streams what it reads to
the master.  The policy checks the path when the command starts, but the
file is opened later, and by then a symlink on its way may lead anywhere:
a link that dangled at the start (``lf/link -> x/../../../secret``) points
at the secret as soon as ``lf/x`` is made, and the master would read it
with nothing but ``sleep`` allowed, past ``max_upload`` too.

:class:`ConfinedLogFileWatcher` changes two things and nothing else:

* the open: with ``[paths]`` in force the file is opened through
  :func:`~buildbot_furl.confine.open_file_beneath` (walked by descriptor,
  the directory reached must lie in ``[paths]``, the file opened with
  ``O_NOFOLLOW`` and a regular file); a refused logfile is not watched,
  which the command's header says, and the worker's log says once;
* the reads: all of a command's logfiles together send at most
  ``max_upload`` bytes; past it the rest is not sent, and the header says so.

Polling, following, decoding and sending stay buildbot-worker's;
:func:`install` puts the class in its place (as :mod:`.procgroup` does).
"""

from __future__ import annotations

import os
from typing import IO, Any

from buildbot_worker import runprocess
from twisted.logger import Logger

from buildbot_furl.confine import open_file_beneath
from buildbot_furl.errors import PathRefused
from buildbot_furl.sizes import show_bytes
from buildbot_furl.worker.command import FurlProtocolCommand

log = Logger()

_Base: Any = runprocess.LogFileWatcher


class _Metered:
    """The open logfile as buildbot-worker's poll uses it (seek, tell, read,
    close), handing out no more than the command's ``max_upload`` leaves."""

    def __init__(self, f: IO[bytes], watcher: ConfinedLogFileWatcher) -> None:
        self.f, self.watcher = f, watcher

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()

    def read(self, n: int) -> bytes:
        owner = self.watcher.owner
        limit = owner.limits.upload if owner is not None else None
        if limit is None:
            return self.f.read(n)
        room = limit - owner.moved["upload"]  # type: ignore[union-attr]
        if room <= 0:
            if not self.watcher.cut and self.f.read(1):  # more than may go: say so once
                self.watcher.was_cut(limit)
            return b""
        data = self.f.read(min(n, room))
        owner.moved["upload"] += len(data)  # type: ignore[union-attr]
        return data


def _owner(command: Any) -> FurlProtocolCommand | None:
    """The protocol command a RunProcess sends its updates through (its
    ``send_update`` is that command's bound method)."""
    owner = getattr(getattr(command, "send_update", None), "__self__", None)
    return owner if isinstance(owner, FurlProtocolCommand) else None


class ConfinedLogFileWatcher(_Base):  # type: ignore[misc, valid-type]
    """buildbot-worker's LogFileWatcher with the open checked and the reads metered."""

    def __init__(self, command: Any, name: str, logfile: str, follow: bool = False,
                 poll: bool = True) -> None:
        super().__init__(command, name, logfile, follow=follow, poll=poll)
        self.owner = _owner(command)
        self.skipped = False  # refused: never opened
        self.cut = False  # past max_upload: nothing more sent

    def poll(self) -> None:
        if self.skipped:
            return
        if not self.started:
            # buildbot-worker's own start-up steps, with the open replaced
            s = self.statFile()
            if s == self.old_logfile_stats:
                return  # not started yet
            if not s:
                self.old_logfile_stats = None  # deleted: wait for the new one
                return
            try:
                f = self._open()
            except FileNotFoundError:
                return  # gone again since the stat: the next poll looks again
            except (PathRefused, OSError) as e:
                why = str(e) if isinstance(e, PathRefused) else (e.strerror or str(e))
                self._skip(why)
                return
            if self.follow:
                f.seek(s[2], 0)
            self.f, self.started = _Metered(f, self), True
        super().poll()

    def _open(self) -> IO[bytes]:
        """The logfile, opened as the command's policy allows."""
        if self.owner is None:  # every command of this worker has one: fail closed
            raise PathRefused("the worker cannot tell which command this logfile is for")
        roots = self.owner.limits.paths
        if roots is None:  # no [paths] in force: as buildbot-worker opens it
            return open(self.logfile, "rb")  # noqa: SIM115 - closed by stop()
        return os.fdopen(open_file_beneath(self.logfile, roots), "rb")

    def _skip(self, why: str) -> None:
        self.skipped = True
        log.warn("command {command}: logfile {name!r} refused by the worker's policy, not "
                 "watched: {why}", command=_command_id(self.owner), name=self.name, why=why)
        self.command.send_update([("header", f"logfile {self.name!r} refused by the worker's "
                                             f"policy, not watched: {why}\n")])

    def was_cut(self, limit: int) -> None:
        self.cut = True
        why = (f"more than the {show_bytes(limit)} the worker's policy lets the master take "
               "from the worker (max_upload)")
        log.warn("command {command}: logfile {name!r} cut off: {why}",
                 command=_command_id(self.owner), name=self.name, why=why)
        self.command.send_update([("header", f"logfile {self.name!r} cut off: {why}\n")])


def _command_id(owner: FurlProtocolCommand | None) -> str:
    return str(getattr(owner, "command_id", "?"))


def install() -> None:
    """Make buildbot-worker watch every logfile through :class:`ConfinedLogFileWatcher`."""
    if runprocess.LogFileWatcher is _Base:
        runprocess.LogFileWatcher = ConfinedLogFileWatcher
