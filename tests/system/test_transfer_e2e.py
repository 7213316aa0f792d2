"""Transfers the way they are used: many files of odd sizes, one after
another, to a real worker, with a command running meanwhile (standalone),
and a Buildbot build with several FileDownload/StringDownload steps.
Nothing a well-behaved worker does may show in the master's log as a
violation, and nothing may cut it off."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from buildbot.config import BuilderConfig
from buildbot.process.factory import BuildFactory
from buildbot.process.results import SUCCESS
from buildbot.steps.transfer import FileDownload, StringDownload
from buildbot_furl.testing.farm import Farm
from test_buildbot_plugin import Env, env_factory, running  # noqa: F401 - a fixture

from buildbot_furl.protocol.transfer import CONTRACT

pytestmark = [
    pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL X509 objects:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL PKey objects:DeprecationWarning"),
]

C = CONTRACT.chunk
AHEAD = CONTRACT.ahead
#: none a multiple of the read-ahead window but 0 and AHEAD itself
SIZES = [0, 1, 12, 100, 65537, C - 1, C + 1, 2 * C + 3, 3 * C - 1, 3 * C + 1, AHEAD - 1,
         AHEAD, AHEAD + 1, AHEAD + C // 2, 2 * AHEAD - 1, 2 * AHEAD + 1, 777_777,
         3 * C // 2, 5 * C // 2, 7 * C // 2]
#: what the master logs about a worker it refuses or cuts off
BAD_LINES = ("refused a", "refused an", "protocol violation", "cut off")


def _bad_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(b in line for b in BAD_LINES)]


def test_twenty_puts_of_odd_sizes_beside_a_running_command(farm: Farm, tmp_path: Path) -> None:
    farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", farm.furls["w1"])
    stop = tmp_path / "stop"
    run = farm.run_popen("w1", "sh", "-c",
                         f"echo started; while [ ! -e '{stop}' ]; do sleep 0.1; done; "
                         "echo survived", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rng = random.Random(15)
    sent = {}
    for i, size in enumerate(SIZES):
        src = tmp_path / f"f{i}.bin"
        data = rng.randbytes(size)
        src.write_bytes(data)
        p = farm.master("put", "w1", str(src), f"in/f{i}.bin", timeout=120)
        assert p.returncode == 0, (size, p.stderr)
        sent[f"f{i}.bin"] = data
    stop.touch()
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0 and out == b"started\nsurvived\n", (run.returncode, out, err)
    got = {p.name: p.read_bytes() for p in (farm.wdir("w1") / "in").iterdir()}
    assert got == sent  # byte-exact, and nothing else left there
    log = (farm.mdir / "master.log").read_text()
    assert _bad_lines(log) == []
    assert "detached" not in log  # the worker was never cut off


def _downloads_factory(data: Path, sizes: list[int]) -> BuildFactory:
    f = BuildFactory()
    for i, size in enumerate(sizes):
        f.addStep(FileDownload(name=f"down-{i}", mastersrc=str(data / f"d{i}.bin"),
                               workerdest=f"d{i}.bin", blocksize=[16384, C, C + 1][i % 3]))
        f.addStep(StringDownload("s" * size, name=f"string-{i}", workerdest=f"s{i}.txt"))
    return f


@pytest_twisted.ensureDeferred
async def test_a_build_of_many_small_downloads_succeeds_with_no_violation(
        env_factory: Callable[..., Env]) -> None:
    """The issue's build: several FileDownload (and StringDownload) steps
    of sizes that are not multiples of the read-ahead window, in ONE build."""
    env = env_factory()
    env.create_worker("fw")
    sizes = [12, 0, 1, C - 1, C + 1, 3 * C + 7, 100_000]
    rng = random.Random(4)
    blobs = [rng.randbytes(n) for n in sizes]
    for i, blob in enumerate(blobs):
        (env.data / f"d{i}.bin").write_bytes(blob)
    env.extra_builders.append(lambda: BuilderConfig(
        name="downloads", workernames=["fw"], factory=_downloads_factory(env.data, sizes)))
    async with running(env):
        await env.start_master()
        env.start_furl_worker("fw", env.furls["fw"])
        await env.wait_connected("fw")
        for _ in range(2):  # twice: nothing adds up over a worker's life either
            b = await env.run_build("downloads", timeout=120)
            steps = await env.steps(b["buildid"])
            assert b["results"] == SUCCESS, [(s["name"], s["state_string"]) for s in steps]
        build = env.tmp / "worker-fw" / "downloads" / "build"
        for i, blob in enumerate(blobs):
            assert (build / f"d{i}.bin").read_bytes() == blob
            assert (build / f"s{i}.txt").read_text() == "s" * sizes[i]
        assert _bad_lines(env.log_text()) == []
        assert env.connected("fw")
