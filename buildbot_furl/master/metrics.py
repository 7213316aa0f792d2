"""The master's Prometheus metrics (standalone and the Buildbot plugin).

Counters are fed by the events of the registry, the sessions and the
connections (each is given this object when it is made); gauges are read
from the host's live tables at each scrape (:class:`_Collector`), so they
can never drift from what ``list-workers`` says.  Every label takes values
from a bounded set, or a worker's name from workers.furls (one series per
configured worker): a hostile peer cannot add series.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from buildbot_furl.metrics.common import PREFIX, new_registry
from buildbot_furl.protocol.messages import RefusalCounts, WorkerRow

#: why an attach is refused, as counted (bounded)
REFUSAL_REASONS = ("unknown_furl", "revoked_furl", "malformed", "duplicate",
                   "protocol", "consumer")
#: the kinds of protocol violation: a call out of the interface's bounds, or
#: a malformed or out-of-order update/transfer call of a command
VIOLATION_KINDS = ("call_bounds", "command", "session")
#: how a command ended, seen from the master
COMMAND_RESULTS = ("completed", "failed", "lost", "refused")
#: how an invite ended
INVITE_OUTCOMES = ("claimed", "wrong_code", "expired", "cancelled")


class HostView(Protocol):
    """What the collector reads at each scrape (implemented by MasterHost)."""

    def worker_rows(self) -> list[WorkerRow]: ...

    def refusal_counts(self) -> RefusalCounts: ...

    def commands_running(self) -> int: ...

    def invites_pending(self) -> int: ...

    def master_name(self) -> str: ...


class MasterMetrics:
    """The master's counters, and the registry that serves them."""

    def __init__(self, role: str = "master") -> None:
        self.registry: CollectorRegistry = new_registry(role)
        r = self.registry
        self._attaches = Counter(
            PREFIX + "attaches", "Workers attached, by kind: new (a new session) or "
            "resumed (a session carried over to a new connection).", ["kind"], registry=r)
        self._ends = Counter(
            PREFIX + "session_ends", "Worker sessions ended, by reason.", ["reason"],
            registry=r)
        self._grace = Histogram(
            PREFIX + "grace_duration_seconds", "How long sessions stayed detached in "
            "their grace (until resumed or expired).", ["outcome"], registry=r,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
        self._refusals = Counter(
            PREFIX + "attach_refusals", "Attach attempts refused, by reason.", ["reason"],
            registry=r)
        self._violations = Counter(
            PREFIX + "protocol_violations", "Calls of workers refused as out of the "
            "protocol, by kind (0 for honest workers).", ["kind"], registry=r)
        self._commands = Counter(
            PREFIX + "commands", "Commands ended, by how.", ["result"], registry=r)
        self._update_bytes = Counter(
            PREFIX + "update_bytes", "Bytes of command output (update batches) "
            "received from workers.", registry=r)
        self._transfer_bytes = Counter(
            PREFIX + "transfer_bytes", "Bytes of files moved, by direction: upload "
            "(worker to master) or download (master to worker).", ["direction"], registry=r)
        self._invites = Counter(
            PREFIX + "invites_ended", "Invites ended, by outcome: claimed, wrong_code "
            "(a wrong code was tried: the invite is burned), expired, cancelled.",
            ["outcome"], registry=r)
        self._reloads = Counter(
            PREFIX + "workers_file_reloads", "Reloads of workers.furls, by result "
            "(applied, or not_applied: the file was bad and the previous workers kept).",
            ["result"], registry=r)
        # every series exists from the start (a rate() over a series that
        # appears late misses its first increments)
        for kind in ("new", "resumed"):
            self._attaches.labels(kind)
        for reason in REFUSAL_REASONS:
            self._refusals.labels(reason)
        for kind in VIOLATION_KINDS:
            self._violations.labels(kind)
        for result in COMMAND_RESULTS:
            self._commands.labels(result)
        for direction in ("upload", "download"):
            self._transfer_bytes.labels(direction)
        for result in ("applied", "not_applied"):
            self._reloads.labels(result)
        for outcome in INVITE_OUTCOMES:
            self._invites.labels(outcome)

    def watch(self, host: HostView) -> None:
        """Read the gauges from ``host`` at each scrape."""
        self.registry.register(_Collector(host))

    # -- events ---------------------------------------------------------------------
    def attached(self, resumed: bool) -> None:
        self._attaches.labels("resumed" if resumed else "new").inc()

    def left_grace(self, seconds: float, resumed: bool) -> None:
        self._grace.labels("resumed" if resumed else "expired").observe(max(0.0, seconds))

    def session_ended(self, reason: str) -> None:
        self._ends.labels(reason).inc()

    def refused(self, reason: str) -> None:
        self._refusals.labels(reason if reason in REFUSAL_REASONS else "malformed").inc()

    def violation(self, kind: str) -> None:
        self._violations.labels(kind if kind in VIOLATION_KINDS else "session").inc()

    def command_ended(self, result: str, update_bytes: int, uploaded: int,
                      downloaded: int) -> None:
        self._commands.labels(result if result in COMMAND_RESULTS else "failed").inc()
        self._update_bytes.inc(update_bytes)
        self._transfer_bytes.labels("upload").inc(uploaded)
        self._transfer_bytes.labels("download").inc(downloaded)

    def invite_ended(self, outcome: str) -> None:
        self._invites.labels(outcome if outcome in INVITE_OUTCOMES else "cancelled").inc()

    def reloaded(self, applied: bool) -> None:
        self._reloads.labels("applied" if applied else "not_applied").inc()


class _Collector(Collector):
    """The gauges, from the host's tables as they are at the scrape."""

    def __init__(self, host: HostView) -> None:
        self.host = host

    def describe(self) -> Iterable[Metric]:
        return []  # collected afresh each time: nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        rows = self.host.worker_rows()
        info = GaugeMetricFamily(
            PREFIX + "master_info", "Always 1; its label names this master as its "
            "cluster knows it (Buildbot's master name, else hostname:basedir), so that "
            "the series of the masters of a cluster can be told apart.", labels=["master"])
        info.add_metric([self.host.master_name()], 1.0)
        yield info
        per_worker = GaugeMetricFamily(
            PREFIX + "worker_attached", "1 while the worker is attached to this master "
            "(one series per worker in workers.furls).", labels=["worker"])
        in_grace = 0
        for row in rows:
            per_worker.add_metric([row.name], 1.0 if row.connected else 0.0)
            in_grace += row.state == "reconnecting"
        yield GaugeMetricFamily(PREFIX + "workers_configured",
                                "Workers listed in workers.furls.", value=len(rows))
        yield GaugeMetricFamily(PREFIX + "workers_attached", "Workers attached now.",
                                value=sum(r.connected for r in rows))
        yield GaugeMetricFamily(PREFIX + "workers_in_grace", "Workers whose connection "
                                "is gone and whose session waits for them (grace).",
                                value=in_grace)
        yield GaugeMetricFamily(PREFIX + "workers_draining", "Workers in a graceful stop.",
                                value=sum(r.draining for r in rows))
        yield per_worker
        yield GaugeMetricFamily(PREFIX + "invites_pending", "Invites waiting to be "
                                "claimed.", value=self.host.invites_pending())
        yield GaugeMetricFamily(PREFIX + "commands_running",
                                "Commands running on this master's workers.",
                                value=self.host.commands_running())
        counts = self.host.refusal_counts()
        gate = counts.connections
        yield GaugeMetricFamily(PREFIX + "connections_pending", "Connections to the "
                                "workers' port that have not started an attach yet.",
                                value=gate.pending + gate.held)
        closed = CounterMetricFamily(
            PREFIX + "connections_closed", "Connections to the workers' port closed by "
            "its gate, by reason.", labels=["reason"])
        for reason, value in (("attach_timeout", gate.timed_out), ("evicted", gate.evicted),
                              ("before_tls", counts.closed_before_tls),
                              ("unanswered", counts.cut_unanswered)):
            closed.add_metric([reason], value)
        yield closed


def no_metrics() -> Any:
    """A MasterMetrics nobody serves (the default of the parts made alone, in tests)."""
    return MasterMetrics()
