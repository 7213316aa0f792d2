"""Graceful stop, from either side, against real daemons: the worker takes no
new work, what runs finishes, then the worker exits 0 and does not come back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from buildbot_furl.testing.farm import PROGRAMS, Farm, cli
from buildbot_furl.testing.procs import Procs, pid_alive
from buildbot_furl.testing.timing import Timing

from buildbot_furl.worker.statefile import Attachment, Drain, WorkerStatus


def _worker_pid(farm: Farm, name: str) -> int:
    return int((farm.wdir(name) / "furl-worker.pid").read_text().split()[0])


def _log(farm: Farm, name: str) -> str:
    return (farm.wdir(name) / "worker.log").read_text()


def test_worker_side_graceful_stop_lets_the_running_command_finish(farm: Farm) -> None:
    farm.start_two()
    pid = _worker_pid(farm, "w1")
    script = "until [ -e go ]; do sleep 0.1; done; echo finished"
    slow = farm.run_popen("w1", "sh", "-c", script, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert farm.wait_for(lambda: farm.procs.find("sh", "-c", script), 30)  # it runs
    stopping = farm.procs.popen(sys.executable, "-m", PROGRAMS["furl-worker"], "stop",
                                str(farm.wdir("w1")), "--graceful",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert farm.wait_for(lambda: farm.workers()["w1"]["state"] == "draining", 10)
    assert farm.workers()["w1"]["draining"] is True
    assert farm.wait_for(lambda: "graceful stop: the master gives it no new work" in
                         cli("furl-worker", "status", str(farm.wdir("w1"))).stdout, 10)
    # no new work on it; the other worker is served as before
    refused = farm.run("w1", "true")
    assert refused.returncode == 2
    err = refused.stderr.decode()
    assert "worker 'w1' is draining" in err and len(err.strip().splitlines()) == 1, err
    assert farm.run("w2", "echo", "ok").stdout == b"ok\n"
    listed = farm.master("list-workers").stdout
    assert "draining" in listed
    # the running command ends normally, then the worker stops and stays stopped
    assert pid_alive(pid)
    (farm.wdir("w1") / "go").write_text("")
    out, _ = slow.communicate(timeout=60)
    assert slow.returncode == 0 and out == b"finished\n"
    assert farm.wait_for(lambda: not pid_alive(pid), 30)
    _, err = stopping.communicate(timeout=30)
    assert stopping.returncode == 0, err
    assert "stopped gracefully" in err
    assert farm.wait_for(lambda: farm.workers()["w1"]["state"] == "not connected", 30)
    log = _log(farm, "w1")
    assert "the master gives this worker no new work" in log
    st = cli("furl-worker", "status", str(farm.wdir("w1")), "--json")
    assert st.returncode == 3 and json.loads(st.stdout)["running"] is False


def test_graceful_stop_of_an_idle_worker_by_signal(farm: Farm) -> None:
    """SIGUSR2 (what a service manager sends) stops an idle worker at once, exit 0."""
    farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", farm.furls["w1"])
    pid = _worker_pid(farm, "w1")
    os.kill(pid, signal.SIGUSR2)
    assert farm.wait_for(lambda: not pid_alive(pid), 20)
    log = _log(farm, "w1")
    assert "telling it to stop" in (farm.mdir / "master.log").read_text()
    assert "shutting down on request of the master" in log


def test_master_side_drain(farm: Farm) -> None:
    farm.start_two()
    pid = _worker_pid(farm, "w1")
    # the command runs until the test lets it end (a fixed sleep could end before
    # the drain on a busy machine): it waits for a file the test makes
    go = farm.tmp / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.1; done; echo done"
    slow = farm.run_popen("w1", "sh", "-c", script,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert farm.wait_for(lambda: farm.procs.find("sh", "-c", script), 30)
    p = farm.master("drain", "w1")
    assert p.returncode == 0, p.stderr
    assert "worker 'w1' is draining" in p.stderr and "1 still run" in p.stderr
    assert farm.run("w1", "true").returncode == 2
    go.touch()
    out, _ = slow.communicate(timeout=60)
    assert out == b"done\n"
    assert farm.wait_for(lambda: not pid_alive(pid), 30)
    assert farm.master("drain", "w2", "--wait", "30").returncode == 0
    assert farm.wait_for(lambda: all(w["state"] == "not connected"
                                     for w in farm.workers().values()), 10)
    unknown = farm.master("drain", "nobody")
    assert unknown.returncode == 2 and "no worker named 'nobody'" in unknown.stderr
    gone = farm.master("drain", "w1")
    assert gone.returncode == 2 and "not connected" in gone.stderr


def test_graceful_stop_timeout_falls_back_to_a_normal_stop(farm: Farm, tmp_path: Path,
                                                            timing: Timing) -> None:
    farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", farm.furls["w1"])
    pid = _worker_pid(farm, "w1")
    slow = farm.run_popen("w1", "sleep", "60", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert farm.wait_for(lambda: farm.procs.find("sleep", "60"), 30)  # it runs
    t0 = time.monotonic()
    p = cli("furl-worker", "stop", str(farm.wdir("w1")), "--graceful", "--timeout", "2")
    assert p.returncode == 0, p.stderr
    assert "not drained within 2 s: stopping it now" in p.stderr
    timing.record("stop --graceful --timeout 2 of a busy worker", time.monotonic() - t0, 30)
    assert farm.wait_for(lambda: not pid_alive(pid), 5)
    slow.wait(60)
    assert slow.returncode != 0
    usage = cli("furl-worker", "stop", str(farm.wdir("w1")), "--timeout", "2")
    assert usage.returncode == 64 and "--graceful" in usage.stderr
    missing = cli("furl-worker", "stop", str(tmp_path / "nope"), "--graceful")
    assert missing.returncode == 3


def test_graceful_stop_of_a_worker_whose_master_is_down(farm: Farm) -> None:
    """Not attached and nothing running: nothing to drain, it stops at once."""
    farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", farm.furls["w1"])
    pid = _worker_pid(farm, "w1")
    farm.stop_master()
    p = cli("furl-worker", "stop", str(farm.wdir("w1")), "--graceful", "--timeout", "20")
    assert p.returncode == 0 and "stopped gracefully" in p.stderr, p.stderr
    assert farm.wait_for(lambda: not pid_alive(pid), 5)
    assert "not attached and nothing runs; stopping now" in _log(farm, "w1")


@pytest_twisted.ensureDeferred
async def test_a_master_that_cannot_drain_is_reported(tmp_path: Path) -> None:
    """An older master answers the drain call with a Violation (no such
    method in its interface): the worker says so and keeps running."""
    from foolscap.api import Violation
    from twisted.internet import defer

    from buildbot_furl.furl import parse_furl
    from buildbot_furl.layout import WorkerPaths
    from buildbot_furl.worker.service import WorkerService

    furl = parse_furl("pb://abcdefghijklmnopqrstuvwxyz234567@tcp:127.0.0.1:1/"
                      "k3bqq4ujkwl7vdoluq3ekz3pzd2d3yrm")
    from twisted.internet.task import Clock

    from buildbot_furl.testing.fakelink import FakeDialer, attach_answer

    dialer = FakeDialer()
    svc = WorkerService(WorkerPaths(str(tmp_path)), furl, clock=Clock(), dial=dialer)
    svc.link.start()
    old_login = dialer.connect()  # an older master: attach works, drain is unknown
    old_login.answer("attach", attach_answer())
    svc.request_drain()
    old_login.fail("drain", Violation("method 'drain' not defined in RIWorkerLogin"))
    await defer.succeed(None)
    assert svc.drain == "unsupported"
    state = json.loads((tmp_path / "furl-worker.state").read_text())
    assert state["drain"] == "unsupported"


def test_the_cli_when_the_master_cannot_drain(tmp_path: Path, procs: Procs,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from buildbot_furl.cli import worker_cmds
    from buildbot_furl.cli.common import Failed

    sleeper = procs.popen("sleep", "60")
    signals: list[int] = []
    real_kill = os.kill  # os.kill is patched below (the module is shared)

    class Pidfile:
        def running_pid(self) -> int | None:
            return sleeper.pid if sleeper.poll() is None else None

    monkeypatch.setattr(worker_cmds, "_pidfile", lambda paths: Pidfile())
    monkeypatch.setattr(worker_cmds.os, "kill", lambda pid, sig: signals.append(sig))
    (tmp_path / "furl-worker.state").write_text(WorkerStatus(
        Attachment.ATTACHED, 0.0, sleeper.pid, "127.0.0.1:1", None, "f",
        Drain.UNSUPPORTED).to_json())
    with pytest.raises(Failed, match="not stopped: the worker keeps running"):
        worker_cmds.stop(str(tmp_path), graceful=True)
    assert signals == [signal.SIGUSR2] and sleeper.poll() is None
    assert "cannot stop it gracefully" in capsys.readouterr().err
    monkeypatch.setattr(worker_cmds.daemon, "stop",
                        lambda pf: real_kill(sleeper.pid, signal.SIGKILL) or sleeper.wait())
    # at once, without one pause: waiting cannot help (the worker is not draining)
    naps: list[float] = []
    monkeypatch.setattr(worker_cmds.time, "sleep", naps.append)
    worker_cmds.stop(str(tmp_path), graceful=True, timeout=30)
    monkeypatch.undo()
    assert naps == []
    assert "stopping it now (--timeout)" in capsys.readouterr().err
    assert sleeper.poll() is not None
