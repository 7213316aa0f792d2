"""The furl-worker daemon: a Tub that keeps itself attached to one FURL.

The link is the state machine of :mod:`buildbot_furl.worker.link`: it dials
with this Tub's ``getReference``, attaches, and after a failed attempt (no
connection, a refused attach, or a link dropped right after the attach)
waits as one jittered doubling backoff (``retry_delay``, capped at
``MAX_DELAY``) asks.  Failures are classified into one clear sentence each
(unreachable, wrong master, unknown FURL, revoked, duplicate, ...).
With ``maxretries`` (furl-worker.conf) the worker gives up after that many
failed attempts in a row and the process exits with ``Exit.UNAVAILABLE``
(:mod:`buildbot_furl.exits`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from foolscap.tokens import (
    BananaError,
    NegotiationError,
    RemoteException,
    RemoteNegotiationError,
)
from twisted.application import service
from twisted.internet import defer, reactor
from twisted.internet import error as terror
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from buildbot_furl.daemon import claim, report_ready, run_reactor
from buildbot_furl.errors import ConfigError, FurlError
from buildbot_furl.exits import Exit
from buildbot_furl.furl import Furl
from buildbot_furl.layout import WorkerPaths
from buildbot_furl.logs import start_logging
from buildbot_furl.privatefiles import write_private
from buildbot_furl.protocol import call
from buildbot_furl.protocol.messages import SessionProof
from buildbot_furl.tubs import DEFAULT_DISCONNECT_TIMEOUT, DEFAULT_KEEPALIVE, make_tub
from buildbot_furl.worker.bot import FurlBot
from buildbot_furl.metrics.serve import CannotServeMetrics, MetricsService
from buildbot_furl.worker.config import WorkerOptions, furl_id, read_furl_file
from buildbot_furl.worker.metrics import NO_METRICS, WorkerMetrics, not_ready
from buildbot_furl.worker.statefile import Attachment, Drain, Switch, SwitchResult, WorkerStatus
from buildbot_furl.worker.link import (  # noqa: F401 - re-exported: tests and docs name them here
    FACTOR,
    FATAL,
    INITIAL_DELAY,
    JITTER,
    MAX_DELAY,
    ORPHAN_MARGIN,
    STABLE_AFTER,
    Backoff,
    LinkCore,
    make_link,
    retry_delay,
    within_grace,
)

log = Logger()

LEAVE_TIMEOUT = 2.0
#: how long a new FURL (set-furl) has to reach its master before it is refused
PROBE_TIMEOUT = 10.0
#: ... and, once reached, to attach before the worker goes back to the old one
SWITCH_TIMEOUT = 30.0


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


class WorkerService(service.MultiService):
    """Keeps the bot attached to the master named by ``furl``: the link is
    the state machine of :mod:`buildbot_furl.worker.link`; this service owns
    the Tub it dials with, the state file and the FURL switch."""

    def __init__(self, paths: WorkerPaths, furl: Furl, keepalive: int = DEFAULT_KEEPALIVE,
                 disconnect_timeout: int = DEFAULT_DISCONNECT_TIMEOUT,
                 numcpus: int | None = None, maxretries: int = 0,
                 clock: IReactorTime | None = None,
                 dial: Callable[[str], defer.Deferred[Any]] | None = None,
                 metrics: WorkerMetrics | None = None) -> None:
        super().__init__()
        #: every timer of the worker runs on it (tests give a task.Clock)
        self.clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self.paths = paths
        events = metrics if metrics is not None else NO_METRICS
        self.bot = FurlBot(paths.basedir, self.clock, events=events)
        if numcpus is not None:
            self.bot.numcpus = numcpus  # getWorkerInfo detects it only when unset
        self.maxretries = maxretries
        self.bot.setServiceParent(self)
        self.tub = make_tub(None, keepalive, disconnect_timeout)
        self.tub.setServiceParent(self)
        #: the link's data, and the machine that drives it
        self.core = LinkCore(self.clock, furl, dial if dial is not None else self._dial,
                             self.bot, self, describe_failure, maxretries, events=events)
        self.link = make_link(self.core)
        if metrics is not None:
            core = self.core
            metrics.watch(lambda: core.state, lambda: core.attach_count,
                          self.bot.running_commands)
        self._state: tuple[Attachment, str | None] = (Attachment.CONNECTING, None)
        self._since = time.time()
        #: called with (ok, message, fatal) after every connection attempt
        self.on_event: Callable[[bool, str, bool], None] = lambda ok, msg, fatal: None
        #: called with the reason once maxretries attempts in a row failed
        self.on_give_up: Callable[[str], None] = lambda msg: None
        #: ends the process (a graceful stop with nothing to wait for)
        self.stop_process: Callable[[], None] = lambda: reactor.stop()
        #: the last FURL set-furl asked for, and where it got to (state file)
        self.switch: Switch | None = None
        #: while a new FURL attaches: (the FURL to go back to, its deadline timer)
        self._previous: tuple[Furl, Any] | None = None

    # the link's data, read-only here (the machine's transitions change it)
    @property
    def furl(self) -> Furl:
        return self.core.furl

    @furl.setter
    def furl(self, furl: Furl) -> None:
        self.core.furl = furl

    @property
    def login(self) -> Any:
        """The master's login object while attached."""
        return self.core.login if self.core.state in ("attached", "draining") else None

    @property
    def session(self) -> SessionProof | None:
        return self.core.session

    @property
    def grace(self) -> float:
        return self.core.grace

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.core.name

    @property
    def failures(self) -> int:
        return self.core.failures

    @property
    def drain(self) -> str | None:
        """The graceful stop: None, "asked", "accepted" or "unsupported"."""
        return self.core.drain.value

    @property
    def state(self) -> str:
        """The link's state (connecting, attaching, attached, draining,
        waiting, gave up, stopped)."""
        return self.core.state

    def not_ready(self) -> str | None:
        """Why /readyz says not ready (None: attached)."""
        return not_ready(self.core.state)

    def _dial(self, furl: str) -> defer.Deferred[Any]:
        return self.tub.getReference(furl)

    def startService(self) -> None:
        super().startService()
        self.link.start()

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """Tell the master we leave (so it does not wait out the grace period
        for us), then hang up."""
        if self.login is not None and self.session is not None:
            d = defer.Deferred.fromCoroutine(
                call(self.login, "leave", self.session.to_wire()))
            d.addTimeout(LEAVE_TIMEOUT, self.clock)
            try:
                await d
            except Exception as e:
                log.info("could not tell the master we leave: {err}", err=str(e))
        self.link.stop()
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
            self._switched(fid, SwitchResult.ATTACHED if self.login is not None
                           else SwitchResult.SAME, None)
            return
        self._switched(fid, SwitchResult.TRYING, None)
        try:
            await probe(furl, PROBE_TIMEOUT, self.clock)
        except Exception:
            reason = describe_failure(Failure(), furl)[0]
            log.warn("not switching to the new FURL: {reason}; keeping the previous one",
                     reason=reason)
            self._switched(fid, SwitchResult.FAILED, reason)
            return
        if self._previous is None:
            timer = self.clock.callLater(SWITCH_TIMEOUT, self._switch_back,
                                      f"not attached within {SWITCH_TIMEOUT:.0f} s")
            self._previous = (self.furl, timer)
        self.switch_furl(furl)

    def _switched(self, fid: str, result: SwitchResult, error: str | None) -> None:
        self.switch = Switch(fid, result, error)
        if result.final:
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
        self._switched(fid, SwitchResult.FAILED, reason)

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
            self._switched(furl_id(self.furl), SwitchResult.FAILED,
                           f"cannot write {self.paths.furl}: "
                           f"{e.strerror}")
            return
        log.info("the new FURL is attached and stored in {path}", path=self.paths.furl)
        self._switched(furl_id(self.furl), SwitchResult.ATTACHED, None)

    def switch_furl(self, furl: Furl) -> bool:
        """Leave the current FURL for ``furl``: hang up, then dial the new
        one.  False if it is the same FURL."""
        if str(furl) == str(self.furl):
            log.info("the FURL in {path} is the one in use; nothing to switch",
                     path=self.paths.furl)
            return False
        log.info("switching to a new FURL (master at {where})", where=",".join(furl.hints))
        self.link.switch(furl)
        return True

    # -- what the link asks of the service (LinkHost) ---------------------------
    def report(self, ok: bool, message: str, fatal: bool) -> bool:
        return self._outcome(ok, message, fatal)

    def _outcome(self, ok: bool, message: str, fatal: bool = False) -> bool:
        """An attempt's outcome: the state file, a FURL switch, start-up.
        True when a fatal failure of a new FURL sent the worker back to the
        previous one (that failure is the switch's, not the link's)."""
        if ok:
            self._write_state(Attachment.ATTACHED, None)
            if self._previous is not None:
                self._keep_new_furl()
        else:
            self._write_state(Attachment.CONNECTING, message)
            if self._previous is not None and fatal:
                self._switch_back(message)
                return True
        self.on_event(ok, message, fatal)
        return False

    def write_state(self, state: Attachment, error: str | None) -> None:
        self._write_state(state, error)

    def refresh_state(self) -> None:
        self._write_state(*self._state)

    def gave_up(self, why: str) -> None:
        self.on_give_up(why)

    def stop_now(self) -> None:
        self.stop_process()

    def _write_state(self, state: Attachment, error: str | None) -> None:
        """Record the connection state for ``furl-worker status`` (no secret
        in it: the master's address, never the FURL)."""
        if (state, error) != self._state:
            self._state, self._since = (state, error), time.time()
        record = WorkerStatus(state, self._since, os.getpid(), ",".join(self.furl.hints), error,
                              furl_id(self.furl), self.core.drain, self.switch, self.name)
        try:
            write_private(self.paths.state, record.to_json())
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
        self.core.drain = Drain.ASKED
        self._write_state(*self._state)
        self.link.drain()

    def _within_grace(self, delay: float) -> float:
        """``delay``, capped while the master keeps a session (see
        :func:`buildbot_furl.worker.link.within_grace`)."""
        return within_grace(delay, self.core.session, self.core.grace)


