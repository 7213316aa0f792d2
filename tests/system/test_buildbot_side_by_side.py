"""A real buildbot-worker process and a FURL worker, set up alike (admin, host,
access_uri, numcpus, umask), on one real Buildbot master: what Buildbot's
data API and a build see of each.  Every difference is listed here."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from buildbot.config import BuilderConfig
from buildbot.process.factory import BuildFactory
from buildbot.process.properties import Interpolate
from buildbot.process.results import SUCCESS
from buildbot.steps.shell import ShellCommand
from buildbot_furl.testing.waiting import wait_for
from test_buildbot_plugin import Env, env_factory, running  # noqa: F401 - fixture

from buildbot_furl.testing.farm import cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL X509 objects:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL PKey objects:DeprecationWarning"),
]

BBW = os.path.join(os.path.dirname(sys.executable), "buildbot-worker")
INFO = {"admin": "Ann Admin <ann@example.org>", "host": "rack 3, box 7",
        "access_uri": "ssh://box7.example.org"}
NUMCPUS = 7
SHOW = "admin=%(worker:admin)s|host=%(worker:host)s|access_uri=%(worker:access_uri)s"

#: what the FURL worker's info has and the PB worker's has not (the path of
#: its Python, sent at attach, stays in the FurlConnection)
FURL_ONLY_INFO: set[str] = set()
#: info keys whose values differ because the workers are two directories
PER_DIRECTORY = {"basedir"}


def show_factory() -> BuildFactory:
    f = BuildFactory()
    f.addStep(ShellCommand(name="info", command=["echo", Interpolate(SHOW)]))
    f.addStep(ShellCommand(name="cpus", command=["echo", Interpolate("%(worker:numcpus)s")]))
    f.addStep(ShellCommand(name="umask", command=["sh", "-c", "umask"]))
    return f


def write_info(wdir: Path) -> None:
    for key, value in INFO.items():
        (wdir / "info" / key).write_text(value + "\n")


def start_pb_worker_process(env: Env) -> subprocess.Popen[bytes]:
    """buildbot-worker's own create-worker and start, in a process of its own."""
    wdir = env.tmp / "worker-pbw"
    p = subprocess.run([BBW, "create-worker", "--umask=0o27", f"--numcpus={NUMCPUS}",
                        "--keepalive=0", str(wdir), f"127.0.0.1:{env.pb_port}", "pbw",
                        "pbpass"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    write_info(wdir)
    out = open(env.tmp / "worker-pbw.out", "wb")  # noqa: SIM115
    proc = env.procs.popen(BBW, "start", "--nodaemon", str(wdir), stdout=out,
                           stderr=subprocess.STDOUT, cwd=str(wdir))
    out.close()
    return proc


def create_furl_worker(env: Env) -> Path:
    wdir = env.tmp / "worker-fw"
    cli("furl-worker", "create-worker", str(wdir), "--furl", env.furls["fw"],
        "--admin", INFO["admin"], "--host", INFO["host"], "--access-uri", INFO["access_uri"],
        "--numcpus", str(NUMCPUS), "--umask", "027", check=True)
    return wdir


@pytest.fixture
def side_env(env_factory: Callable[..., Env]) -> Env:  # noqa: F811 - the imported fixture
    env = env_factory(with_pb=True)
    env.create_worker("fw")
    env.extra_builders += [
        lambda: BuilderConfig(name="show-fw", workernames=["fw"], factory=show_factory()),
        lambda: BuilderConfig(name="show-pbw", workernames=["pbw"], factory=show_factory()),
    ]
    return env


@pytest_twisted.ensureDeferred
async def test_pb_and_furl_workers_look_alike_to_buildbot(side_env: Env) -> None:
    env = side_env
    events: dict[str, list[str]] = {"fw": [], "pbw": []}
    async with running(env):
        master = await env.start_master()

        def record(key: tuple[str, ...], msg: dict[str, Any]) -> None:
            events.setdefault(msg["name"], []).append(key[-1])

        consumer = await master.mq.startConsuming(record, ("workers", None, None))
        wdir = create_furl_worker(env)
        env.start_furl_worker("fw", env.furls["fw"], wdir=wdir.name)
        pb = start_pb_worker_process(env)
        await env.wait_connected("fw")
        await env.wait_connected("pbw", timeout=60)

        # -- the workers data API: workerinfo, as the web UI's worker page shows it
        rows = {w["name"]: w for w in await master.data.get(("workers",))}
        fw, pbw = rows["fw"], rows["pbw"]
        assert fw["workerinfo"] == pbw["workerinfo"]  # admin, host, access_uri, version
        assert {k: fw["workerinfo"][k] for k in INFO} == {k: v + "\n" for k, v in INFO.items()}
        same = ("connected_to", "paused", "graceful")  # configured_on: their own builders
        assert {k: fw[k] for k in same} == {k: pbw[k] for k in same}
        assert fw["connected_to"] and not fw["paused"] and not fw["graceful"]
        assert fw.keys() == pbw.keys()

        # -- the worker info Buildbot keeps (and builds read as %(worker:...)s)
        finfo = env.bb_worker("fw").info.asDict()
        pinfo = env.bb_worker("pbw").info.asDict()
        assert set(finfo) - set(pinfo) == FURL_ONLY_INFO
        assert set(pinfo) - set(finfo) == set()
        differ = {k for k in pinfo if k != "numcpus" and finfo[k] != pinfo[k]}
        assert differ == PER_DIRECTORY, differ
        assert finfo["numcpus"] == (NUMCPUS, "Worker")
        # buildbot-worker 4.3 keeps buildbot.tac's numcpus on its Worker service
        # and never gives it to the Bot that answers getWorkerInfo: a PB worker
        # reports the detected count whatever buildbot.tac says
        assert pinfo["numcpus"][0] in (NUMCPUS, multiprocessing.cpu_count())
        print(f"numcpus: FURL worker {finfo['numcpus'][0]}, PB worker {pinfo['numcpus'][0]} "
              f"(buildbot.tac says {NUMCPUS}, detected {multiprocessing.cpu_count()})")

        # -- the same build on both
        results = {}
        for name in ("fw", "pbw"):
            b = await env.run_build(f"show-{name}")
            steps = await env.steps(b["buildid"])
            out = {s["name"]: await env.logs(s["stepid"]) for s in steps}
            results[name] = (b["results"], [(s["name"], s["results"]) for s in steps],
                             {n: "".join(line[1:] for line in logs.get("stdio", "").splitlines(True)
                                         if line.startswith("o"))
                              for n, logs in out.items()})
        for name, (result, steps, _) in results.items():
            assert result == SUCCESS, (name, steps)
        assert results["fw"][:2] == results["pbw"][:2]
        fout, pout = results["fw"][2], results["pbw"][2]
        assert fout["info"] == pout["info"] == \
            f"admin={INFO['admin']}\n|host={INFO['host']}\n|access_uri={INFO['access_uri']}\n\n"
        assert fout["umask"] == pout["umask"] == "0027\n"  # buildbot.tac's umask, and ours
        assert fout["cpus"] == f"{NUMCPUS}\n"
        assert pout["cpus"] == f"{pinfo['numcpus'][0]}\n"

        # -- the same drain: Buildbot's graceful shutdown (the worker page's
        # button) on both; each worker process exits 0, and Buildbot records
        # the same state changes for each
        fproc = env.workers["worker-fw"]
        for name in ("fw", "pbw"):
            await master.data.control("stop", {"reason": "drain"},
                                      ("workers", env.bb_worker(name).workerid))
        assert await wait_for(lambda: fproc.poll() is not None and pb.poll() is not None, 30)
        assert fproc.returncode == pb.returncode == 0
        assert await wait_for(lambda: not env.connected("fw") and not env.connected("pbw"), 30)
        assert await wait_for(lambda: all("disconnected" in e for e in events.values()), 10)
        # connected, state_updated (each build's start and end, the drain), disconnected
        assert events["fw"] == events["pbw"], events
        assert events["fw"][0] == "connected" and events["fw"][-1] == "disconnected"
        rows = {w["name"]: w for w in await master.data.get(("workers",))}
        assert rows["fw"]["connected_to"] == rows["pbw"]["connected_to"] == []
        assert rows["fw"]["graceful"] == rows["pbw"]["graceful"]
        assert rows["fw"]["workerinfo"] == rows["pbw"]["workerinfo"]
        consumer.stopConsuming()
