"""Every command the worker runs leads a process group of its own.

buildbot-worker starts a command (``shell``, and the ``rm``/``cp`` of its
file-system commands) as a ``ProcGroupProcess``, whose child calls
``setpgid(0, 0)`` between fork and exec, so that an interrupt or a
timeout signals the whole tree (``killpg``).  Twisted, however, starts a
child with ``posix_spawnp`` instead of fork whenever it can, and it can
whenever the working directory is the worker's own (the daemon's current
directory, e.g. ``furl-master run`` without ``--workdir``): the hook is
then never called, the command shares the daemon's process group, the
``killpg`` fails (``No such process``) and only the direct child is
killed, its children are left to init.

:class:`ProcGroupProcess` asks ``posix_spawnp`` for the new process group
(``setpgroup=0``) on that path, and forks as before on the others; the
worker installs it in place of buildbot-worker's (:func:`install`), and
Buildbot steps and standalone commands both go through it.  (Keeping
``posix_spawnp`` where Twisted uses it keeps its errors too: a program
that cannot be started is reported by the spawn, not by a traceback from
a forked child.)
"""

from __future__ import annotations

import os
from typing import Any

from buildbot_worker import runprocess

_Base: Any = getattr(runprocess, "ProcGroupProcess", None)


if _Base is not None:

    class ProcGroupProcess(_Base):  # type: ignore[misc, valid-type]
        """buildbot-worker's ProcGroupProcess, its own group leader on every path."""

        def _trySpawnInsteadOfFork(self, *args: Any, **kwargs: Any) -> bool:  # noqa: N802
            real = os.posix_spawnp

            def spawn(*a: Any, **kw: Any) -> int:
                kw["setpgroup"] = 0  # what _setupChild's setpgid(0, 0) does after a fork
                return real(*a, **kw)

            # Twisted calls os.posix_spawnp itself: replaced for this one call,
            # made in the reactor's thread (no other thread of the worker spawns)
            os.posix_spawnp = spawn
            try:
                return bool(super()._trySpawnInsteadOfFork(*args, **kwargs))
            finally:
                os.posix_spawnp = real


def install() -> None:
    """Make buildbot-worker start every command through :class:`ProcGroupProcess`."""
    if _Base is not None and runprocess.ProcGroupProcess is _Base:
        runprocess.ProcGroupProcess = ProcGroupProcess