class _FirstAttach:
    """The first attach of a starting worker: it decides what ``start``
    reports (attached, or the reason it gave up) within ``wait`` seconds."""

    def __init__(self, ready_fd: int | None, wait: float,
                 clock: IReactorTime = reactor) -> None:  # type: ignore[assignment]
        self.ready_fd = ready_fd
        self.wait = wait
        self.decided = wait <= 0
        self.last = "no answer from the master"
        self.exit_code = 0
        self.reported = False
        self.timer: Any = clock.callLater(wait, self._waited) if wait > 0 else None

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def _report(self, ok: bool, message: str) -> None:
        if not self.reported:
            self.reported = True
            report_ready(self.ready_fd, ok, message)

    def give_up(self, message: str, code: int = Exit.ERROR) -> None:
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
    then it exits with Exit.UNAVAILABLE, at start-up or later).  The umask of
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
    metrics = WorkerMetrics() if st.metrics_listen else None
    svc = WorkerService(paths, furl, options.keepalive, options.disconnect_timeout,
                        st.numcpus, st.maxretries or 0, metrics=metrics)
    endpoint = None
    if metrics is not None and st.metrics_listen:
        endpoint = MetricsService(st.metrics_listen, metrics.registry, svc.not_ready)
        endpoint.setServiceParent(svc)  # stops listening when the worker stops
    startup = _FirstAttach(ready_fd, options.wait)
    svc.on_event = startup.event
    # gave up after maxretries failed attempts in a row: "no master answers"
    svc.on_give_up = lambda why: startup.give_up(why, Exit.UNAVAILABLE)

    def hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(logfile.reopen)

    def usr1(signum: int, frame: Any) -> None:
        reactor.callFromThread(_switch_to_stored_furl, svc)

    def usr2(signum: int, frame: Any) -> None:
        reactor.callFromThread(svc.request_drain)

    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGUSR1, usr1)
    signal.signal(signal.SIGUSR2, usr2)

    async def start() -> None:
        if endpoint is not None:
            try:
                await endpoint.start()
            except CannotServeMetrics as e:
                startup.give_up(str(e), Exit.ERROR)  # before the first dial
                return
        svc.startService()
        startup.started()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(start()))
    run_reactor(pidfile, svc)
    return startup.exit_code
