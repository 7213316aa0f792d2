"""Refused attach attempts: counted, summed up in the log, and made to cost.

Anyone who can reach the master's port can ask for FURLs it does not
serve.  Each refusal is counted per peer address; the first from an
address is logged at once, the rest as one summary line per address per
interval, and at most :data:`MAX_LINES` lines per interval in all, so the
log grows by a few KB a minute whatever the rate.  A connection that asks
for :data:`PER_CONNECTION` unknown names is hung up (each try then costs a
new TLS handshake), and an address with more than ``limit`` refusals in an
interval has its new connections closed before any TLS, until the interval
ends.  A worker with a valid FURL is never refused, so it is never slowed
(unless it shares its address with the attacker: see docs/security.md).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

INTERVAL = 60.0  # seconds per summary
PER_CONNECTION = 3  # unknown names one connection may ask for before it is hung up
DEFAULT_LIMIT = 100  # refusals per address per interval before it is shut out
MAX_LINES = 20  # log lines per interval for refusals, in all
MAX_PEERS = 4096  # addresses remembered


@dataclasses.dataclass
class _Peer:
    total: int = 0
    interval: int = 0  # refusals in the current interval
    dropped: int = 0  # connections closed before TLS in the current interval
    first: float = 0.0
    last: float = 0.0
    revoked: str = ""  # a worker whose old FURL this address used


class Refusals:
    """Counts refused attach attempts per peer address and rations the log."""

    def __init__(self, limit: int = DEFAULT_LIMIT, interval: float = INTERVAL) -> None:
        self.limit = limit
        self.interval = interval
        self.total = 0
        self.dropped_total = 0
        self._peers: dict[str, _Peer] = {}
        self._lines = 0  # lines logged in this interval
        self._unlogged = 0  # first refusals from new addresses not logged (over MAX_LINES)
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.summarize)
        self._loop.clock = reactor
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

    def refused(self, host: str, revoked_worker: str | None = None) -> None:
        """A connection from ``host`` asked for a name we do not serve."""
        self.total += 1
        now = time.time()
        peer = self._peers.get(host)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                self._forget_oldest()
            peer = self._peers[host] = _Peer(first=now)
        peer.total += 1
        peer.interval += 1
        peer.last = now
        if revoked_worker:
            peer.revoked = revoked_worker
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

    def allow(self, host: str) -> bool:
        """Whether a new connection from ``host`` may go on to TLS."""
        peer = self._peers.get(host)
        if peer is None or self.limit <= 0 or peer.interval < self.limit:
            return True
        peer.dropped += 1
        self.dropped_total += 1
        return False

    def summarize(self) -> None:
        """Log this interval's refusals (bounded), then start a new interval."""
        busy = sorted((p for p in self._peers.items() if p[1].interval > 1 or p[1].dropped),
                      key=lambda kv: -kv[1].interval)
        self._lines = 0
        shown = busy[:MAX_LINES - 1] if len(busy) > MAX_LINES else busy
        for host, p in shown:
            self._lines += 1
            extra = (f"; {p.dropped} more connection(s) closed before TLS" if p.dropped
                     else "")
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

    def _forget_oldest(self) -> None:
        oldest = min(self._peers, key=lambda h: self._peers[h].last)
        del self._peers[oldest]

    def describe(self) -> dict[str, Any]:
        """The counters, for status and list-workers --json."""
        top = sorted(self._peers.items(), key=lambda kv: -kv[1].total)[:10]
        return {
            "total": self.total,
            "closed_before_tls": self.dropped_total,
            "this_interval": sum(p.interval for p in self._peers.values()),
            "interval_seconds": self.interval,
            "addresses": len(self._peers),
            "top": [{"address": h, "refused": p.total, "last": p.last} for h, p in top],
        }
