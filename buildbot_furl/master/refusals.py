"""Refused attach attempts: counted, summed up in the log, and made to cost,
without ever shutting out a worker that holds a valid FURL.

Anyone who can reach the master's port can ask for FURLs it does not
serve.  Each refusal is counted per peer address; the first from an
address is logged at once, the rest as one summary line per address per
interval, and at most :data:`MAX_LINES` lines per interval in all, so the
log grows by a few KB a minute whatever the rate.  A connection that asks
for :data:`~buildbot_furl.tubs.REFUSALS_PER_CONNECTION` unknown names is hung up.

Past ``limit`` refusals in an interval an address is *over the limit*
until the interval ends.  Before TLS nothing tells a guesser from a worker
behind the same address (a NAT, a shared build host), so the address is not
shut out: its connections go on to TLS, :data:`PENDING_PER_ADDRESS` at a
time, the rest held unread in order (up to :data:`WAITING_PER_ADDRESS`; past
that they are closed before TLS), and each, like every connection, must
start an attach within ``attach_timeout`` s (master/admission.py, which
admits every connection).  After TLS a lookup of a valid name is always
served; an unknown one from a Tub that never attached here is not answered
at all: the connection is cut at once (counted, not logged).  So a guesser
gets no more answers, pays a TLS handshake per guess and holds few of the
master's sockets, while a worker waits its turn behind at most a few
handshakes (figures in docs/security.md).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from buildbot_furl.master.admission import (  # noqa: F401 - GO, WAIT, Conn: the gate's API
    CLOSE,
    GO,
    OVER_LIMIT_PER_ADDRESS,
    OVER_LIMIT_WAITING,
    WAIT,
    Admission,
    Conn,
    GateSettings,
)
from buildbot_furl.protocol.messages import GateCounts, RefusalCounts, RefusedAddress

log = Logger()

INTERVAL = 60.0  # seconds per summary
DEFAULT_LIMIT = 100  # refusals per address per interval before it is over the limit
MAX_LINES = 20  # log lines per interval for refusals, in all
MAX_PEERS = 4096  # addresses remembered
#: connections of an over-limit address on their way to a lookup, and more of
#: them held unread, in order (past that: closed before TLS)
PENDING_PER_ADDRESS = OVER_LIMIT_PER_ADDRESS
WAITING_PER_ADDRESS = OVER_LIMIT_WAITING
KNOWN_TUBS = 4096  # client TubIDs that attached here, remembered


@dataclasses.dataclass
class _Peer:
    total: int = 0
    interval: int = 0  # refusals in the current interval
    dropped: int = 0  # connections closed before TLS in the current interval
    first: float = 0.0
    last: float = 0.0
    revoked: str = ""  # a worker whose old FURL this address used
    cut: int = 0  # unknown names not answered (over the limit) in this interval


class Refusals:
    """Counts refused attach attempts per peer address and rations the log."""

    def __init__(self, limit: int = DEFAULT_LIMIT, interval: float = INTERVAL,
                 clock: IReactorTime = reactor,  # type: ignore[assignment]
                 gate: GateSettings = GateSettings(), nofile: int | None = None) -> None:
        self.limit = limit
        self.interval = interval
        self.clock = clock
        self.total = 0
        self.dropped_total = 0
        self.cut_total = 0
        self._peers: dict[str, _Peer] = {}
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lines = 0  # lines logged in this interval
        self._unlogged = 0  # first refusals from new addresses not logged (over MAX_LINES)
        self._loop: LoopingCall | None = None
        #: every connection to the workers' port until it attaches
        self.admission = Admission(clock, lambda host: self._over(self._peers.get(host)),
                                   gate, nofile)

    def start(self) -> None:
        self._loop = LoopingCall(self.summarize)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.summarize()

    def _line(self) -> bool:
        """Whether one more line may be logged in this interval."""
        if self._lines >= MAX_LINES:
            return False
        self._lines += 1
        return True

    def _over(self, peer: _Peer | None) -> bool:
        return peer is not None and self.limit > 0 and peer.interval >= self.limit

    def refused(self, host: str, revoked_worker: str | None = None, tubid: str = "",
                key: Any = None) -> bool:
        """A connection from ``host`` (client Tub ``tubid``) asked for a name
        we do not serve.  True: answer it (no such name); False: the address
        is over the limit and the Tub never attached here: do not answer, cut
        the connection (counted, not logged)."""
        self.total += 1
        now = self.clock.seconds()
        peer = self._peers.get(host)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                self._forget_oldest()
            peer = self._peers[host] = _Peer(first=now)
        over = self._over(peer)
        peer.total += 1
        peer.interval += 1
        peer.last = now
        if revoked_worker:
            peer.revoked = revoked_worker
        if over and tubid not in self._known:
            peer.cut += 1
            self.cut_total += 1
            if key is not None:
                self.admission.closed(key)  # it is being cut: its place is free
            return False
        if peer.interval == 1:
            if not self._line():
                self._unlogged += 1
            elif revoked_worker:
                log.info("refused attach from {peer} with the revoked or rotated FURL of "
                         "worker {name}; more from it are summed up every {n:.0f} s",
                         peer=host, name=revoked_worker, n=self.interval)
            else:
                log.info("refused attach from {peer}: unknown FURL (wrong secret); more "
                         "from it are summed up every {n:.0f} s", peer=host, n=self.interval)
        return True

    # -- admission of connections (master/admission.py) -------------------------
    def admit(self, host: str, key: Any, conn: Conn) -> str:
        """A new connection from ``host`` (``key``: unique per connection):
        GO on to TLS, WAIT (held unread: the gate resumes it later), or
        CLOSE it now (see master/admission.py)."""
        verdict = self.admission.admit(host, key, conn)
        peer = self._peers.get(host)
        if verdict == CLOSE and self._over(peer):
            assert peer is not None
            peer.dropped += 1
            self.dropped_total += 1
        return verdict

    def negotiated(self, host: str, key: Any, tubid: str) -> None:
        """TLS is done on ``key``: a client Tub that attached here before is a
        worker reconnecting, and frees its address's place at once."""
        if tubid and tubid in self._known:
            self.admission.named(key)

    def resolved(self, host: str, key: Any, tubid: str) -> None:
        """The connection ``key`` named a valid FURL: its Tub is a worker's."""
        if tubid:
            self._known[tubid] = None
            self._known.move_to_end(tubid)
            if len(self._known) > KNOWN_TUBS:
                self._known.popitem(last=False)
        self.admission.named(key)

    def closed(self, host: str, key: Any) -> None:
        """The connection ``key`` ended (or is being cut)."""
        self.admission.closed(key)

    def summarize(self) -> None:
        """Log this interval's refusals (bounded), then start a new interval."""
        busy = sorted((p for p in self._peers.items() if p[1].interval > 1 or p[1].dropped),
                      key=lambda kv: -kv[1].interval)
        self._lines = 0
        shown = busy[:MAX_LINES - 1] if len(busy) > MAX_LINES else busy
        for host, p in shown:
            self._lines += 1
            extra = "".join([
                f"; {p.cut} of them cut unanswered (over the limit)" if p.cut else "",
                f"; {p.dropped} more connection(s) closed before TLS" if p.dropped else ""])
            if p.revoked:
                extra += f" (among them the revoked or rotated FURL of worker {p.revoked})"
            log.info("refused {n} attach attempts from {peer} in the last {s:.0f} s{extra}",
                     n=p.interval, peer=host, s=self.interval, extra=extra)
        rest = busy[len(shown):]
        if rest or self._unlogged:
            self._lines += 1
            log.info("refused {n} more attach attempts from {m} other address(es) in the "
                     "last {s:.0f} s", n=sum(p.interval for _, p in rest) + self._unlogged,
                     m=len(rest) + self._unlogged, s=self.interval)
        self._lines = 0
        self._unlogged = 0
        for p in self._peers.values():
            p.interval = 0
            p.dropped = 0
            p.revoked = ""
            p.cut = 0
        # a new interval: an address no longer over the limit gets its places
        self.admission.next_all()
        self.admission.summarize(self.interval)

    def _forget_oldest(self) -> None:
        # (its connections, if any, are the admission's: they are unaffected)
        oldest = min(self._peers, key=lambda h: self._peers[h].last)
        del self._peers[oldest]

    def counts(self) -> RefusalCounts:
        """The counters, for status and list-workers --json."""
        top = sorted(self._peers.items(), key=lambda kv: -kv[1].total)[:10]
        gate = self.admission.to_wire()
        return RefusalCounts(
            total=self.total, closed_before_tls=self.dropped_total,
            cut_unanswered=self.cut_total, waiting=gate["held"],
            connections=GateCounts(**gate),
            this_interval=sum(p.interval for p in self._peers.values()),
            interval_seconds=self.interval, addresses=len(self._peers),
            top=tuple(RefusedAddress(h, p.total, p.last) for h, p in top))

    def to_wire(self) -> dict[str, Any]:
        """:meth:`counts` as it goes on the wire."""
        return self.counts().to_wire()
