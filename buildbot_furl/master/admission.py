"""Admission of connections to the workers' port: no stranger holds the
master's file descriptors for long, and no flood shuts a worker out.

Every connection to the workers' port is *pending* from its accept until
its worker's attach starts (the registry says so); an attached connection
is not pending and counts for nothing here.  Pending connections are bounded:

* **per address**: ``per_address`` of them at a time go on to TLS and a
  lookup; more wait unread, in order, and go on as places free.  A place is
  freed when its connection names a valid FURL, or when TLS shows a client
  Tub that attached here before (a worker reconnecting), or when it ends.
  An address past ``refusal_limit`` (master/refusals.py) gets
  :data:`OVER_LIMIT_PER_ADDRESS` places and at most
  :data:`OVER_LIMIT_WAITING` waiting; past that its connections are closed
  before TLS.  Waiting is never a reason to close: hundreds of workers on
  one host (a restart's redial burst) all get in, in turn.
* **in all**: at most ``max_pending``, derived by default from the process's
  ``RLIMIT_NOFILE`` so that the descriptors the master needs for anything
  else (its attached workers, the admin's loopback listener, the log,
  workers.furls, Buildbot's database) are never taken by strangers.  Past
  it, a new connection *evicts* the oldest not-yet-named connection of the
  address that has the most of them, closed before TLS if it was still
  waiting: a flood that came first cannot lock later workers out (closing the
  newest would), and a flood from one address pushes out its own.  Only when
  every pending connection has named a valid FURL is the new one closed.
* **in time**: a connection that goes on to TLS has ``attach_timeout``
  seconds to start an attach, or it is aborted (foolscap itself would wait
  120 s); a failed attach gets the same again.

Closings are counted (``status --json``) and logged rationed: the first of
each kind in an interval is a line, the rest one summary line per interval.
"""

from __future__ import annotations

import collections
import dataclasses
import resource
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

#: seconds a connection has, once it goes on to TLS, to start an attach
ATTACH_TIMEOUT = 15.0
#: connections of one address on their way to a lookup at once (more wait)
PER_ADDRESS = 256
#: the same for an address past refusal_limit, and how many more of its may wait
OVER_LIMIT_PER_ADDRESS = 8
OVER_LIMIT_WAITING = 64
#: descriptors kept for everything but pending connections and attached workers
FD_RESERVE = 256
#: max_pending by default: half of what the reserve leaves, at most this many
MAX_PENDING_CEILING = 4096
#: pending connections allowed even when attached workers fill the budget
MIN_PENDING = 16

#: what the gate makes of a new connection
GO, WAIT, CLOSE = "go", "wait", "close"

#: states of a pending connection: waiting unread, on its way (holds a place of
#: its address), named a valid FURL or known Tub (place freed), attach running
HELD, GOING, NAMED, ATTACHING = "held", "going", "named", "attaching"


