"""Reaching a running master through its admin FURL."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet import defer

from buildbot_furl.daemon import PidFile
from buildbot_furl.errors import ConfigError, FurlError
from buildbot_furl.layout import MasterPaths
from buildbot_furl.oneshot import run_once
from buildbot_furl.privatefiles import check_private_mode
from buildbot_furl.protocol import RIAdmin
from buildbot_furl.tubs import make_tub

T = TypeVar("T")


class MasterNotRunning(FurlError):
    """No master runs for this basedir (its pid file says so)."""


class MasterUnreachable(FurlError):
    """The master runs (its pid file is locked) but its admin port does not
    answer: not the same as "not running", and never said as such."""


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


def _why_unreachable(e: BaseException) -> str:
    """What went wrong dialing the admin FURL, in a few words."""
    from foolscap.tokens import NegotiationError, RemoteNegotiationError
    from twisted.internet import error as terror

    if isinstance(e, terror.ConnectionRefusedError):
        return "nothing listens on its admin port (is it starting or stopping?)"
    if isinstance(e, (defer.TimeoutError, terror.TimeoutError, defer.CancelledError)):
        return "no answer on its admin port in time (is it overloaded or stopped?)"
    if isinstance(e, (NegotiationError, RemoteNegotiationError)):
        return "the server on its admin port is not the master that wrote admin.furl"
    if "KeyError" in repr(e):
        return "it does not know the admin FURL in private/admin.furl (a stale file?)"
    if isinstance(e, (terror.ConnectionDone, terror.ConnectionLost)):
        return "it closed the connection to its admin port"
    return f"{type(e).__name__}: {str(e)[:200]}"


async def connect(paths: MasterPaths, timeout: float = 10.0) -> tuple[Any, Any]:
    """(tub, admin reference); stop the tub when done.  MasterNotRunning if
    the pid file says no master runs, MasterUnreachable if one runs but
    does not answer."""
    furl = admin_furl(paths)
    tub = make_tub(None, keepalive=0, disconnect_timeout=0)
    tub.startService()
    try:
        d = tub.getReference(furl)
        from twisted.internet import reactor

        d.addTimeout(timeout, reactor)
        ref = await d
    except Exception as e:
        await tub.stopService()
        pid = PidFile(paths.pidfile).running_pid()
        if pid is None:
            raise MasterNotRunning(f"the master in {paths.basedir} is not running "
                                   "(it stopped meanwhile)") from None
        raise MasterUnreachable(
            f"the master in {paths.basedir} runs (pid {pid}) but does not answer the admin: "
            f"{_why_unreachable(e)}"
        ) from None
    return tub, ref


class NotAvailable(FurlError):
    """The running master does not offer this (a Buildbot master: no run/put/get)."""


def require_standalone(admin: Any, why: str = "run, put and get are not available on a "
                       "Buildbot master: its builders own the workers (use a build "
                       "instead)") -> None:
    """A Buildbot master publishes status only: its builders own the workers."""
    tracker = getattr(admin, "tracker", None)
    if getattr(tracker, "interfaceName", None) != RIAdmin.__remote_name__:
        raise NotAvailable(why)


def run_with_admin(paths: MasterPaths, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(admin_ref)`` under a reactor; return its result or raise."""

    async def call(reactor: Any) -> T:
        tub, ref = await connect(paths)
        try:
            return await fn(ref)
        finally:
            await tub.stopService()

    return run_once(call)


def master_pid(paths: MasterPaths) -> int | None:
    return PidFile(paths.pidfile).running_pid() if os.path.isdir(paths.basedir) else None
