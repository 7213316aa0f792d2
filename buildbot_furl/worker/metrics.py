"""The worker's Prometheus metrics (served only when asked: ``--metrics`` /
``metrics_listen``; see :mod:`buildbot_furl.metrics.serve`).

What the link and the commands already hold (the link's state, its
attaches, the commands running) is read at scrape time by a collector;
what happens and is gone (a failed attach, a finished command, bytes
sent) is counted as it happens, through a :class:`WorkerEvents` handed to
each part at its construction.  ``NO_METRICS`` is the one that does
nothing: without ``--metrics`` the worker counts nothing.

Every label has a bounded set of values, whatever the master sends: a
command name the worker does not know counts as ``other``, and nothing is
labelled by command id, path, worker name or address.  No FURL, secret or
path is in any figure (docs/security.md, "Metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from buildbot_worker.commands.registry import commandRegistry
from foolscap.tokens import BananaError, NegotiationError, RemoteException, RemoteNegotiationError
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet import error as terror

from buildbot_furl.errors import (
    ConnectionLost,
    DuplicateWorker,
    IncompatibleProtocol,
    Revoked,
    WireError,
)
from buildbot_furl.metrics.common import PREFIX, new_registry
from buildbot_furl.protocol import GET_COMMAND, PUT_COMMAND

P = PREFIX + "worker_"

#: the link's states (worker/link.py), each a series of ``link_state``
STATES = ("connecting", "attaching", "attached", "draining", "waiting", "gave up", "stopped")
#: why an attempt to attach failed (``attach_failures_total{reason}``)
REASONS = ("unreachable", "wrong_master", "unknown_furl", "revoked", "incompatible",
           "duplicate", "lost", "refused", "dropped", "other")
#: what became of a command the master asked for (``commands_total{result}``)
RESULTS = ("success", "failure", "error", "refused", "rejected", "ended")
#: the parts of the policy file a refusal is made under (worker/policy.py)
RULES = ("commands", "paths", "environment", "max_commands", "max_upload", "max_download",
         "unknown_command", "invalid_policy", "other")
DIRECTIONS = ("upload", "download")
#: the command names counted by name: buildbot-worker's commands and ours;
#: any other name the master sends is "other" (a master cannot add series)
COMMANDS = frozenset(commandRegistry) | {PUT_COMMAND, GET_COMMAND}
#: seconds from the dial to the attach: loopback to a slow WAN, and the backoff's
#: share of a long outage (a retry counts from its own dial)
ATTACH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: why the worker is not ready (None: it is), by the link's state
_NOT_READY = {
    "connecting": "connecting to the master",
    "attaching": "attaching to the master",
    "waiting": "waiting to reconnect",
    "draining": "draining (graceful stop): the master gives it no new work",
    "gave up": "gave up reaching the master",
    "stopped": "stopped",
}


def not_ready(state: str) -> str | None:
    """/readyz's answer for the link's ``state``: None when attached."""
    if state == "attached":
        return None
    return _NOT_READY.get(state, state)


def command_label(name: object) -> str:
    """``name`` if it is a command the worker knows, else "other"."""
    return name if isinstance(name, str) and name in COMMANDS else "other"


def failure_reason(error: BaseException) -> str:
    """A failed dial's or refused attach's reason, one of REASONS."""
    if isinstance(error, terror.ConnectError | terror.DNSLookupError | terror.TimeoutError):
        return "unreachable"
    if isinstance(error, NegotiationError | RemoteNegotiationError | BananaError):
        return "wrong_master"
    if isinstance(error, RemoteException | KeyError):
        return "unknown_furl"
    if isinstance(error, Revoked):
        return "revoked"
    if isinstance(error, IncompatibleProtocol):
        return "incompatible"
    if isinstance(error, DuplicateWorker):
        return "duplicate"
    if isinstance(error, ConnectionLost):
        return "lost"
    if isinstance(error, WireError):
        return "refused"
    return "other"


class WorkerEvents:
    """What the worker's parts report as it happens.  This one counts
    nothing (no ``--metrics``); :class:`WorkerMetrics` counts."""

    def attached(self, seconds: float, resumed: bool) -> None:
        """An attach succeeded ``seconds`` after its dial began."""

    def dial_failed(self, error: BaseException) -> None:
        """A dial failed (no connection, not the master's key, unknown FURL)."""

    def attach_refused(self, error: BaseException) -> None:
        """The master refused the attach (or the link went during it)."""

    def dropped(self) -> None:
        """The master dropped the link right after the attach."""

    def command_done(self, command: str, result: str) -> None:
        """A command the master asked for is over (``result``: RESULTS)."""

    def update_sent(self, nbytes: int) -> None:
        """A batch of a command's output left (first sending only)."""

    def moved(self, direction: str, nbytes: int) -> None:
        """File bytes moved by a transfer (``upload``: worker -> master)."""

    def refused(self, rule: str) -> None:
        """The worker's policy refused a request under ``rule``."""


NO_METRICS = WorkerEvents()


class _LinkCollector:
    """The figures read at scrape time: the link's state, the attaches
    after the first, the commands running."""

    def __init__(self, state: Callable[[], str], attaches: Callable[[], int],
                 running: Callable[[], int]) -> None:
        self._state = state
        self._attaches = attaches
        self._running = running

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily(P + "link_state", "The link to the master: 1 for the state "
                                  "it is in, 0 for the others.", labels=["state"]),
                CounterMetricFamily(P + "reconnects", "Attaches to the master after the "
                                    "first (a reconnect after a cut, or to a new FURL)."),
                GaugeMetricFamily(P + "commands_running", "Commands running on the worker "
                                  "now (those a lost master may still take back included)."))

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        state, reconnects, running = self._families()
        now = self._state()
        for s in STATES:
            state.add_metric([s], 1.0 if s == now else 0.0)
        reconnects.add_metric([], max(0, self._attaches() - 1))
        running.add_metric([], self._running())
        return iter((state, reconnects, running))


