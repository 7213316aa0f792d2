"""Reaching a running master through its admin FURL."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.task import react

from buildbot_furl.daemon import PidFile
from buildbot_furl.errors import ConfigError, FurlError
from buildbot_furl.layout import MasterPaths
from buildbot_furl.privatefiles import check_private_mode
from buildbot_furl.tubs import make_tub

T = TypeVar("T")


class MasterNotRunning(FurlError):
    """No master answers for this basedir."""


def admin_furl(paths: MasterPaths) -> str:
    """The admin FURL of the running master, or MasterNotRunning."""
    if PidFile(paths.pidfile).running_pid() is None:
        raise MasterNotRunning(f"the master in {paths.basedir} is not running "
                               "(start it with: furl-master start)")
    check_private_mode(paths.admin_furl)
    try:
        with open(paths.admin_furl, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        raise MasterNotRunning(f"the master in {paths.basedir} is starting or stopping; "
                               "try again in a moment") from None
    except OSError as e:
        raise ConfigError(f"cannot read {paths.admin_furl}: {e.strerror}") from None


async def connect(paths: MasterPaths, timeout: float = 10.0) -> tuple[Any, Any]:
    """(tub, admin reference); stop the tub when done."""
    furl = admin_furl(paths)
    tub = make_tub(None, keepalive=0, disconnect_timeout=0)
    tub.startService()
    try:
        d = tub.getReference(furl)
        from twisted.internet import reactor

        d.addTimeout(timeout, reactor)
        ref = await d
    except Exception:
        await tub.stopService()
        raise MasterNotRunning(
            f"the master in {paths.basedir} does not answer on its admin FURL; "
            "is it running? (furl-master status)"
        ) from None
    return tub, ref


def run_with_admin(paths: MasterPaths, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(admin_ref)`` under a reactor; return its result or raise."""
    box: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        tub, ref = await connect(paths)
        try:
            box["result"] = await fn(ref)
        except BaseException as e:  # handed back to the synchronous caller
            box["error"] = e
        finally:
            await tub.stopService()

    def entry(reactor: Any) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(main(reactor))
        d.addErrback(lambda f: box.setdefault("error", f.value))
        return d

    try:
        react(entry)
    except SystemExit as e:
        if e.code not in (0, None) and "error" not in box:
            raise
    if "error" in box:
        raise box["error"]
    return box["result"]


def master_pid(paths: MasterPaths) -> int | None:
    return PidFile(paths.pidfile).running_pid() if os.path.isdir(paths.basedir) else None
