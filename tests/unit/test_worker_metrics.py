"""The worker's metrics (issue 18), on a task.Clock with a fake dialer and
fake logins: the figures move as the link changes state, attaches, is cut
and resumes; labels stay within their bounded sets whatever the master
sends; nothing is counted without --metrics; the settings and the start
options carry the endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet import error as terror
from twisted.internet.task import Clock

from buildbot_furl.errors import ConfigError, ConnectionLost, PolicyRefused, Revoked
from buildbot_furl.furl import new_swissnum, parse_furl
from buildbot_furl.layout import WorkerPaths
from buildbot_furl.privatefiles import write_private
from buildbot_furl.protocol import encode
from buildbot_furl.testing.fakelink import FakeDialer, FakeLogin, attach_answer
from buildbot_furl.worker import metrics as wm
from buildbot_furl.worker.bot import FurlBot
from buildbot_furl.worker.config import WorkerOptions
from buildbot_furl.worker.link import STABLE_AFTER
from buildbot_furl.worker.policy import Policy, PolicyFile
from buildbot_furl.worker.service import WorkerService
from buildbot_furl.worker.settings import Settings, option, parse_settings
from buildbot_furl.worker.streams import UpdateSender

P = "buildbot_furl_worker_"


def no_jitter(mean: float, sigma: float) -> float:
    return mean


class Rig:
    """A WorkerService with metrics whose link dials a FakeDialer on a Clock."""

    def __init__(self, tmp: Path) -> None:
        self.clock = Clock()
        self.dialer = FakeDialer()
        self.metrics = wm.WorkerMetrics()
        furl = parse_furl(f"pb://{'a' * 32}@tcp:127.0.0.1:1/{new_swissnum()}")
        self.svc = WorkerService(WorkerPaths(str(tmp)), furl, clock=self.clock,
                                 dial=self.dialer, metrics=self.metrics)
        self.svc.core.backoff.rng = no_jitter
        self.svc.link.start()

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(P + name, labels)
        assert v is not None, f"no sample {name} {labels}"
        return v

    def state(self) -> str:
        """The one state link_state says the link is in."""
        on = [s for s in wm.STATES if self.value("link_state", state=s) == 1.0]
        assert len(on) == 1, on
        assert sum(self.value("link_state", state=s) for s in wm.STATES) == 1.0
        return on[0]

    def attach(self, after: float = 0.0, **answer: Any) -> FakeLogin:
        login = self.dialer.connect()
        self.clock.advance(after)
        login.answer("attach", attach_answer(**answer))
        return login

    def retry(self) -> None:
        timer = self.svc.core.retry_timer
        assert timer is not None and timer.active()
        self.clock.advance(timer.getTime() - self.clock.seconds())


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_the_link_state_reconnects_and_attach_duration_follow_the_link(rig: Rig) -> None:
    assert rig.state() == "connecting" and rig.svc.not_ready() == "connecting to the master"
    assert rig.value("attach_duration_seconds_count") == 0
    rig.dialer.refuse()  # connection refused: unreachable
    assert rig.state() == "waiting" and rig.svc.not_ready() == "waiting to reconnect"
    assert rig.value("attach_failures_total", reason="unreachable") == 1
    rig.retry()
    assert rig.state() == "connecting"
    login = rig.dialer.connect()
    assert rig.state() == "attaching"
    rig.clock.advance(0.3)
    login.answer("attach", attach_answer())
    assert rig.state() == "attached" and rig.svc.not_ready() is None
    # from the second dial's start to its attach; the first dial's wait is not in it
    assert rig.value("attach_duration_seconds_count") == 1
    assert rig.value("attach_duration_seconds_sum") == pytest.approx(0.3)
    assert rig.value("attach_duration_seconds_bucket", le="0.5") == 1
    assert rig.value("attach_duration_seconds_bucket", le="0.25") == 0
    assert rig.value("reconnects_total") == 0 and rig.value("session_resumes_total") == 0
    rig.clock.advance(STABLE_AFTER + 1)
    login.cut()  # a link that held: redialed at once (on the next turn)
    assert rig.state() == "waiting"
    rig.retry()
    assert rig.state() == "connecting"
    rig.attach(after=0.1, resumed=True)
    assert rig.state() == "attached"
    assert rig.value("reconnects_total") == 1 and rig.value("session_resumes_total") == 1
    assert rig.value("attach_duration_seconds_count") == 2
    rig.svc.link.stop()
    assert rig.state() == "stopped" and rig.svc.not_ready() == "stopped"


def test_attach_failures_are_counted_by_bounded_reason(rig: Rig) -> None:
    login = rig.dialer.connect()
    login.refuse("attach", Revoked("revoked"))
    assert rig.value("attach_failures_total", reason="revoked") == 1
    rig.retry()
    login = rig.dialer.connect()
    login.cut()  # the link goes during the attach
    assert rig.value("attach_failures_total", reason="lost") == 1
    rig.retry()
    login = rig.attach()
    login.cut()  # dropped right after the attach
    assert rig.value("attach_failures_total", reason="dropped") == 1
    rig.retry()
    rig.dialer.refuse(terror.DNSLookupError("nowhere"))
    assert rig.value("attach_failures_total", reason="unreachable") == 1
    text = generate_latest(rig.metrics.registry).decode()
    reasons = {line.split('reason="')[1].split('"')[0] for line in text.splitlines()
               if line.startswith(P + "attach_failures_total{")}
    assert reasons == set(wm.REASONS)


def test_failure_reasons_and_command_labels_are_bounded() -> None:
    assert wm.failure_reason(terror.ConnectionRefusedError()) == "unreachable"
    assert wm.failure_reason(terror.TCPTimedOutError()) == "unreachable"
    assert wm.failure_reason(KeyError("x")) == "unknown_furl"
    assert wm.failure_reason(ConnectionLost()) == "lost"
    assert wm.failure_reason(PolicyRefused("x")) == "refused"  # any other WireError
    assert wm.failure_reason(ValueError("x")) == "other"
    assert wm.command_label("shell") == "shell" and wm.command_label("uploadFile") == "uploadFile"
    assert wm.command_label("furl.put") == "furl.put"
    for hostile in ("shell2", "x" * 10_000, 'a"b{c}', None, 7, ["shell"]):
        assert wm.command_label(hostile) == "other"
    m = wm.WorkerMetrics()
    m.refused("made-up")
    m.command_done("shell", "made-up")
    m.moved("sideways", 5)
    assert m.registry.get_sample_value(P + "policy_refusals_total", {"rule": "other"}) == 1
    assert m.registry.get_sample_value(P + "commands_total",
                                       {"command": "shell", "result": "error"}) == 1
    assert "sideways" not in generate_latest(m.registry).decode()


def _sample_labels(m: wm.WorkerMetrics, name: str, label: str) -> set[str]:
    return {s.labels[label] for metric in m.registry.collect() for s in metric.samples
            if s.name == P + name}


@pytest_twisted.ensureDeferred
async def test_a_hostile_command_name_counts_as_other(tmp_path: Path) -> None:
    m = wm.WorkerMetrics()
    bot = FurlBot(str(tmp_path), events=m)
    bot.startService()
    try:
        await bot.remote_setBuilderList(encode([["b", "."]]))
        names = [f"evil-{i}-{'z' * 200}" for i in range(50)] + ["shell2", "../../etc"]
        for i, name in enumerate(names):
            await bot.remote_startCommand("b", str(i), name, encode({}), None, None, None)
    finally:
        await bot.stopService()
    assert _sample_labels(m, "commands_total", "command") == {"other"}
    assert m.registry.get_sample_value(
        P + "commands_total", {"command": "other", "result": "rejected"}) == len(names)
    assert "evil" not in generate_latest(m.registry).decode()


@pytest_twisted.ensureDeferred
async def test_policy_refusals_are_counted_by_rule(tmp_path: Path) -> None:
    m = wm.WorkerMetrics()
    write_private(str(tmp_path / "furl-worker.policy"),
                  "[commands]\nallow = none\n[paths]\nallow = .\n")
    bot = FurlBot(str(tmp_path), events=m)
    bot.startService()
    try:
        await bot.remote_setBuilderList(encode([["b", "."]]))
        shell = {"workdir": ".", "command": ["true"]}
        await bot.remote_startCommand("b", "1", "shell", encode(shell), None, None, None)
        await bot.remote_startCommand("b", "2", "stat", encode({"file": "/etc/passwd"}),
                                      None, None, None)
        await bot.remote_setBuilderList(encode([["c", "/"]]))  # a builder dir outside
    finally:
        await bot.stopService()

    def refusals(rule: str) -> float | None:
        return m.registry.get_sample_value(P + "policy_refusals_total", {"rule": rule})

    assert refusals("commands") == 1 and refusals("paths") == 2
    assert m.registry.get_sample_value(
        P + "commands_total", {"command": "shell", "result": "refused"}) == 1
    assert m.registry.get_sample_value(
        P + "commands_total", {"command": "stat", "result": "refused"}) == 1


def test_every_refusal_of_the_policy_names_its_rule(tmp_path: Path) -> None:
    base = str(tmp_path)
    p = Policy(base, programs=(), roots=(base,), max_commands=1, environment=("CC",))

    def rule(command: str, args: dict[str, Any], running: int = 0) -> str:
        with pytest.raises(PolicyRefused) as e:
            p.check(command, args, running)
        return e.value.rule

    assert rule("shell", {"workdir": ".", "command": ["ls"]}, running=1) == "max_commands"
    assert rule("nosuch", {}) == "unknown_command"
    assert rule("shell", {"workdir": ".", "command": ["ls"]}) == "commands"
    assert rule("stat", {"path": "/etc"}) == "paths"
    assert rule("glob", {"path": "a/*/../../x"}) == "paths"
    p2 = Policy(base, roots=(base,), environment=("CC",))
    with pytest.raises(PolicyRefused) as e:
        p2.check("shell", {"workdir": ".", "command": ["ls"], "env": {"LD_X": "1"}}, 0)
    assert e.value.rule == "environment"
    path = tmp_path / "furl-worker.policy"
    write_private(str(path), "[bogus\n")
    with pytest.raises(PolicyRefused) as e:
        PolicyFile(str(path), base).check("stat", {"path": "."}, 0)
    assert e.value.rule == "invalid_policy"
    # the rule stays on the worker: it is no field of the wire's error
    assert "rule" not in str(e.value.to_wire())


def test_update_bytes_count_each_batch_once() -> None:
    sent: list[bytes] = []

    class Status:
        def callRemote(self, method: str, seq: int, payload: bytes) -> Any:  # noqa: N802
            sent.append(payload)
            return defer.fail(ConnectionLost())  # kept, sent again after a reattach

    m = wm.WorkerMetrics()
    clock = Clock()
    sender = UpdateSender(Status(), lambda: None, lambda: None, clock, m)
    sender.add([["stdout", "hello\n"]])
    clock.advance(0)
    assert m.registry.get_sample_value(P + "update_bytes_total") == len(sent[0]) > 0
    sender.rebind(Status(), 0, False)  # the batch is sent again: not counted again
    assert len(sent) == 2
    assert m.registry.get_sample_value(P + "update_bytes_total") == len(sent[0])


def test_without_metrics_nothing_is_counted_and_no_registry_exists(tmp_path: Path) -> None:
    clock, dialer = Clock(), FakeDialer()
    furl = parse_furl(f"pb://{'a' * 32}@tcp:127.0.0.1:1/{new_swissnum()}")
    svc = WorkerService(WorkerPaths(str(tmp_path)), furl, clock=clock, dial=dialer)
    assert svc.core.events is wm.NO_METRICS and svc.bot.events is wm.NO_METRICS
    svc.link.start()
    dialer.refuse()
    assert svc.not_ready() == "waiting to reconnect"


def test_metrics_listen_in_the_settings_and_the_options() -> None:
    st = parse_settings("[worker]\nmetrics_listen = tcp:9102:interface=127.0.0.1  # local\n",
                        "f")
    assert st == Settings(metrics_listen="tcp:9102:interface=127.0.0.1")
    assert parse_settings(st.to_text(), "f") == st
    assert Settings(maxretries=2).over(st) == Settings(maxretries=2,
                                                      metrics_listen=st.metrics_listen)
    assert Settings(metrics_listen="tcp:0").over(st).metrics_listen == "tcp:0"
    with pytest.raises(ConfigError, match=r"^f: metrics_listen: not a Twisted endpoint"):
        parse_settings("[worker]\nmetrics_listen = nope:1\n", "f")
    argv = WorkerOptions(settings=st).to_argv()
    assert argv[argv.index("--metrics") + 1] == "tcp:9102:interface=127.0.0.1"
    assert "--metrics" not in WorkerOptions().to_argv()  # off unless asked
    assert option("metrics_listen") == "--metrics" and option("numcpus") == "--numcpus"
