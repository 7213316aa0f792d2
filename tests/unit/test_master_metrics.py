"""The master's metrics: each event moves its counter, the gauges follow
the host's tables at each scrape, every label stays in its bounded set,
and a session's life (cut, grace, resume, expiry) is counted on a task.Clock."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from buildbot_furl.master.metrics import COMMAND_RESULTS, REFUSAL_REASONS, MasterMetrics
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.protocol.messages import (
    AttachInfo,
    GateCounts,
    RefusalCounts,
    WorkerRow,
)
from buildbot_furl.testing.fakes import FakeBot
from buildbot_furl.testing.fakes import run_at_once as _run


def scrape(metrics: MasterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, read back from the text format."""
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Host:
    def __init__(self) -> None:
        self.rows = [WorkerRow("w1", connected=True, state="connected"),
                     WorkerRow("w2", state="reconnecting"),
                     WorkerRow("w3", connected=True, state="draining", draining=True)]
        self.running = 2
        self.counts = RefusalCounts(total=5, closed_before_tls=1, cut_unanswered=2,
                                    connections=GateCounts(pending=3, held=4, timed_out=6,
                                                           evicted=7))

    def worker_rows(self) -> list[WorkerRow]:
        return self.rows

    def refusal_counts(self) -> RefusalCounts:
        return self.counts

    def commands_running(self) -> int:
        return self.running

    def invites_pending(self) -> int:
        return 1

    def master_name(self) -> str:
        return "hostA:/srv/bb/master"


P = "buildbot_furl_"


def test_the_gauges_are_read_from_the_host_at_each_scrape() -> None:
    m, host = MasterMetrics(), Host()
    m.watch(host)
    got = scrape(m)
    assert got[(P + "workers_configured", ())] == 3
    assert got[(P + "workers_attached", ())] == 2
    assert got[(P + "workers_in_grace", ())] == 1
    assert got[(P + "workers_draining", ())] == 1
    assert got[(P + "worker_attached", (("worker", "w2"),))] == 0
    assert got[(P + "worker_attached", (("worker", "w3"),))] == 1
    assert got[(P + "commands_running", ())] == 2
    assert got[(P + "connections_pending", ())] == 7
    assert got[(P + "connections_closed_total", (("reason", "evicted"),))] == 7
    assert got[(P + "connections_closed_total", (("reason", "unanswered"),))] == 2
    # the masters of a cluster told apart (issue 18)
    assert got[(P + "master_info", (("master", "hostA:/srv/bb/master"),))] == 1
    host.rows = host.rows[:1]
    host.running = 0
    got = scrape(m)
    assert got[(P + "workers_configured", ())] == 1 and got[(P + "commands_running", ())] == 0
    assert (P + "worker_attached", (("worker", "w2"),)) not in got  # a removed worker's series goes


def test_events_move_their_counters_and_labels_stay_bounded() -> None:
    m = MasterMetrics()
    before = scrape(m)
    # every series exists from the start, at 0
    for reason in REFUSAL_REASONS:
        assert before[(P + "attach_refusals_total", (("reason", reason),))] == 0
    for result in COMMAND_RESULTS:
        assert before[(P + "commands_total", (("result", result),))] == 0
    m.attached(resumed=False)
    m.attached(resumed=True)
    m.refused("unknown_furl")
    m.refused("a peer's text \x1b[31m")  # not a reason of ours: counted, not a new series
    m.violation("command")
    m.violation("made up")
    m.command_ended("completed", 100, 7, 9)
    m.command_ended("whatever", 1, 0, 0)
    m.reloaded(True)
    m.reloaded(False)
    got = scrape(m)
    assert got[(P + "attaches_total", (("kind", "new"),))] == 1
    assert got[(P + "attaches_total", (("kind", "resumed"),))] == 1
    assert got[(P + "attach_refusals_total", (("reason", "unknown_furl"),))] == 1
    assert got[(P + "attach_refusals_total", (("reason", "malformed"),))] == 1
    assert got[(P + "protocol_violations_total", (("kind", "command"),))] == 1
    assert got[(P + "protocol_violations_total", (("kind", "session"),))] == 1
    assert got[(P + "commands_total", (("result", "completed"),))] == 1
    assert got[(P + "commands_total", (("result", "failed"),))] == 1
    assert got[(P + "update_bytes_total", ())] == 101
    assert got[(P + "transfer_bytes_total", (("direction", "upload"),))] == 7
    assert got[(P + "transfer_bytes_total", (("direction", "download"),))] == 9
    assert got[(P + "workers_file_reloads_total", (("result", "not_applied"),))] == 1
    labels = {v for (_, ls) in got for _, v in ls}
    assert not any("\x1b" in v or "made up" in v or "whatever" in v for v in labels)
    info = [k for k in got if k[0] == P + "build_info"]
    assert info and dict(info[0][1])["role"] == "master"


def _session(clock: Clock, m: MasterMetrics) -> tuple[WorkerSession, FakeBot]:
    bot = FakeBot()
    s = WorkerSession("w1", bot, AttachInfo((1,), "test", {}), 1, "127.0.0.1:4242", 30.0,
                      clock=clock, metrics=m)
    return s, bot


def test_a_sessions_cut_resume_and_expiry_are_counted_on_the_clock() -> None:
    clock, m = Clock(), MasterMetrics()
    s, bot = _session(clock, m)
    bot.lose()
    clock.advance(12)
    _run(s.rebind(FakeBot(), "127.0.0.1:5555"))  # back within the grace
    s.bot.lose()
    clock.advance(30)  # the grace runs out
    got = scrape(m)
    assert got[(P + "grace_duration_seconds_count", (("outcome", "resumed"),))] == 1
    assert got[(P + "grace_duration_seconds_sum", (("outcome", "resumed"),))] == 12
    assert got[(P + "grace_duration_seconds_count", (("outcome", "expired"),))] == 1
    assert got[(P + "session_ends_total", (("reason", "grace_expired"),))] == 1
    s2, _ = _session(clock, m)
    s2.drop("FURL revoked", "revoked")
    s2.drop("again", "revoked")  # ended once, counted once
    s3, _ = _session(clock, m)
    s3.end("why", "not a reason of ours")
    got = scrape(m)
    assert got[(P + "session_ends_total", (("reason", "revoked"),))] == 1
    assert got[(P + "session_ends_total", (("reason", "other"),))] == 1
