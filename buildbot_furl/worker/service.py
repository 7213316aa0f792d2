"""The furl-worker daemon: a Tub that keeps itself attached to one FURL.

Reconnection is foolscap's Reconnector, paced by :class:`Backoff` (one
jittered doubling backoff capped at ``MAX_DELAY`` for every failed attempt:
no connection, a refused attach, or a link dropped right after the attach);
after each connection the worker calls ``attach`` on its login object.  Failures are classified into one clear sentence each
(unreachable, wrong master, unknown FURL, revoked, duplicate, ...).
With ``maxretries`` (furl-worker.conf) the worker gives up after that many
failed attempts in a row and the process exits with ``EXIT_GAVE_UP``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from foolscap.reconnector import Reconnector
from foolscap.tokens import (
    BananaError,
    NegotiationError,
    RemoteException,
    RemoteNegotiationError,
)
from twisted.application import service
from twisted.internet import defer, reactor
from twisted.internet import error as terror
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from buildbot_furl import __version__
from buildbot_furl.daemon import claim, report_ready, run_reactor
from buildbot_furl.errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    DuplicateWorker,
    FurlError,
    IncompatibleProtocol,
    RemoteError,
    Revoked,
)
from buildbot_furl.furl import Furl
from buildbot_furl.layout import WorkerPaths
from buildbot_furl.logs import start_logging
from buildbot_furl.privatefiles import write_private
from buildbot_furl.protocol import PROTOCOL_VERSIONS, call
from buildbot_furl.protocol.messages import AttachAnswer, AttachInfo, encode_session
from buildbot_furl.tubs import (
    DEFAULT_DISCONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE,
    make_tub,
    sever,
)
from buildbot_furl.worker.bot import FurlBot
from buildbot_furl.worker.config import WorkerOptions, furl_id, read_furl_file
from buildbot_furl.worker.streams import SessionEnded

log = Logger()

MAX_DELAY = 60.0
INITIAL_DELAY = 1.0
FACTOR = 2.0
JITTER = 0.2
#: seconds a link must stay up after an attach to count as a success: a link
#: the master drops sooner (Buildbot refusing the worker after login) is a
#: failed attempt, under the same backoff as a refused one
STABLE_AFTER = 10.0
#: how long past the master's grace period the worker keeps an unowned
#: session's commands running (the master may notice the loss later than we do)
ORPHAN_MARGIN = 15.0
LEAVE_TIMEOUT = 2.0
#: how long a new FURL (set-furl) has to reach its master before it is refused
PROBE_TIMEOUT = 10.0
#: ... and, once reached, to attach before the worker goes back to the old one
SWITCH_TIMEOUT = 30.0

#: attach errors after which retrying cannot help until an admin acts
FATAL = (Revoked, IncompatibleProtocol)
#: the exit code of a worker that gave up after maxretries failed attempts in a
#: row (the CLI's Exit.UNAVAILABLE, "no master answers")
EXIT_GAVE_UP = 2


def describe_failure(f: Any, furl: Furl) -> tuple[str, bool]:
    """(one-line reason, fatal?) for a failed connection attempt."""
    where = ",".join(furl.hints)
    if f.check(terror.ConnectionRefusedError):
        return f"cannot reach the master at {where}: connection refused", False
    if f.check(terror.DNSLookupError):
        return f"cannot reach the master at {where}: host name not found", False
    if f.check(terror.TimeoutError, terror.TCPTimedOutError):
        return f"cannot reach the master at {where}: timed out", False
    if f.check(terror.ConnectError):
        return f"cannot reach the master at {where}: {f.getErrorMessage()}", False
    if f.check(NegotiationError, RemoteNegotiationError, BananaError):
        return (
            f"the server at {where} is not the master this FURL names (it does not hold "
            "the key the FURL's TUBID pins, or is no furl master at all); check the FURL",
            True
        )
    if f.check(RemoteException, KeyError):
        return (
            "the master does not know this FURL: it was revoked, rotated or mistyped; "
            "ask the master's admin for the current one", True
        )
    if f.check(FurlError):
        return str(f.value), isinstance(f.value, FATAL)
    return f"connection failed: {f.getErrorMessage()}", False


def retry_delay(attempt: int,
                rng: Callable[[float, float], float] = random.normalvariate) -> float:
    """Seconds to wait before dialing again after ``attempt`` failed attempts
    in a row (0: none, dial at once): doubling from INITIAL_DELAY up to
    MAX_DELAY, jittered by JITTER (``rng(mean, sigma)``), never under 0.5 s."""
    if attempt <= 0:
        return 0.0
    base = min(INITIAL_DELAY * FACTOR ** min(attempt - 1, 32), MAX_DELAY)
    return min(max(0.5, rng(base, base * JITTER)), MAX_DELAY * (1 + JITTER))


class Backoff:
    """Failed attempts in a row and the wait before the next dial.  A failed
    attempt is a connection that failed, an attach the master refused, or a
    link dropped within STABLE_AFTER s of the attach (that one waits as long
    as the failures before it ask: the first such drop, which may be a
    network reset, is redialed at once); a link that stayed up longer resets
    the count (its loss is redialed at once: a session is waiting)."""

    def __init__(self, clock: IReactorTime,
                 rng: Callable[[float, float], float] = random.normalvariate) -> None:
        self.clock = clock
        self.rng = rng
        self.attempts = 0
        self.delay = 0.0  # the wait after the last failure
        self._refused = False  # the last attach was refused; its link not yet gone
        self._stable: IDelayedCall | None = None  # pending while a new link proves itself

    def failed(self) -> float:
        """One more failed attempt: the wait before the next."""
        self._cancel()
        self._refused = False
        self.attempts += 1
        self.delay = retry_delay(self.attempts, self.rng)
        return self.delay

    def refused(self) -> float:
        """The master refused the attach: a failed attempt (its link's loss
        then waits this long, and is not counted again)."""
        delay = self.failed()
        self._refused = True
        return delay

    def attached(self, resumed: bool = False) -> None:
        """An attach succeeded.  A resumed session is the master taking the
        worker back: the count starts again at once.  A fresh one must hold
        STABLE_AFTER s first (a master that drops a worker it refuses after
        login hands out fresh sessions only)."""
        self._cancel()
        self._refused = False
        if resumed:
            self.attempts = 0
        else:
            self._stable = self.clock.callLater(STABLE_AFTER, self._proved)

    def lost(self) -> float:
        """The link ended: the wait before dialing again."""
        if self._refused:
            self._refused = False
            return self.delay
        if self._stable is not None:
            # dropped right after the attach: a failed attempt, paced by the
            # failures before it (a lone drop may be a network reset: at once)
            self._cancel()
            self.attempts += 1
            self.delay = retry_delay(self.attempts - 1, self.rng)
            return self.delay
        return 0.0

    @property
    def proving(self) -> bool:
        """Attached, but not yet for STABLE_AFTER s."""
        return self._stable is not None

    def reset(self) -> None:
        self._cancel()
        self._refused = False
        self.attempts = 0

    def _proved(self) -> None:
        self._stable = None
        self.attempts = 0

    def _cancel(self) -> None:
        if self._stable is not None and self._stable.active():
            self._stable.cancel()
        self._stable = None


class _Reconnector(Reconnector):
    """foolscap's Reconnector, with the service's backoff (``on_failure(f)``
    and ``on_lost()`` answer the wait before the next dial) and no FURL in
    any log line (the stock one logs the whole FURL)."""

    def __init__(self, url: str, cb: Callable[..., Any], on_failure: Callable[[Any], float],
                 on_lost: Callable[[], float]) -> None:
        super().__init__(url, cb, (), {})
        self._on_failure = on_failure
        self._on_lost = on_lost

    def _failed(self, f: Any) -> None:  # noqa: D401 - foolscap hook
        self._last_failure = f
        delay = self._on_failure(f)
        if not self._active:
            return
        self._delay = delay
        self._retry()

    def _disconnected(self) -> None:  # noqa: D401 - foolscap hook
        if not self._active:
            return  # the worker hung up itself (stop, or a new FURL): no failure
        self._delay = self._on_lost()
        self._retry()


class WorkerService(service.MultiService):
    """Keeps the bot attached to the master named by ``furl``."""

    def __init__(self, paths: WorkerPaths, furl: Furl, keepalive: int = DEFAULT_KEEPALIVE,
                 disconnect_timeout: int = DEFAULT_DISCONNECT_TIMEOUT,
                 numcpus: int | None = None, maxretries: int = 0,
                 clock: IReactorTime | None = None) -> None:
        super().__init__()
        #: the timers of a FURL switch run on it (tests give a task.Clock)
        self.clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self.paths = paths
        self.furl = furl
        self.bot = FurlBot(paths.basedir)
        if numcpus is not None:
            self.bot.numcpus = numcpus  # getWorkerInfo detects it only when unset
        #: failed attempts in a row after which the worker gives up (0: never)
        self.maxretries = maxretries
        self.failures = 0
        self.bot.setServiceParent(self)
        self.tub = make_tub(None, keepalive, disconnect_timeout)
        self.tub.setServiceParent(self)
        self.reconnector: _Reconnector | None = None
        self.login: Any = None  # the master's login object while attached
        #: the session the master gave us (id, secret), to present on a reattach
        self.session: tuple[str, str] | None = None
        self.grace = 0.0  # how long the master keeps it without a connection
        self.name = ""  # as the master knows this worker (its attach answer says)
        self._orphan_timer: Any = None
        self.attach_count = 0
        self.backoff = Backoff(self.clock)
        #: a graceful stop: None, "asked" (not yet told to a master),
        #: "accepted" or "unsupported" (the master cannot drain)
        self.drain: str | None = None
        self._state: tuple[str, str | None] = ("connecting", None)
        self._since = time.time()
        #: called with (ok, message, fatal) after every connection attempt
        self.on_event: Callable[[bool, str, bool], None] = lambda ok, msg, fatal: None
        #: called with the reason once maxretries attempts in a row failed
        self.on_give_up: Callable[[str], None] = lambda msg: None
        #: the last FURL set-furl asked for: {"furl_id", "result", "error"} (state file)
        self.switch: dict[str, Any] | None = None
        #: while a new FURL attaches: (the FURL to go back to, its deadline timer)
        self._previous: tuple[Furl, Any] | None = None

    def startService(self) -> None:
        super().startService()
        self._start_connecting()

    def _start_connecting(self) -> None:
        self.reconnector = _Reconnector(str(self.furl), self._connected, self._conn_failed,
                                        self._link_lost)
        self.tub.reconnectors.append(self.reconnector)
        self.reconnector.startConnecting(self.tub)

    def _forget_session(self, why: str) -> None:
        """The session is over: end its commands (and their processes)."""
        self._cancel_orphan_timer()
        self.session = None
        n = self.bot.end_commands(SessionEnded(why))
        if n:
            log.warn("ended {n} command(s) of a session no master has any more: {why}",
                     n=n, why=why)

    def _cancel_orphan_timer(self) -> None:
        if self._orphan_timer is not None and self._orphan_timer.active():
            self._orphan_timer.cancel()
        self._orphan_timer = None

    def _stop_connecting(self) -> None:
        if self.reconnector is not None:
            self.reconnector.stopConnecting()
            if self.reconnector in self.tub.reconnectors:
                self.tub.reconnectors.remove(self.reconnector)
            self.reconnector = None
        if self.login is not None:
            sever(self.login, "the worker hung up")
            self.login = None

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """Tell the master we leave (so it does not wait out the grace period
        for us), then hang up."""
        if self.login is not None and self.session is not None:
            d = defer.Deferred.fromCoroutine(
                call(self.login, "leave", encode_session(self.session)))
            d.addTimeout(LEAVE_TIMEOUT, reactor)
            try:
                await d
            except Exception as e:
                log.info("could not tell the master we leave: {err}", err=str(e))
        self._cancel_orphan_timer()
        self._stop_connecting()
        await defer.maybeDeferred(super().stopService)

    # -- a new FURL (set-furl) ---------------------------------------------------
    def try_furl(self, furl: Furl) -> defer.Deferred[None]:
        """SIGUSR1 (``furl-worker set-furl``): use ``furl`` if it works.

        The connection in use is kept while a separate Tub checks that the
        new FURL reaches a master that holds it (address, TUBID, swissnum);
        only then does the worker hang up and attach with it, and only once
        attached is it stored in master.furl.  A FURL that does not reach,
        or does not attach within SWITCH_TIMEOUT, is given up and the
        previous one is used again; the state file says which happened."""
        return defer.Deferred.fromCoroutine(self._try_furl(furl))

    async def _try_furl(self, furl: Furl) -> None:
        fid = furl_id(furl)
        if str(furl) == str(self.furl) and self._previous is None:
            log.info("the new FURL is the one in use; nothing to switch")
            self._switched(fid, "attached" if self.login is not None else "same", None)
            return
        self._switched(fid, "trying", None)
        try:
            await probe(furl, PROBE_TIMEOUT, self.clock)
        except Exception:
            reason = describe_failure(Failure(), furl)[0]
            log.warn("not switching to the new FURL: {reason}; keeping the previous one",
                     reason=reason)
            self._switched(fid, "failed", reason)
            return
        if self._previous is None:
            timer = self.clock.callLater(SWITCH_TIMEOUT, self._switch_back,
                                      f"not attached within {SWITCH_TIMEOUT:.0f} s")
            self._previous = (self.furl, timer)
        self.switch_furl(furl)

    def _switched(self, fid: str, result: str, error: str | None) -> None:
        self.switch = {"furl_id": fid, "result": result, "error": error}
        if result != "trying":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.furl_new)
        self._write_state(*self._state)

    def _switch_back(self, reason: str) -> None:
        """The new FURL did not attach: use the previous one again."""
        if self._previous is None:
            return
        old, timer = self._previous
        self._previous = None
        if timer.active():
            timer.cancel()
        fid = furl_id(self.furl)
        log.warn("the new FURL did not attach ({reason}); going back to the previous one",
                 reason=reason)
        self.switch_furl(old)
        self._switched(fid, "failed", reason)

    def _keep_new_furl(self) -> None:
        """The new FURL attached: it replaces the previous one in master.furl."""
        assert self._previous is not None
        _, timer = self._previous
        self._previous = None
        if timer.active():
            timer.cancel()
        try:
            write_private(self.paths.furl, f"{self.furl}\n")
        except OSError as e:
            log.error("attached with the new FURL, but cannot store it in {path}: {err}",
                      path=self.paths.furl, err=e.strerror)
            self._switched(furl_id(self.furl), "failed", f"cannot write {self.paths.furl}: "
                           f"{e.strerror}")
            return
        log.info("the new FURL is attached and stored in {path}", path=self.paths.furl)
        self._switched(furl_id(self.furl), "attached", None)

    def switch_furl(self, furl: Furl) -> bool:
        """Leave the current FURL for ``furl``: hang up, then dial the new
        one.  False if it is the same FURL."""
        if str(furl) == str(self.furl):
            log.info("the FURL in {path} is the one in use; nothing to switch",
                     path=self.paths.furl)
            return False
        log.info("switching to a new FURL (master at {where})", where=",".join(furl.hints))
        self._stop_connecting()
        self._forget_session("the worker switched to a new FURL")
        self.furl = furl
        self.name = ""  # another FURL may stand for another name
        self.backoff.reset()
        self._write_state("connecting", None)
        self._start_connecting()
        return True

    def _outcome(self, ok: bool, message: str, fatal: bool = False) -> None:
        if ok:
            self.failures = 0
            self._write_state("attached", None)
            if self._previous is not None:
                self._keep_new_furl()
        else:
            self.failures += 1
            self._write_state("connecting", message)
            if self._previous is not None and fatal:
                self._switch_back(message)
                return
        self.on_event(ok, message, fatal)
        if not ok and self.maxretries and self.failures >= self.maxretries \
                and self.reconnector is not None:
            n = self.failures
            why = (f"{message}; {n} failed attempt{'s' if n > 1 else ''} in a row "
                   f"(maxretries {self.maxretries})")
            self._stop_connecting()
            self.on_give_up(why)

    def _write_state(self, state: str, error: str | None) -> None:
        """Record the connection state for ``furl-worker status`` (no secret
        in it: the master's address, never the FURL)."""
        if (state, error) != self._state:
            self._state, self._since = (state, error), time.time()
        record = {"state": state, "since": self._since, "pid": os.getpid(),
                  "master": ",".join(self.furl.hints), "last_error": error,
                  "furl_id": furl_id(self.furl), "drain": self.drain, "switch": self.switch,
                  "name": self.name}
        try:
            write_private(self.paths.state, json.dumps(record) + "\n")
        except OSError as e:
            log.warn("cannot write {path}: {err}", path=self.paths.state, err=e.strerror)

    # -- graceful stop ------------------------------------------------------------
    def request_drain(self) -> None:
        """SIGUSR2 (``furl-worker stop --graceful``): ask the master to give
        this worker no new work and to tell it to stop once what runs has
        ended.  Not attached and nothing running: stop now."""
        if self.drain is not None:
            log.info("a graceful stop was asked already ({state})", state=self.drain)
            return
        self.drain = "asked"
        self._write_state(*self._state)
        if self.login is not None and self.session is not None:
            defer.Deferred.fromCoroutine(self._send_drain(self.login, self.session))
        elif not self.bot.commands:
            log.info("graceful stop: not attached and nothing runs; stopping now")
            reactor.stop()
        else:
            log.info("graceful stop: {n} command(s) run; asking the master once attached "
                     "again", n=len(self.bot.commands))

    async def _send_drain(self, login: Any, session: tuple[str, str]) -> None:
        try:
            answer = await call(login, "drain", encode_session(session))
        except ConnectionLost:
            return  # asked again at the next attach
        except (RemoteError, BadRequest) as e:
            self.drain = "unsupported"
            log.warn("graceful stop: the master cannot do it ({err}; an older furl-master?); "
                     "the worker keeps running: stop it with 'furl-worker stop' when its "
                     "work is done", err=str(e))
        else:
            self.drain = "accepted"
            running = answer.get("running") if isinstance(answer, dict) else None
            log.info("graceful stop: the master gives this worker no new work; it stops "
                     "once the {n} running command(s) or build(s) end", n=running)
        self._write_state(*self._state)

    def _within_grace(self, delay: float) -> float:
        """``delay``, but while the master keeps a session for this worker, at
        most a quarter of its grace period: a link that keeps being cut must
        still get several tries before the session (and its commands) ends."""
        if self.session is not None and self.grace > 0:
            return min(delay, max(1.0, self.grace / 4))
        return delay

    def _conn_failed(self, f: Any) -> float:
        reason, fatal = describe_failure(f, self.furl)
        delay = self._within_grace(self.backoff.failed())
        if not (self.maxretries and self.failures + 1 >= self.maxretries):
            log.warn("{reason}; retrying in {delay:.0f} s", reason=reason, delay=delay)
        self._outcome(False, reason, fatal)
        return delay

    def _link_lost(self) -> float:
        """The Reconnector's question when a link ends: how long to wait."""
        quick = self.backoff.proving
        delay = self._within_grace(self.backoff.lost())
        if quick:
            reason = "the master dropped the link right after the attach"
            log.warn("{reason}; retrying in {delay:.0f} s", reason=reason, delay=delay)
            self._outcome(False, reason)
        return delay

    def _connected(self, login: Any) -> None:
        defer.Deferred.fromCoroutine(self._attach(login))

    async def _attach(self, login: Any) -> None:
        info = AttachInfo(PROTOCOL_VERSIONS, __version__, self.bot.attach_info(), self.session)
        try:
            answer = AttachAnswer.from_wire(await call(login, "attach", self.bot, info.to_wire()))
        except Exception as e:
            reason = str(e) if isinstance(e, FurlError) else f"attach failed: {e}"
            fatal = isinstance(e, FATAL)
            delay = self.backoff.refused()
            log.warn("{reason}; retrying in {delay:.0f} s", reason=reason, delay=delay)
            if isinstance(e, DuplicateWorker):
                fatal = self.attach_count == 0
            self._outcome(False, reason, fatal)
            # hang up now: the Reconnector waits ``delay`` before it dials again
            sever(login, "attach refused")
            return
        self.backoff.attached(answer.resumed)
        self.attach_count += 1
        self.login = login
        self._cancel_orphan_timer()
        if answer.resumed:
            gone = self.bot.keep_only(set(answer.commands), SessionEnded(
                "the master did not know the command any more"))
            log.info("attached to the master at {where} again: session resumed, "
                     "{n} command(s) carried on{gone}", where=",".join(self.furl.hints),
                     n=len(answer.commands), gone=f", {gone} ended" if gone else "")
        else:
            if self.session is not None or self.bot.commands:
                self._forget_session("the master does not know this worker's session (it "
                                     "restarted, or the link was down longer than its grace "
                                     "period)")
            log.info("attached to the master at {where} (protocol {proto}, master version "
                     "{mv})", where=",".join(self.furl.hints), proto=answer.protocol,
                     mv=answer.master_version)
        self.session = (answer.session, answer.secret)
        self.grace = answer.grace
        self.name = answer.name or self.name
        login.notifyOnDisconnect(self._disconnected, login)
        self._outcome(True, "attached")
        if self.drain == "asked" or (self.drain == "accepted" and not answer.resumed):
            defer.Deferred.fromCoroutine(self._send_drain(login, self.session))

    def _disconnected(self, login: Any = None) -> None:
        if login is not None and login is not self.login:
            return  # a connection we hung up ourselves (a new FURL): not the one in use
        self.login = None
        if self.reconnector is None:
            return  # we hung up ourselves (stop, or a new FURL)
        if self.bot.commands and self.session is not None:
            wait = self.grace + ORPHAN_MARGIN
            log.info("lost the connection to the master; reconnecting (its session, with "
                     "{n} running command(s), is kept for up to {wait:.0f} s)",
                     n=len(self.bot.commands), wait=wait)
            self._orphan_timer = reactor.callLater(
                wait, self._forget_session,
                f"no master took the session back within {wait:.0f} s")
        else:
            log.info("lost the connection to the master; reconnecting")
        self._write_state("connecting", "lost the connection to the master")


class _Startup:
    """The first attach of a starting worker: it decides what ``start``
    reports (attached, or the reason it gave up) within ``wait`` seconds."""

    def __init__(self, ready_fd: int | None, wait: float) -> None:
        self.ready_fd = ready_fd
        self.wait = wait
        self.decided = wait <= 0
        self.last = "no answer from the master"
        self.exit_code = 0
        self.reported = False
        self.timer: Any = reactor.callLater(wait, self._waited) if wait > 0 else None

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def _report(self, ok: bool, message: str) -> None:
        if not self.reported:
            self.reported = True
            report_ready(self.ready_fd, ok, message)

    def give_up(self, message: str, code: int = 1) -> None:
        """End the process: at start-up ``start`` reports ``message``."""
        if self.exit_code:
            return
        self.decided = True
        log.error("giving up: {msg}", msg=message)
        self._report(False, message)
        self.exit_code = code
        self._cancel_timer()
        reactor.stop()

    def event(self, ok: bool, message: str, fatal: bool) -> None:
        if self.decided:
            return
        if ok:
            self.decided = True
            self._cancel_timer()
            self._report(True, f"pid {os.getpid()}, attached")
        elif fatal:
            self.give_up(message)
        else:
            self.last = message

    def _waited(self) -> None:
        if not self.decided:
            self.give_up(f"{self.last} (gave up after {self.wait:.0f} s; use --wait 0 to keep "
                         "trying)")

    def started(self) -> None:
        if self.wait <= 0:
            self._report(True, f"pid {os.getpid()}, connecting")


async def probe(furl: Furl, timeout: float, clock: IReactorTime) -> None:
    """Reach ``furl``'s object from a Tub of its own (a connection of its
    own, to the FURL's own address), or raise why not."""
    tub = make_tub(None, keepalive=0, disconnect_timeout=0)
    tub.startService()
    try:
        d = tub.getReference(str(furl))
        d.addTimeout(timeout, clock)
        try:
            await d
        except defer.TimeoutError:
            raise terror.TimeoutError(f"no answer within {timeout:.0f} s") from None
    finally:
        await tub.stopService()


def _switch_to_stored_furl(svc: WorkerService) -> None:
    """SIGUSR1 (from ``furl-worker set-furl``): try DIR/master.furl.new (or,
    without it, DIR/master.furl as edited by hand)."""
    path = svc.paths.furl_new if os.path.exists(svc.paths.furl_new) else svc.paths.furl
    try:
        furl = read_furl_file(path)
    except ConfigError as e:
        log.error("SIGUSR1: not switching FURL: {err}", err=str(e))
        return
    svc.try_furl(furl)


def run_worker(paths: WorkerPaths, furl: Furl, ready_fd: int | None, to_stderr: bool,
               options: WorkerOptions) -> int:
    """Run the worker in this process until SIGTERM/SIGINT; the exit code.

    Start-up waits up to ``options.wait`` seconds for the first attach: a
    fatal failure (unknown FURL, wrong master) or no attach in that time
    ends the process with that reason; with a wait of 0 it reports ready at
    once and keeps trying (unless ``maxretries`` attempts in a row fail:
    then it exits with EXIT_GAVE_UP, at start-up or later).  The umask of
    the settings applies to the whole process, hence to every file a build
    creates.  SIGHUP reopens the log file; SIGUSR1 switches to the FURL in
    DIR/master.furl; SIGUSR2 asks for a graceful stop (the master gives no
    new work, and tells the worker to stop once what runs has ended).
    """
    pidfile = claim(paths.pidfile, ready_fd, "worker")
    if pidfile is None:
        return 1
    logfile = start_logging(paths.log, to_stderr, options.log_size, options.log_keep)
    os.chdir(paths.basedir)
    st = options.settings
    if st.umask is not None:
        # as buildbot-worker does with buildbot.tac's umask; the worker's own
        # files (log, state, pid, secrets) are opened with explicit modes
        os.umask(st.umask)
        log.info("umask set to {umask:03o}", umask=st.umask)
    svc = WorkerService(paths, furl, options.keepalive, options.disconnect_timeout,
                        st.numcpus, st.maxretries or 0)
    startup = _Startup(ready_fd, options.wait)
    svc.on_event = startup.event
    svc.on_give_up = lambda why: startup.give_up(why, EXIT_GAVE_UP)

    def hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(logfile.reopen)

    def usr1(signum: int, frame: Any) -> None:
        reactor.callFromThread(_switch_to_stored_furl, svc)

    def usr2(signum: int, frame: Any) -> None:
        reactor.callFromThread(svc.request_drain)

    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGUSR1, usr1)
    signal.signal(signal.SIGUSR2, usr2)

    def start() -> None:
        svc.startService()
        startup.started()

    reactor.callWhenRunning(start)
    run_reactor(pidfile, svc)
    return startup.exit_code
