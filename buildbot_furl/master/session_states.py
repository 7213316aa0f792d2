"""The life of a worker's session on the master, as a state machine.

=====================  =====================  =====================  ===========================
state                  ``link_lost()``        ``reattached()``       ``drain(who)``
=====================  =====================  =====================  ===========================
attached               detached (grace timer) attached               draining (True)
detached               detached               attached (cancel)      draining, detached (True)
draining               draining, detached     draining               draining (False)
draining, detached     draining, detached     draining (cancel)      draining, detached (False)
ended                  ended                  ended                  ended (False)
=====================  =====================  =====================  ===========================

``end()`` takes every state but *ended* to *ended* (cancelling a grace timer)
and answers True; on *ended* it answers False.  Entering a detached state from an
attached one starts the grace timer, which calls ``on_grace_over`` when it
fires (the session then ends itself); leaving it cancels the timer.

The machine only keeps the state and its timer; what a transition means to
others (logging, listeners, waiters) is done by
:class:`~buildbot_furl.master.session.WorkerSession` after the input returns,
so that no listener ever runs inside a transition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from automat import TypeMachineBuilder
from twisted.internet.interfaces import IDelayedCall, IReactorTime

ATTACHED, DETACHED, DRAINING, DRAINING_DETACHED, ENDED = (
    "attached", "detached", "draining", "draining, detached", "ended")


class SessionLife(Protocol):
    """The inputs of a session's life."""

    def link_lost(self) -> None:
        """The worker's connection is gone; the session waits ``grace`` s
        (the session decides beforehand whether to wait or to end)."""

    def reattached(self) -> bool:
        """The worker proved the session on a new connection; whether the
        session was detached (or its old connection not yet known lost)."""

    def drain(self, who: str) -> bool:
        """A graceful stop asked by ``who``; whether it is the first ask."""

    def end(self) -> bool:
        """The session ends; whether it ended now (False: it had already)."""

    def state(self) -> str:
        """The state's name (one of the constants above)."""


@dataclasses.dataclass
class SessionCore:
    """What the session's states share."""

    clock: IReactorTime
    grace: float
    on_grace_over: Callable[[], None]
    #: who asked for the graceful stop, once one was asked
    drained_by: str | None = None
    #: when the link was lost (the clock's seconds), while detached
    detached_at: float | None = None
    #: the end of the grace period, while detached
    grace_timer: IDelayedCall | None = None

    def start_grace(self) -> None:
        self.detached_at = self.clock.seconds()
        self.grace_timer = self.clock.callLater(self.grace, self.on_grace_over)

    def stop_grace(self) -> None:
        if self.grace_timer is not None and self.grace_timer.active():
            self.grace_timer.cancel()
        self.grace_timer = None
        self.detached_at = None


def _machine() -> Callable[[SessionCore], SessionLife]:
    m = TypeMachineBuilder(SessionLife, SessionCore)
    attached = m.state(ATTACHED)
    draining = m.state(DRAINING)
    ended = m.state(ENDED)
    detached = m.state(DETACHED)
    draining_detached = m.state(DRAINING_DETACHED)

    for name, state in ((ATTACHED, attached), (DRAINING, draining), (ENDED, ended),
                        (DETACHED, detached), (DRAINING_DETACHED, draining_detached)):
        state.upon(SessionLife.state).loop().returns(name)

    @attached.upon(SessionLife.link_lost).to(detached)
    @draining.upon(SessionLife.link_lost).to(draining_detached)
    def lost(life: SessionLife, core: SessionCore) -> None:
        core.start_grace()

    for state in (detached, draining_detached, ended):
        state.upon(SessionLife.link_lost).loop().returns(None)

    # a worker that noticed a cut before the master did comes back while the
    # session still looks attached: to the layer above that is a lost link too
    attached.upon(SessionLife.reattached).loop().returns(True)
    draining.upon(SessionLife.reattached).loop().returns(True)
    ended.upon(SessionLife.reattached).loop().returns(False)

    @detached.upon(SessionLife.reattached).to(attached)
    @draining_detached.upon(SessionLife.reattached).to(draining)
    def back(life: SessionLife, core: SessionCore) -> bool:
        core.stop_grace()
        return True

    @attached.upon(SessionLife.drain).to(draining)
    @detached.upon(SessionLife.drain).to(draining_detached)  # its grace goes on
    def first_drain(life: SessionLife, core: SessionCore, who: str) -> bool:
        core.drained_by = who
        return True

    for state in (draining, draining_detached, ended):
        state.upon(SessionLife.drain).loop().returns(False)

    @attached.upon(SessionLife.end).to(ended)
    @draining.upon(SessionLife.end).to(ended)
    @detached.upon(SessionLife.end).to(ended)
    @draining_detached.upon(SessionLife.end).to(ended)
    def finish(life: SessionLife, core: SessionCore) -> bool:
        core.stop_grace()
        return True

    ended.upon(SessionLife.end).loop().returns(False)
    return m.build()


#: ``SessionStates(core)`` makes a session's life, starting attached
SessionStates = _machine()