class WorkerMetrics(WorkerEvents):
    """The worker's registry (``build_info`` with role "worker") and its
    metrics; :meth:`watch` adds the figures read from the live link."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry = new_registry("worker")
        r = self.registry
        self.attach_failures = Counter(
            P + "attach_failures", "Failed attempts to attach to the master, by reason.",
            ["reason"], registry=r)
        self.attach_seconds = Histogram(
            P + "attach_duration_seconds", "Seconds from a dial's start to the attach it "
            "led to.", buckets=ATTACH_BUCKETS, registry=r)
        self.resumes = Counter(
            P + "session_resumes", "Attaches in which the master took the worker's session "
            "back (its commands carried on).", registry=r)
        self.commands = Counter(
            P + "commands", "Commands the master asked for, by Buildbot command name "
            "(unknown names: other) and result.", ["command", "result"], registry=r)
        self.update_bytes = Counter(
            P + "update_bytes", "Bytes of command output and status sent to the master "
            "(encoded batches, each counted once).", registry=r)
        self.transfer_bytes = Counter(
            P + "transfer_bytes", "File bytes moved by transfers (upload: worker to "
            "master; download: master to worker).", ["direction"], registry=r)
        self.refusals = Counter(
            P + "policy_refusals", "Requests the worker's policy refused, by the rule "
            "they were refused under.", ["rule"], registry=r)
        # the bounded series exist from the start, at 0 (a rate needs the zero)
        for reason in REASONS:
            self.attach_failures.labels(reason)
        for direction in DIRECTIONS:
            self.transfer_bytes.labels(direction)
        for rule in RULES:
            self.refusals.labels(rule)

    def watch(self, state: Callable[[], str], attaches: Callable[[], int],
              running: Callable[[], int]) -> None:
        """Read the link's state, its attach count and the commands running
        at each scrape (called once, by the service that owns them)."""
        self.registry.register(_LinkCollector(state, attaches, running))

    # -- WorkerEvents ------------------------------------------------------------
    def attached(self, seconds: float, resumed: bool) -> None:
        self.attach_seconds.observe(max(0.0, seconds))
        if resumed:
            self.resumes.inc()

    def dial_failed(self, error: BaseException) -> None:
        self.attach_failures.labels(failure_reason(error)).inc()

    def attach_refused(self, error: BaseException) -> None:
        self.attach_failures.labels(failure_reason(error)).inc()

    def dropped(self) -> None:
        self.attach_failures.labels("dropped").inc()

    def command_done(self, command: str, result: str) -> None:
        self.commands.labels(command_label(command),
                             result if result in RESULTS else "error").inc()

    def update_sent(self, nbytes: int) -> None:
        self.update_bytes.inc(nbytes)

    def moved(self, direction: str, nbytes: int) -> None:
        if direction in DIRECTIONS and nbytes > 0:
            self.transfer_bytes.labels(direction).inc(nbytes)

    def refused(self, rule: str) -> None:
        self.refusals.labels(rule if rule in RULES else "other").inc()