class Conn(Protocol):
    """What the gate may do to a connection it admits or holds."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def abort(self) -> None: ...


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (a large number if unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def default_max_pending(nofile: int) -> int:
    """Half the descriptors the reserve leaves (the other half for attached
    workers), at most MAX_PENDING_CEILING: 384 at 1 024, 4 096 at 65 536."""
    return max(MIN_PENDING, min(MAX_PENDING_CEILING, (nofile - FD_RESERVE) // 2))


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """The admission settings of furl-master.conf (0: derived, see above)."""

    max_pending: int = 0
    per_address: int = PER_ADDRESS
    attach_timeout: float = ATTACH_TIMEOUT


@dataclasses.dataclass(eq=False)
class _Pending:
    host: str
    key: Any
    conn: Conn
    since: float
    state: str = HELD
    timer: IDelayedCall | None = None


@dataclasses.dataclass
class _Host:
    going: dict[Any, _Pending] = dataclasses.field(default_factory=dict)
    held: collections.OrderedDict[Any, _Pending] = dataclasses.field(
        default_factory=collections.OrderedDict)

    def anonymous(self) -> int:
        return len(self.going) + len(self.held)


class Admission:
    """Pending connections of the workers' port, bounded per address, in all
    and in time (see the module's docstring)."""

    def __init__(self, clock: IReactorTime, over: Callable[[str], bool],
                 settings: GateSettings = GateSettings(), nofile: int | None = None) -> None:
        self.clock = clock
        self.over = over  # whether an address is past refusal_limit now
        self.nofile = fd_limit() if nofile is None else nofile
        self.max_pending = settings.max_pending or default_max_pending(self.nofile)
        self.per_address = settings.per_address
        self.timeout = settings.attach_timeout
        self._pending: dict[Any, _Pending] = {}
        self._hosts: dict[str, _Host] = {}
        self._attached: set[Any] = set()
        # counters: since the start, and in the current interval (for the log)
        self.timed_out = self.evicted = self.full = 0
        self._interval: collections.Counter[str] = collections.Counter()
        self._by_host: collections.Counter[str] = collections.Counter()

    # -- bounds -------------------------------------------------------------------
    def cap(self) -> int:
        """Pending connections allowed now: max_pending, less what the attached
        workers take of the descriptors (that never below MIN_PENDING)."""
        room = self.nofile - FD_RESERVE - len(self._attached)
        return min(self.max_pending, max(MIN_PENDING, room))

    def _places(self, host: str) -> tuple[int, int | None]:
        """(places, waiting allowed or None for no bound) of ``host`` now."""
        if self.over(host):
            return OVER_LIMIT_PER_ADDRESS, OVER_LIMIT_WAITING
        return self.per_address, None

    # -- a new connection -----------------------------------------------------------
    def admit(self, host: str, key: Any, conn: Conn) -> str:
        """A new connection from ``host`` (``key``: unique per connection):
        GO on to TLS, WAIT (held unread: resumed later), or CLOSE it now."""
        places, waiting = self._places(host)
        h = self._hosts.get(host)
        if waiting is not None and h is not None and len(h.held) >= waiting \
                and len(h.going) >= places:
            return CLOSE  # an over-limit address's queue is full (refusals counts it)
        if len(self._pending) >= self.cap() and not self._evict():
            self.full += 1
            self._note("full", host)
            return CLOSE
        h = self._hosts.setdefault(host, _Host())
        p = _Pending(host, key, conn, self.clock.seconds())
        self._pending[key] = p
        if len(h.going) < places and not h.held:
            self._go(h, p)
            return GO
        h.held[key] = p
        return WAIT

    def _go(self, h: _Host, p: _Pending) -> None:
        p.state = GOING
        h.going[p.key] = p
        self._arm(p)

    def _arm(self, p: _Pending) -> None:
        self._disarm(p)
        p.timer = self.clock.callLater(self.timeout, self._expire, p)

    @staticmethod
    def _disarm(p: _Pending) -> None:
        if p.timer is not None and p.timer.active():
            p.timer.cancel()
        p.timer = None

    def _evict(self) -> bool:
        """Close the oldest not-yet-named connection of the address with the
        most of them; False if there is none (all pending ones named a FURL)."""
        busiest = max(self._hosts.items(), key=lambda kv: kv[1].anonymous(), default=None)
        if busiest is None or not busiest[1].anonymous():
            return False
        host, h = busiest
        oldest = min([*h.going.values(), *h.held.values()], key=lambda p: p.since)
        oldest.conn.abort()
        self._drop(oldest)
        self.evicted += 1
        self._note("evicted", host)
        return True

    def _expire(self, p: _Pending) -> None:
        p.timer = None
        if self._pending.get(p.key) is not p:
            return
        p.conn.abort()
        self._drop(p)
        self.timed_out += 1
        self._note("timed_out", p.host)

    # -- what becomes of it --------------------------------------------------------
    def named(self, key: Any) -> None:
        """``key`` named a valid FURL, or TLS showed a Tub that attached here
        before: it frees its address's place (its timer keeps running)."""
        p = self._pending.get(key)
        if p is None or p.state not in (HELD, GOING):
            return
        h = self._hosts[p.host]
        h.going.pop(key, None)
        h.held.pop(key, None)
        p.state = NAMED
        if p.timer is None:
            self._arm(p)
        self._next(p.host)

    def attaching(self, key: Any) -> None:
        """An attach started on ``key``: its own steps bound it from here."""
        p = self._pending.get(key)
        if p is not None:
            self.named(key)
            p.state = ATTACHING
            self._disarm(p)

    def attach_done(self, key: Any, ok: bool) -> None:
        """The attach on ``key`` ended: attached (no longer pending), or not
        (``attach_timeout`` again for another try on the same connection)."""
        p = self._pending.get(key)
        if p is None:
            return
        if ok:
            del self._pending[key]
            self._attached.add(key)
        else:
            p.state = NAMED
            self._arm(p)

    def closed(self, key: Any) -> None:
        """``key`` ended, or is being cut: it holds nothing any more."""
        self._attached.discard(key)
        p = self._pending.get(key)
        if p is not None:
            self._drop(p)

    def _drop(self, p: _Pending) -> None:
        del self._pending[p.key]
        self._disarm(p)
        h = self._hosts.get(p.host)
        if h is None:
            return
        freed = h.going.pop(p.key, None) is not None
        h.held.pop(p.key, None)
        if freed:
            self._next(p.host)
        if not h.going and not h.held:
            del self._hosts[p.host]

    def _next(self, host: str) -> None:
        """Let held connections of ``host`` go on, in order, as places free."""
        h = self._hosts.get(host)
        if h is None:
            return
        places, _ = self._places(host)
        while h.held and len(h.going) < places:
            _, p = h.held.popitem(last=False)
            self._go(h, p)
            p.conn.resume()

    def next_all(self) -> None:
        """A new interval: addresses no longer over the limit get their places."""
        for host in list(self._hosts):
            self._next(host)

    # -- the log and the counters ---------------------------------------------------
    def _note(self, kind: str, host: str) -> None:
        self._interval[kind] += 1
        if len(self._by_host) < 4096 or host in self._by_host:
            self._by_host[host] += 1
        if self._interval[kind] > 1:
            return
        if kind == "timed_out":
            log.info("closed a connection from {peer} that did not start an attach within "
                     "{t:.0f} s; more such are summed up once a minute", peer=host,
                     t=self.timeout)
        else:
            log.info("closed a connection from {peer} before TLS: {n} connections to the "
                     "workers' port were pending (max_pending); more such are summed up "
                     "once a minute", peer=host, n=self.cap())

    def summarize(self, seconds: float) -> None:
        """One line for this interval's closings past the first, then a new interval."""
        n = self._interval
        if sum(n.values()) > 1:
            (top, most), = self._by_host.most_common(1)
            log.info("closed {t} connection(s) that did not start an attach within {s:.0f} s "
                     "and {e} before TLS past max_pending ({c} now) in the last {i:.0f} s, "
                     "from {a} address(es), most from {top} ({most})",
                     t=n["timed_out"], s=self.timeout, e=n["evicted"] + n["full"],
                     c=self.cap(), i=seconds, a=len(self._by_host), top=top, most=most)
        self._interval.clear()
        self._by_host.clear()

    def to_wire(self) -> dict[str, Any]:
        held = sum(len(h.held) for h in self._hosts.values())
        return {
            "pending": len(self._pending),
            "held": held,
            "attached": len(self._attached),
            "max_pending": self.cap(),
            "per_address": self.per_address,
            "attach_timeout": self.timeout,
            "fd_limit": self.nofile,
            "timed_out": self.timed_out,
            "evicted": self.evicted + self.full,
        }
