"""Graceful stop under a real Buildbot master: asked by the worker's admin
(``furl-worker stop --graceful``, buildbot-worker's ``allow_shutdown``) or by
Buildbot itself (the worker page's graceful-shutdown button, the data API's
``stop`` action).  The running build finishes, no new build starts on the
worker, then the worker process exits 0 and does not come back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest_twisted
from buildbot.config import BuilderConfig
from buildbot.process.factory import BuildFactory
from buildbot.process.results import SUCCESS
from buildbot.steps.shell import ShellCommand
from buildbot_furl.testing.farm import PROGRAMS

from buildbot_furl.testing.waiting import sleep, wait_for
from test_buildbot_plugin import Env, env_factory, running  # noqa: F401

__all__ = ["env_factory"]  # the fixture, used by name


def gated_factory(gate: Path) -> BuildFactory:
    """One step that runs until ``gate`` exists."""
    f = BuildFactory()
    f.addStep(ShellCommand(name="gated", command=[
        "sh", "-c", f"echo started; until [ -e '{gate}' ]; do sleep 0.1; done; echo finished"]))
    return f


async def _start_gated(env: Env, gate: Path) -> int:
    env.create_worker("fw")
    env.extra_builders.append(lambda: BuilderConfig(
        name="gated", workernames=["fw"], factory=gated_factory(gate)))
    await env.start_master()
    env.start_furl_worker("fw", env.furls["fw"])
    await env.wait_connected("fw")
    brid = await env.force("gated")
    build = await env.build_of(brid)
    return build["buildid"]


async def _worker_row(env: Env) -> dict:
    assert env.master is not None
    return (await env.master.data.get(("workers",), filters=[]))[0]


async def _drains_then_exits(env: Env, buildid: int, gate: Path) -> None:
    """The build runs on; a new one waits; the gate opens: the build ends
    SUCCESS, the worker exits 0 and stays away."""
    deadline = time.monotonic() + 20
    while not (row := await _worker_row(env))["graceful"]:
        assert time.monotonic() < deadline, "Buildbot never marked the worker graceful"
        await sleep(0.1)
    assert row["connected_to"]
    brid = await env.force("quick-fw")
    await sleep(1.0)
    assert env.master is not None
    assert not await env.master.data.get(("buildrequests", brid, "builds"))
    gate.write_text("")
    done = await env.finished(buildid)
    assert done["results"] == SUCCESS
    proc = env.workers["worker-fw"]
    assert await wait_for(lambda: proc.poll() is not None, 30), "the worker did not exit"
    assert proc.returncode == 0
    await sleep(1.0)
    assert not env.connected("fw")
    assert not await env.master.data.get(("buildrequests", brid, "builds"))


@pytest_twisted.ensureDeferred
async def test_worker_asks_for_a_graceful_stop(env_factory: Callable[..., Env]) -> None:
    env = env_factory()
    gate = env.tmp / "go"
    async with running(env):
        buildid = await _start_gated(env, gate)
        await sleep(1.0)
        stopping = env.procs.popen(sys.executable, "-m", PROGRAMS["furl-worker"], "stop",
                                   str(env.tmp / "worker-fw"), "--graceful",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await _drains_then_exits(env, buildid, gate)
        deadline = time.monotonic() + 30
        while stopping.poll() is None and time.monotonic() < deadline:
            await sleep(0.1)
        assert stopping.returncode == 0, stopping.stderr.read() if stopping.stderr else ""
        assert b"stopped gracefully" in (stopping.stderr.read() if stopping.stderr else b"")
        assert "graceful stop asked by its admin" in env.log_text()


@pytest_twisted.ensureDeferred
async def test_buildbots_graceful_shutdown_button(env_factory: Callable[..., Env]) -> None:
    env = env_factory()
    gate = env.tmp / "go"
    async with running(env):
        buildid = await _start_gated(env, gate)
        await sleep(1.0)
        assert env.master is not None
        workerid = env.bb_worker("fw").workerid
        await env.master.data.control("stop", {"reason": "maintenance"}, ("workers", workerid))
        await _drains_then_exits(env, buildid, gate)
        log = (env.tmp / "worker-fw" / "worker.log").read_text()
        assert "shutting down on request of the master" in log
