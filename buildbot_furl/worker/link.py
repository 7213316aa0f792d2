"""The worker's link to its master: one state machine (Automat's
``TypeMachineBuilder``, as Twisted's ``ClientService`` is built).

States: ``stopped``, ``connecting`` (a dial is out), ``attaching`` (the
attach call is out), ``attached``, ``draining`` (attached, and the master
was asked for a graceful stop), ``waiting`` (for the next dial), ``gave up``
(maxretries failed attempts in a row).  Every piece of the link's data is in
one :class:`LinkCore`; every timer runs on its ``clock``.  The pace of the
dials is one pure policy, :func:`retry_delay` of the failed attempts in a
row, counted by :class:`Backoff`: a failed dial, a refused attach and a link
dropped right after its attach are each one failed attempt.  docs/architecture.md
has the state table.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from automat import TypeMachineBuilder, pep614
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from buildbot_furl import __version__
from buildbot_furl.errors import (
    BadRequest,
    ConnectionLost,
    DuplicateWorker,
    FurlError,
    IncompatibleProtocol,
    RemoteError,
    Revoked,
)
from buildbot_furl.furl import Furl
from buildbot_furl.protocol import PROTOCOL_VERSIONS, call
from buildbot_furl.protocol.messages import (
    AttachAnswer,
    AttachInfo,
    DrainAnswer,
    SessionProof,
)
from buildbot_furl.tubs import sever
from buildbot_furl.worker.metrics import NO_METRICS, WorkerEvents
from buildbot_furl.worker.statefile import Attachment, Drain
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

#: attach errors after which retrying cannot help until an admin acts
FATAL = (Revoked, IncompatibleProtocol)


def retry_delay(attempt: int,
                rng: Callable[[float, float], float] = random.normalvariate) -> float:
    """Seconds to wait before dialing again after ``attempt`` failed attempts
    in a row (0: none, dial at once): doubling from INITIAL_DELAY up to
    MAX_DELAY, jittered by JITTER (``rng(mean, sigma)``), never under 0.5 s."""
    if attempt <= 0:
        return 0.0
    base = min(INITIAL_DELAY * FACTOR ** min(attempt - 1, 32), MAX_DELAY)
    return min(max(0.5, rng(base, base * JITTER)), MAX_DELAY * (1 + JITTER))


def within_grace(delay: float, session: object, grace: float) -> float:
    """``delay``, but while the master keeps a session for this worker, at
    most a quarter of its grace period: a link that keeps being cut must
    still get several tries before the session (and its commands) ends."""
    if session is not None and grace > 0:
        return min(delay, max(1.0, grace / 4))
    return delay


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


class LinkHost(Protocol):
    """What the link asks of the service that owns it."""

    def report(self, ok: bool, message: str, fatal: bool) -> bool:
        """An attempt's outcome (state file, a FURL switch, start-up); True
        when it took the matter over (went back to the previous FURL): the
        failure then does not count toward giving up."""

    def write_state(self, state: Attachment, error: str | None) -> None:
        """Record ``connecting``/``attached`` and the last error (state file)."""

    def refresh_state(self) -> None:
        """Rewrite the state file as it is (the graceful stop changed)."""

    def gave_up(self, why: str) -> None:
        """maxretries failed attempts in a row: the process ends."""

    def stop_now(self) -> None:
        """A graceful stop with nothing to wait for: end the process."""


class Bot(Protocol):
    """The parts of the FurlBot the link uses."""

    commands: dict[Any, Any]

    def attach_info(self) -> dict[str, Any]: ...

    def end_commands(self, why: Exception) -> int: ...

    def keep_only(self, command_ids: set[str], why: Exception) -> int: ...


def describe_attach_error(e: Exception, attach_count: int,
                          unanswered: int = 0) -> tuple[str, bool]:
    """(one-line reason, fatal?) for an attach the master refused;
    ``unanswered``: our attaches whose link was lost before the answer."""
    reason = str(e) if isinstance(e, FurlError) else f"attach failed: {e}"
    fatal = isinstance(e, FATAL)
    if isinstance(e, DuplicateWorker):
        # another worker holds the name: fatal at start-up, not once we were
        # in, nor when an attach of ours that never got its answer may be the
        # one the master still holds
        fatal = attach_count == 0 and unanswered == 0
    return reason, fatal


@dataclass
class LinkCore:
    """All the data of the link (the machine's states hold none)."""

    clock: IReactorTime
    furl: Furl
    #: ``tub.getReference``: a Deferred of the master's login object
    dial: Callable[[str], defer.Deferred[Any]]
    bot: Bot
    host: LinkHost
    #: (failure, furl) -> (one-line reason, fatal?)
    explain_dial_failure: Callable[[Failure, Furl], tuple[str, bool]]
    #: failed attempts in a row after which the worker gives up (0: never)
    maxretries: int = 0
    rng: Callable[[float, float], float] = random.normalvariate
    #: what the metrics count (attaches, their failures); NO_METRICS: nothing
    events: WorkerEvents = NO_METRICS
    #: the machine's state, by name (for the state file, logs and tests)
    state: str = "stopped"
    failures: int = 0  # failed attempts in a row (maxretries counts these)
    backoff: Backoff = field(init=False)
    #: the dial or attach call that is out (its answer is ignored once it is not)
    pending: defer.Deferred[Any] | None = None
    login: Any = None  # the master's login object, from the dial to the cut
    retry_timer: IDelayedCall | None = None
    #: the session the master gave us, to present on a reattach
    session: SessionProof | None = None
    grace: float = 0.0  # how long the master keeps it without a connection
    name: str = ""  # as the master knows this worker (its attach answer says)
    orphan_timer: IDelayedCall | None = None
    attach_count: int = 0
    #: attaches whose link was lost before the master's answer came
    unanswered_attaches: int = 0
    drain: Drain = Drain.NONE
    #: when the dial out began (the clock's seconds): the attach's duration
    dial_started: float = 0.0

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.clock, self.rng)

    # -- helpers the transitions share -----------------------------------------
    def where(self) -> str:
        return ",".join(self.furl.hints)

    def forget_session(self, why: str) -> None:
        """The session is over: end its commands (and their processes)."""
        self.cancel_orphan_timer()
        self.session = None
        n = self.bot.end_commands(SessionEnded(why))
        if n:
            log.warn("ended {n} command(s) of a session no master has any more: {why}",
                     n=n, why=why)

    def cancel_orphan_timer(self) -> None:
        _cancel(self.orphan_timer)
        self.orphan_timer = None

    def hang_up(self, why: str) -> None:
        """Drop the dial or attach that is out, the retry timer, and the link."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()
        _cancel(self.retry_timer)
        self.retry_timer = None
        login, self.login = self.login, None
        if login is not None:
            sever(login, why)

    def wait(self, link: Link, delay: float) -> None:
        self.retry_timer = self.clock.callLater(delay, link.retry)

    def start_dial(self, link: Link) -> None:
        self.dial_started = self.clock.seconds()
        d = self.dial(str(self.furl))
        self.pending = d

        def ok(login: Any) -> None:
            if self.pending is d:
                self.pending = None
                link.dialed(login)

        def failed(f: Failure) -> None:
            if self.pending is d:
                self.pending = None
                link.dial_failed(f)

        d.addCallbacks(ok, failed)

    def start_attach(self, link: Link, login: Any) -> None:
        self.login = login
        info = AttachInfo(PROTOCOL_VERSIONS, __version__, self.bot.attach_info(), self.session)
        d = defer.Deferred.fromCoroutine(call(login, "attach", self.bot, info.to_wire()))
        self.pending = d

        def ok(raw: Any) -> None:
            if self.pending is not d:
                return
            self.pending = None
            try:
                answer = AttachAnswer.from_wire(raw)
            except Exception as e:  # noqa: BLE001 - a malformed answer is a refusal
                link.attach_refused(e)
            else:
                link.attach_ok(answer)

        def failed(f: Failure) -> None:
            if self.pending is d:
                self.pending = None
                link.attach_refused(f.value)

        d.addCallbacks(ok, failed)

    def failed_attempt(self, link: Link, message: str, fatal: bool) -> None:
        """Count a failed attempt; give up after maxretries in a row."""
        self.failures += 1
        if self.host.report(False, message, fatal):
            return
        if self.maxretries and self.failures >= self.maxretries:
            n = self.failures
            link.give_up(f"{message}; {n} failed attempt{'s' if n > 1 else ''} in a row "
                         f"(maxretries {self.maxretries})")

    def send_drain(self, link: Link) -> None:
        assert self.login is not None and self.session is not None
        defer.Deferred.fromCoroutine(self._send_drain(link, self.login, self.session))

    async def _send_drain(self, link: Link, login: Any, session: SessionProof) -> None:
        try:
            answer = DrainAnswer.from_wire(await call(login, "drain", session.to_wire()))
        except ConnectionLost:
            return  # asked again at the next attach
        except (RemoteError, BadRequest) as e:  # an older master, or a garbled answer
            link.drain_unsupported(str(e))
        else:
            link.drain_accepted(answer.running)

    def note_drain_unsupported(self, err: str) -> None:
        self.drain = Drain.UNSUPPORTED
        log.warn("graceful stop: the master cannot do it ({err}; an older furl-master?); "
                 "the worker keeps running: stop it with 'furl-worker stop' when its "
                 "work is done", err=err)
        self.host.refresh_state()

    def note_drain_accepted(self, running: int) -> None:
        self.drain = Drain.ACCEPTED
        log.info("graceful stop: the master gives this worker no new work; it stops "
                 "once the {n} running command(s) or build(s) end", n=running)
        self.host.refresh_state()


def _cancel(timer: IDelayedCall | None) -> None:
    if timer is not None and timer.active():
        timer.cancel()


class Link(Protocol):
    """The link's inputs.  The service calls ``start``, ``stop``, ``switch``
    and ``drain``; the rest come from the dial, the attach call, the link's
    loss, the drain call and the retry timer."""

    def start(self) -> None:
        "Begin dialing."

    def stop(self) -> None:
        "Hang up and stop dialing; every timer is cancelled."

    def switch(self, furl: Furl) -> None:
        "Hang up, forget the session, dial ``furl``."

    def drain(self) -> None:
        "A graceful stop was asked (the core's ``drain`` says ASKED)."

    def dialed(self, login: Any) -> None:
        "The dial reached the master's login object."

    def dial_failed(self, failure: Failure) -> None:
        "The dial failed."

    def attach_ok(self, answer: AttachAnswer) -> None:
        "The master took the attach."

    def attach_refused(self, error: BaseException) -> None:
        "The master refused the attach (or the link went during it)."

    def cut(self) -> None:
        "The attached link was lost."

    def retry(self) -> None:
        "The wait is over: dial again."

    def give_up(self, why: str) -> None:
        "maxretries failed attempts in a row."

    def drain_pending(self, send: bool) -> None:
        "Just attached with a graceful stop asked: (re)tell the master if ``send``."

    def drain_accepted(self, running: int) -> None:
        "The master will stop this worker once its work ends."

    def drain_unsupported(self, err: str) -> None:
        "The master cannot drain."


def _build() -> Callable[[LinkCore], Link]:
    m = TypeMachineBuilder(Link, LinkCore)
    stopped = m.state("stopped")
    connecting = m.state("connecting")
    attaching = m.state("attaching")
    attached = m.state("attached")
    draining = m.state("draining")
    waiting = m.state("waiting")
    gave_up = m.state("gave up")
    everywhere = (stopped, connecting, attaching, attached, draining, waiting, gave_up)
    live = (connecting, attaching, attached, draining, waiting)

    def enter(s: LinkCore, state: str) -> None:
        s.state = state

    @pep614(stopped.upon(Link.start).to(connecting))
    def start(c: Link, s: LinkCore) -> None:
        enter(s, "connecting")
        s.start_dial(c)

    for st in (*live, gave_up):
        st.upon(Link.start).loop().returns(None)

    def stop(c: Link, s: LinkCore) -> None:
        enter(s, "stopped")
        s.hang_up("the worker hung up")
        s.cancel_orphan_timer()
        s.backoff.reset()

    for st in everywhere:
        st.upon(Link.stop).to(stopped)(stop)

    def switch(c: Link, s: LinkCore, furl: Furl) -> None:
        enter(s, "connecting")
        s.hang_up("the worker switched to a new FURL")
        s.forget_session("the worker switched to a new FURL")
        s.furl = furl
        s.name = ""  # another FURL may stand for another name
        s.backoff.reset()
        s.host.write_state(Attachment.CONNECTING, None)
        s.start_dial(c)

    for st in live:
        st.upon(Link.switch).to(connecting)(switch)

    def switch_idle(c: Link, s: LinkCore, furl: Furl) -> None:
        s.forget_session("the worker switched to a new FURL")
        s.furl, s.name = furl, ""

    for st in (stopped, gave_up):
        st.upon(Link.switch).loop()(switch_idle)

    @pep614(connecting.upon(Link.dialed).to(attaching))
    def dialed(c: Link, s: LinkCore, login: Any) -> None:
        enter(s, "attaching")
        s.start_attach(c, login)

    @pep614(connecting.upon(Link.dial_failed).to(waiting))
    def dial_failed(c: Link, s: LinkCore, failure: Failure) -> None:
        enter(s, "waiting")
        reason, fatal = s.explain_dial_failure(failure, s.furl)
        s.events.dial_failed(failure.value)
        delay = within_grace(s.backoff.failed(), s.session, s.grace)
        if not (s.maxretries and s.failures + 1 >= s.maxretries):
            log.warn("{reason}; retrying in {delay:.0f} s", reason=reason, delay=delay)
        s.wait(c, delay)
        s.failed_attempt(c, reason, fatal)

    @pep614(attaching.upon(Link.attach_refused).to(waiting))
    def refused(c: Link, s: LinkCore, error: BaseException) -> None:
        # a refused attach is a failed attempt, paced like a failed dial; the
        # worker hangs up itself and waits before it dials again
        enter(s, "waiting")
        if isinstance(error, ConnectionLost):
            s.unanswered_attaches += 1
        reason, fatal = describe_attach_error(error, s.attach_count,  # type: ignore[arg-type]
                                              s.unanswered_attaches)
        s.events.attach_refused(error)
        delay = within_grace(s.backoff.refused(), s.session, s.grace)
        log.warn("{reason}; retrying in {delay:.0f} s", reason=reason, delay=delay)
        login, s.login = s.login, None
        sever(login, "attach refused")
        s.wait(c, delay)
        s.failed_attempt(c, reason, fatal)

    @pep614(attaching.upon(Link.attach_ok).to(attached))
    def attach_ok(c: Link, s: LinkCore, answer: AttachAnswer) -> None:
        enter(s, "attached")
        login = s.login
        s.backoff.attached(answer.resumed)
        s.attach_count += 1
        s.events.attached(s.clock.seconds() - s.dial_started, answer.resumed)
        s.cancel_orphan_timer()
        if answer.resumed:
            gone = s.bot.keep_only(set(answer.commands), SessionEnded(
                "the master did not know the command any more"))
            log.info("attached to the master at {where} again: session resumed, "
                     "{n} command(s) carried on{gone}", where=s.where(),
                     n=len(answer.commands), gone=f", {gone} ended" if gone else "")
        else:
            if s.session is not None or s.bot.commands:
                s.forget_session("the master does not know this worker's session (it "
                                 "restarted, or the link was down longer than its grace "
                                 "period)")
            log.info("attached to the master at {where} (protocol {proto}, master version "
                     "{mv})", where=s.where(), proto=answer.protocol,
                     mv=answer.master_version)
        s.session = answer.proof
        s.grace = answer.grace
        s.name = answer.name or s.name

        def on_cut() -> None:
            if s.login is login:
                c.cut()

        login.notifyOnDisconnect(on_cut)
        s.failures = 0
        s.host.report(True, "attached", False)
        if s.drain is Drain.ASKED or (s.drain is Drain.ACCEPTED and not answer.resumed):
            c.drain_pending(True)
        elif s.drain is Drain.ACCEPTED:
            c.drain_pending(False)  # the resumed session still drains

    def cut(c: Link, s: LinkCore) -> None:
        enter(s, "waiting")
        s.login = None
        quick = s.backoff.proving
        delay = within_grace(s.backoff.lost(), s.session, s.grace)
        s.wait(c, delay)
        if quick:
            reason = "the master dropped the link right after the attach"
            s.events.dropped()
            log.warn("{reason}; retrying in {delay:.0f} s", reason=reason, delay=delay)
            s.failed_attempt(c, reason, False)
        if s.bot.commands and s.session is not None:
            wait = s.grace + ORPHAN_MARGIN
            log.info("lost the connection to the master; reconnecting (its session, with "
                     "{n} running command(s), is kept for up to {wait:.0f} s)",
                     n=len(s.bot.commands), wait=wait)
            s.orphan_timer = s.clock.callLater(
                wait, s.forget_session, f"no master took the session back within {wait:.0f} s")
        else:
            log.info("lost the connection to the master; reconnecting")
        s.host.write_state(Attachment.CONNECTING, "lost the connection to the master")

    attached.upon(Link.cut).to(waiting)(cut)
    draining.upon(Link.cut).to(waiting)(cut)

    @pep614(waiting.upon(Link.retry).to(connecting))
    def retry(c: Link, s: LinkCore) -> None:
        enter(s, "connecting")
        s.retry_timer = None
        s.start_dial(c)

    @pep614(waiting.upon(Link.give_up).to(gave_up))
    def give_up(c: Link, s: LinkCore, why: str) -> None:
        enter(s, "gave up")
        s.hang_up("the worker gave up")
        s.host.gave_up(why)

    # -- graceful stop -------------------------------------------------------------
    @pep614(attached.upon(Link.drain).to(draining))
    def drain_now(c: Link, s: LinkCore) -> None:
        enter(s, "draining")
        s.send_drain(c)

    def drain_later(c: Link, s: LinkCore) -> None:
        if not s.bot.commands:
            log.info("graceful stop: not attached and nothing runs; stopping now")
            s.host.stop_now()
        else:
            log.info("graceful stop: {n} command(s) run; asking the master once attached "
                     "again", n=len(s.bot.commands))

    for st in (stopped, connecting, attaching, waiting, gave_up):
        st.upon(Link.drain).loop()(drain_later)
    draining.upon(Link.drain).loop().returns(None)

    @pep614(attached.upon(Link.drain_pending).to(draining))
    def drain_pending(c: Link, s: LinkCore, send: bool) -> None:
        enter(s, "draining")
        if send:
            s.send_drain(c)

    @pep614(draining.upon(Link.drain_unsupported).to(attached))
    def unsupported(c: Link, s: LinkCore, err: str) -> None:
        enter(s, "attached")
        s.note_drain_unsupported(err)

    def unsupported_late(c: Link, s: LinkCore, err: str) -> None:
        s.note_drain_unsupported(err)

    def accepted(c: Link, s: LinkCore, running: int) -> None:
        s.note_drain_accepted(running)

    draining.upon(Link.drain_accepted).loop()(accepted)
    # an answer that comes after the link changed still tells what the master said
    for st in (stopped, connecting, attaching, attached, waiting, gave_up):
        st.upon(Link.drain_accepted).loop()(accepted)
        st.upon(Link.drain_unsupported).loop()(unsupported_late)

    return m.build()


#: LinkCore -> Link: a new machine, in ``stopped``
make_link = _build()
