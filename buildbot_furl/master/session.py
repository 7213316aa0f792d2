"""One worker's session: it outlives a TCP connection for a grace period.

A session starts when a worker attaches.  When its connection drops, the
session is *detached*: its running commands go on (on the worker) and
nothing above it is told, for up to ``grace`` seconds.  If the worker
reattaches in that time and proves it holds the session (the secret it was
given at attach, compared by digest), the session is *rebound* to the new
connection and every rebind listener (e.g. a Buildbot Connection resuming
its commands) is run.  Otherwise, or when it is dropped on purpose
(revocation, shutdown), the session *ends*, and only then do its end
listeners hear of it: for Buildbot, the worker is lost.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from buildbot_furl.errors import ConnectionLost
from buildbot_furl.protocol import call
from buildbot_furl.master.session_states import (
    ATTACHED,
    DRAINING,
    ENDED,
    SessionCore,
    SessionStates,
)
from buildbot_furl.protocol.messages import AttachInfo, SessionProof
from buildbot_furl.tubs import sever

log = Logger()


#: protocol violations after which a worker is cut off: within one command
#: (its updates, its file transfer), or outside any command, each forgotten
#: VIOLATION_MEMORY seconds after it happened
MAX_VIOLATIONS = 10

#: why a session ends, as the metrics count it (a bounded set: the log says more)
END_REASONS = frozenset({
    "connection_lost",  # its link dropped and it had no grace
    "grace_expired",  # no reattach within the grace
    "worker_stopped",  # the worker said it stops
    "revoked", "rotated",  # its FURL left workers.furls, or changed
    "replaced",  # a new connection of the worker, the old one silent
    "restarted",  # the worker attached afresh, without its session
    "refused",  # the consumer (Buildbot) refused the attach
    "violations",  # cut off after too many protocol violations
    "call_timeout",  # a call went unanswered too long
    "shutdown",  # the master stops
    "dropped", "other",
})
VIOLATION_MEMORY = 600.0
#: seconds a worker has to answer a call (start a command, set builders, ...)
DEFAULT_CALL_TIMEOUT = 120.0


def peer_of(rref: Any) -> str:
    """``host:port`` of the far end of a RemoteReference, or '?'."""
    try:
        p = rref.getPeer()
        host = getattr(p, "host", None)
        return f"{host}:{p.port}" if host is not None else str(p)
    except Exception:
        return "?"


class Strikes:
    """The protocol violations counted in one scope (a command, or the
    session outside its commands); each is forgotten ``memory`` seconds
    after it happened, so that a long-lived worker never adds up to a
    cut-off out of rare, unrelated mishaps."""

    def __init__(self, clock: IReactorTime, memory: float = VIOLATION_MEMORY) -> None:
        self.clock = clock
        self.memory = memory
        self._times: deque[float] = deque()

    def add(self) -> int:
        """Count one more; how many are remembered now."""
        now = self.clock.seconds()
        self._times.append(now)
        while self._times and self._times[0] <= now - self.memory:
            self._times.popleft()
        return len(self._times)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class WorkerSession:
    """A worker's session; ``bot`` is the worker's current reference.  Its
    life (attached, detached in grace, draining, ended) is a state machine,
    :mod:`~buildbot_furl.master.session_states`; this object carries out what
    each transition means to the rest of the master."""

    def __init__(self, name: str, bot: Any, info: AttachInfo, protocol: int, peer: str,
                 grace: float = 0.0, call_timeout: float = DEFAULT_CALL_TIMEOUT,
                 clock: IReactorTime | None = None, metrics: Any = None) -> None:
        self.name = name
        #: what counts the session's events (master/metrics.py); None: nothing
        self.metrics = metrics
        self.bot = bot
        self.info = info
        self.protocol = protocol
        self.peer = peer
        #: seconds the worker has to answer a call before it is cut off
        self.call_timeout = call_timeout
        self.session_id = secrets.token_hex(16)
        #: what proves the session on a reattach; handed to the worker once,
        #: kept here only as a digest, never logged
        self.secret = secrets.token_hex(32)
        self._secret_digest = _digest(self.secret)
        #: the clock of every timer here (grace, violations' memory)
        self.clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self.connected_at = self.clock.seconds()
        self._core = SessionCore(self.clock, float(grace), self._grace_over)
        self._life = SessionStates(self._core)
        self._callbacks: list[Callable[[], None]] = []
        self._rebind_listeners: list[Callable[[], Awaitable[list[str]]]] = []
        self._link_listeners: list[Callable[[bool], None]] = []
        self._attached_waiters: list[defer.Deferred[None]] = []
        self.violations = 0  # all of them, for the record
        #: why the session ended, one of END_REASONS (None while it lives)
        self.end_reason: str | None = None
        self._strikes = Strikes(self.clock)  # those outside any command
        bot.notifyOnDisconnect(self._link_lost, bot)

    # -- what the state says ----------------------------------------------------
    @property
    def state(self) -> str:
        """attached, detached, draining, "draining, detached" or ended."""
        return self._life.state()

    @property
    def gone(self) -> bool:
        """The session has ended."""
        return self._life.state() == ENDED

    @property
    def attached(self) -> bool:
        """The session has a connection now."""
        return self._life.state() in (ATTACHED, DRAINING)

    @property
    def grace(self) -> float:
        """Seconds the session outlives a lost connection."""
        return self._core.grace

    @property
    def detached_at(self) -> float | None:
        """When the connection was lost (the clock's seconds), while it is."""
        return self._core.detached_at

    @property
    def draining(self) -> str | None:
        """Who asked for a graceful stop (no new work; stop when idle), or None."""
        return self._core.drained_by

    def drain(self, who: str) -> bool:
        """A graceful stop asked by ``who``; whether it is the first ask."""
        return self._life.drain(who)

    def grant_grace(self, grace: float) -> None:
        """From now on the session outlives a lost connection by ``grace``
        seconds (given once the worker is handed the secret to resume it)."""
        self._core.grace = float(grace)

    def hand_out_secret(self) -> str:
        """The secret, for the attach answer only (then forgotten here)."""
        secret, self.secret = self.secret, ""
        return secret

    @property
    def worker_info(self) -> dict[str, Any]:
        """What the worker said of itself (buildbot-worker's getWorkerInfo
        less its environment)."""
        return self.info.worker_info

    def proves(self, proof: SessionProof | None) -> bool:
        """Whether ``proof`` (from a reattaching, leaving or draining worker)
        is this session's."""
        if proof is None or self.gone:
            return False
        return (hmac.compare_digest(proof.session, self.session_id)
                and hmac.compare_digest(_digest(proof.secret), self._secret_digest))

    # -- listeners --------------------------------------------------------------
    def add_disconnect_callback(self, cb: Callable[[], None]) -> Callable[[], None]:
        """``cb()`` when the session ends (not when a connection merely drops)."""
        self._callbacks.append(cb)
        return cb

    def remove_disconnect_callback(self, cb: Callable[[], None]) -> None:
        if cb in self._callbacks:
            self._callbacks.remove(cb)

    def add_rebind_listener(self, cb: Callable[[], Awaitable[list[str]]]) -> None:
        """``await cb()`` when the session moves to a new connection; it
        answers the ids of the commands it carried over."""
        self._rebind_listeners.append(cb)

    def add_link_listener(self, cb: Callable[[bool], None]) -> Callable[[bool], None]:
        """``cb(up)`` when the connection drops (False) and when it is back (True)."""
        self._link_listeners.append(cb)
        return cb

    def remove_link_listener(self, cb: Callable[[bool], None]) -> None:
        if cb in self._link_listeners:
            self._link_listeners.remove(cb)

    def _tell_link(self, up: bool) -> None:
        for cb in list(self._link_listeners):
            try:
                cb(up)
            except Exception:
                log.failure("link listener of worker {name} failed", name=self.name)

    def wait_attached(self) -> defer.Deferred[None]:
        """Fires when the session has a connection (at once if it has one);
        fails with ConnectionLost if it ends first."""
        if self.gone:
            return defer.fail(ConnectionLost(f"worker {self.name!r} is gone"))
        if self.attached:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._attached_waiters.append(d)
        return d

    def violation(self, what: str, strikes: Strikes | None = None,
                  kind: str | None = None) -> None:
        """The worker broke the protocol (the call was refused with a typed
        error): log it, and cut the worker off once MAX_VIOLATIONS are
        remembered in ``strikes`` (a command's; by default the session's own)."""
        if self.gone:
            return
        self.violations += 1
        if self.metrics is not None:
            self.metrics.violation(kind or ("command" if strikes is not None else "session"))
        count = (strikes if strikes is not None else self._strikes).add()
        log.warn("worker {name}: refused {what}", name=self.name, what=what)
        if count >= MAX_VIOLATIONS:
            self.drop(f"cut off after {count} protocol violations", "violations")

    def command_blame(self) -> Callable[[str], None]:
        """What reports one command's violations: they are counted apart
        from every other command's."""
        strikes = Strikes(self.clock)
        return lambda what: self.violation(what, strikes)

    def uses(self, broker: Any) -> bool:
        """Whether the worker's current connection is ``broker``."""
        return getattr(getattr(self.bot, "tracker", None), "broker", None) is broker

    # -- the connection comes and goes -------------------------------------------
    def call_failed(self, bot: Any) -> None:
        """A call on ``bot`` failed because its connection is gone: the
        session is detached now (foolscap tells its watchers a moment later)."""
        self._link_lost(bot)

    def _link_lost(self, bot: Any) -> None:
        if bot is not self.bot or not self.attached:
            return  # an old connection, or the session is detached or ended
        if self.grace <= 0:
            self.end("connection lost", "connection_lost")
            return
        self._life.link_lost()
        log.info("worker {name}: connection from {peer} lost; keeping its session for "
                 "{grace:.0f} s", name=self.name, peer=self.peer, grace=self.grace)
        self._tell_link(False)

    def _grace_over(self) -> None:
        if self.metrics is not None:
            self.metrics.left_grace(self.grace, resumed=False)
        self.end(f"no reattach within {self.grace:.0f} s", "grace_expired")

    async def rebind(self, bot: Any, peer: str) -> list[str]:
        """Move the session to the worker's new connection (it proved the
        session): the old connection, if any is left, is dropped.  Answers
        the ids of the commands carried over."""
        old = self.bot
        self.bot = bot
        self.peer = peer
        link_was_up = self.attached
        if self.metrics is not None and self.detached_at is not None:
            self.metrics.left_grace(self.clock.seconds() - self.detached_at, resumed=True)
        self._life.reattached()
        # a worker that noticed the cut before the master did is back already:
        # to the layer above that is a lost link too (and back at once)
        was_detached = not link_was_up or old is not bot
        if link_was_up and old is not bot:
            self._tell_link(False)
        if old is not bot:
            sever(old, f"worker {self.name} reattached elsewhere")
        bot.notifyOnDisconnect(self._link_lost, bot)
        log.info("worker {name}: session resumed from {peer}", name=self.name, peer=peer)
        carried: list[str] = []
        for cb in list(self._rebind_listeners):
            try:
                carried += await cb()
            except ConnectionLost:
                raise  # the new connection is gone too: the worker comes again
            except Exception:
                log.failure("rebind listener of worker {name} failed", name=self.name)
        waiters, self._attached_waiters = self._attached_waiters, []
        for d in waiters:
            d.callback(None)
        if was_detached:
            self._tell_link(True)
        return carried

    def end(self, why: str, reason: str = "other") -> None:
        """End the session: tell everyone listening (idempotent).  ``why`` is
        for the log; ``reason``, one of END_REASONS, for the metrics."""
        if not self._life.end():
            return
        self.end_reason = reason if reason in END_REASONS else "other"
        if self.metrics is not None:
            self.metrics.session_ended(self.end_reason)
        log.info("worker {name}: session ended ({why})", name=self.name, why=why)
        waiters, self._attached_waiters = self._attached_waiters, []
        for d in waiters:
            d.errback(ConnectionLost(f"worker {self.name!r} is gone ({why})"))
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.failure("disconnect callback of worker {name} failed", name=self.name)

    def drop(self, why: str, reason: str = "dropped") -> None:
        """Close the connection and end the session now, grace or not
        (revocation, a refused attach, shutdown).  Idempotent."""
        if self.gone:
            sever(self.bot, why)  # ended without a cut (it hung up itself): cut it now
            return
        log.info("dropping connection of worker {name} ({why})", name=self.name, why=why)
        sever(self.bot, why)
        self.end(why, reason)

    async def call_through_cuts(self, method: str, *args: Any) -> Any:
        """Call the worker's ``method``; if the link is cut first, again once
        the session has a connection again (a resumed session lost the call
        with the old link), until it answers or the session ends."""
        while True:
            await self.wait_attached()
            bot = self.bot
            try:
                return await call(bot, method, *args)
            except ConnectionLost:
                if self.gone:
                    raise
                if self.bot is bot and self.attached:
                    # lost, yet still attached on that link as far as we know:
                    # wait until the session notices the cut
                    await self._link_change()

    def _link_change(self) -> defer.Deferred[None]:
        """Fires when the link drops or comes back, or the session ends."""
        d: defer.Deferred[None] = defer.Deferred()

        def changed(up: bool = False) -> None:
            self.remove_link_listener(changed)
            self.remove_disconnect_callback(changed)
            if not d.called:
                d.callback(None)

        self.add_link_listener(changed)
        self.add_disconnect_callback(changed)
        return d
