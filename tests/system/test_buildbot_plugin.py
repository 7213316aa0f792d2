"""The FurlWorker plugin on a real Buildbot 4.3 master.

The master is Buildbot's own ``BuildMaster``, in this process, with an
in-memory sqlite database and an unpatched Buildbot.  FURL workers are
real ``furl-worker`` processes on 127.0.0.1 (killed by pid at the end of
every test); the PB worker that gives the reference results is
buildbot-worker's own ``Worker`` service, in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import pytest_twisted
from buildbot.config import BuilderConfig
from buildbot.config.master import MasterConfig
from buildbot.data import resultspec
from buildbot.interfaces import IConfigLoader
from buildbot.master import BuildMaster
from buildbot.process.factory import BuildFactory
from buildbot.process.properties import Interpolate
from buildbot.process.results import CANCELLED, EXCEPTION, RETRY, SUCCESS, Results
from buildbot.steps.shell import ShellCommand
from buildbot.steps.transfer import DirectoryUpload, FileDownload, FileUpload
from buildbot.worker import Worker
from buildbot_worker.pb import Worker as PBWorkerService
from twisted.internet import defer, reactor, threads
from twisted.logger import globalLogPublisher, textFileLogObserver
from zope.interface import implementer

with warnings.catch_warnings():
    # buildbot.util.ssl star-imports twisted.internet.ssl (Twisted 26.10 deprecation)
    warnings.filterwarnings("ignore", message=r"twisted\.internet\.ssl\.ProtocolNegotiation",
                            category=DeprecationWarning)
    from buildbot.schedulers.forcesched import ForceScheduler

from buildbot_furl.testing.farm import cli
from buildbot_furl.testing.procs import Procs, free_port, processes
from buildbot_furl.testing.timing import Timing
from buildbot_furl.testing.waiting import sleep, wait_for

from buildbot_furl import furlsfile
from buildbot_furl.buildbot import FurlHub, FurlWorker, load_workers
from buildbot_furl.testing.faultproxy import FaultProxy
from buildbot_furl.testing.soak import streams
from buildbot_furl.furl import new_swissnum
from buildbot_furl.privatefiles import write_private

pytestmark = [
    # every in-memory master start runs alembic, which warns about its own config
    pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning"),
    # foolscap hands pyOpenSSL objects to pyOpenSSL 26 (the master's Tub, in this process)
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL X509 objects:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL PKey objects:DeprecationWarning"),
]

PY = sys.executable
BIG_LINES = 60_000  # ~5.6 MB of stdout
BIG_SCRIPT = (
    "import sys\n"
    "w = sys.stdout.write\n"
    f"for i in range({BIG_LINES}):\n"
    "    w('line %06d ' % i + 'x' * 80 + '\\n')\n"
    "sys.stdout.flush()\n"
    "sys.stderr.write('done on stderr\\n')\n"
)
TREE_SCRIPT = (
    "import os, random\n"
    "data = open('in.bin', 'rb').read()\n"
    "open('out.bin', 'wb').write(data[::-1])\n"
    "os.makedirs('tree/sub/deeper', exist_ok=True)\n"
    "open('tree/a.txt', 'w').write('hello tree\\n' * 1000)\n"
    "open('tree/sub/b.bin', 'wb').write(random.Random(7).randbytes(1_500_000))\n"
    "open('tree/sub/deeper/empty', 'wb').close()\n"
)
SLOW_SCRIPT = "import time; print('started', flush=True); time.sleep(60)"
INPUT_SIZE = 3 * 1024 * 1024 + 123


# -- a master in this process ---------------------------------------------------


@implementer(IConfigLoader)
class FactoryLoader:
    """Builds a fresh config dict at every load, like re-reading master.cfg."""

    def __init__(self, make: Callable[[], dict[str, Any]]) -> None:
        self.make = make

    def loadConfig(self) -> MasterConfig:
        return MasterConfig.loadFromDict(self.make(), "<test>")


def xfer_factory(data: Path) -> BuildFactory:
    dest = str(data) + "/%(prop:buildername)s"
    f = BuildFactory()
    f.addStep(ShellCommand(name="big-output", command=[PY, "-c", BIG_SCRIPT]))
    f.addStep(FileDownload(name="download", mastersrc=str(data / "input.bin"),
                           workerdest="in.bin"))
    f.addStep(ShellCommand(name="make-tree", command=[PY, "-c", TREE_SCRIPT]))
    f.addStep(FileUpload(name="upload", workersrc="out.bin",
                         masterdest=Interpolate(dest + "/out.bin")))
    f.addStep(DirectoryUpload(name="upload-dir", workersrc="tree",
                              masterdest=Interpolate(dest + "/tree")))
    return f


def quick_factory() -> BuildFactory:
    f = BuildFactory()
    f.addStep(ShellCommand(name="hello", command=["echo", "hello"]))
    return f


SNOOP = ('env; tr "\\0" "\\n" < /proc/$PPID/environ; tr "\\0" " " < /proc/$PPID/cmdline; '
         'echo; ps -eo args')


def snoop_factory() -> BuildFactory:
    """A step that prints all a build could find out about the worker's own
    environment and command line (and the step's environment in its header)."""
    f = BuildFactory()
    f.addStep(ShellCommand(name="snoop", command=["sh", "-c", SNOOP]))
    return f


def slow_factory() -> BuildFactory:
    f = BuildFactory()
    f.addStep(ShellCommand(name="slow", command=[PY, "-c", SLOW_SCRIPT]))
    return f


class Env:
    """A Buildbot master directory with the furl-master files in it."""

    def __init__(self, tmp: Path, procs: Procs, with_pb: bool = False,
                 create: bool = True, proxy: FaultProxy | None = None) -> None:
        self.tmp = tmp
        self.procs = procs
        self.basedir = tmp / "bbmaster"
        self.data = tmp / "data"
        self.data.mkdir()
        self.port = free_port()
        self.pb_port = free_port() if with_pb else None
        self.master: BuildMaster | None = None
        self.pb_worker: PBWorkerService | None = None
        self.workers: dict[str, Any] = {}  # name -> Popen
        self.extra_workers: list[Any] = []
        self.snoop = False  # a 'snoop-NAME' builder per FURL worker (see SNOOP)
        self.extra_builders: list[Callable[[], BuilderConfig]] = []  # made at each load
        self.furls: dict[str, str] = {}  # what create_worker made
        self.worker_kwargs: dict[str, Any] = {}  # for load_workers
        self.furl_options: dict[str, Any] = {}  # more of c['protocols']['furl']
        self.failed = False
        #: when set, FURL workers dial this proxy (the FURLs' location), which dials the master
        self.proxy = proxy
        if create:
            dial = proxy.port if proxy is not None else self.port
            cli("furl-master", "create-master", "-d", str(self.basedir), "--location",
                f"tcp:127.0.0.1:{dial}", check=True)
        else:
            self.basedir.mkdir()
        self._log = open(tmp / "master.log", "a", encoding="utf-8")  # noqa: SIM115
        self._observer = textFileLogObserver(self._log)
        globalLogPublisher.addObserver(self._observer)
        self._signals = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1,
                                                          signal.SIGTERM)}

    # -- files and config --------------------------------------------------------
    @property
    def furls_path(self) -> Path:
        return self.basedir / "workers.furls"

    def create_worker(self, name: str) -> str:
        furl = cli("furl-master", "create-worker", "-d", str(self.basedir), name,
                   check=True).stdout.strip()
        self.furls[name] = furl
        return furl

    def furl_names(self) -> list[str]:
        return [e.name for e in furlsfile.read(str(self.furls_path)).entries]

    def config(self) -> dict[str, Any]:
        fws = (load_workers(str(self.basedir), **self.worker_kwargs)
               if self.furls_path.exists() else [])
        fws += [FurlWorker(name) for name in self.extra_workers]
        names = [w.name for w in fws]
        workers: list[Any] = list(fws)
        builders = [
            BuilderConfig(name=f"quick-{n}", workernames=[n], factory=quick_factory())
            for n in names
        ]
        if self.snoop:
            builders += [BuilderConfig(name=f"snoop-{n}", workernames=[n],
                                       factory=snoop_factory()) for n in names]
        builders += [make() for make in self.extra_builders]
        protocols: dict[str, Any] = {"furl": {"port": f"tcp:{self.port}:interface=127.0.0.1",
                                              **self.furl_options}}
        if "fw" in names:
            builders += [
                BuilderConfig(name="xfer-furl", workernames=["fw"], factory=xfer_factory(self.data)),
                BuilderConfig(name="slow-furl", workernames=["fw"], factory=slow_factory()),
            ]
        if self.pb_port is not None:
            workers.append(Worker("pbw", "pbpass"))
            protocols["pb"] = {"port": f"tcp:{self.pb_port}:interface=127.0.0.1"}
            builders += [
                BuilderConfig(name="xfer-pb", workernames=["pbw"], factory=xfer_factory(self.data)),
                BuilderConfig(name="slow-pb", workernames=["pbw"], factory=slow_factory()),
            ]
        return {
            "workers": workers,
            "protocols": protocols,
            "builders": builders,
            "schedulers": [ForceScheduler(name="force", builderNames=[b.name for b in builders])],
            "buildbotNetUsageData": None,
            "db": {"db_url": "sqlite://"},
            "title": "furl plugin test",
        }

    # -- master -----------------------------------------------------------------
    async def start_master(self, expect_failure: bool = False) -> BuildMaster:
        m = BuildMaster(str(self.basedir), reactor=reactor,
                        config_loader=FactoryLoader(self.config))
        self.master = m
        # BuildMaster stops the reactor on a startup error: keep ours running
        with mock.patch.object(reactor, "stop") as stop:
            await m.startService()
        self.failed = stop.called
        if expect_failure:
            assert stop.called, "the master started"
        else:
            assert not stop.called, f"master failed to start, see {self.tmp / 'master.log'}"
        return m

    def log_text(self) -> str:
        self._log.flush()
        return (self.tmp / "master.log").read_text()

    async def stop_master(self) -> None:
        m, self.master = self.master, None
        if m is None or not m.running:
            return
        workers = list(m.workers.workers.values())
        if not self.failed:
            await m.stopService()
        else:
            # after a failed start Buildbot would stop the process; stop what runs
            with contextlib.suppress(Exception):
                await m.stopService()
            if m.db.running:
                await m.db.stopService()
        # Buildbot (PB workers too) re-arms a worker's one-hour "missing" timer
        # when the master's shutdown disconnects it; the process would be
        # gone by then, ours is not
        for w in workers:
            w.stopMissingTimer()

    async def close(self) -> None:
        try:
            if self.pb_worker is not None and self.pb_worker.running:
                await self.pb_worker.stopService()
            await self.stop_master()
        finally:
            globalLogPublisher.removeObserver(self._observer)
            self._log.close()
            for s, h in self._signals.items():
                signal.signal(s, h)
        # The master's last step (database pool stop) resumes us from the
        # reactor's thread-call loop; end the test from a timed call instead,
        # so that the loop finishes before pytest-twisted switches away
        # (else a later reactor.iterate(), e.g. trial's, runs it again).
        await sleep(0.01)

    # -- workers ----------------------------------------------------------------
    def start_furl_worker(self, name: str, furl: str, wdir: str | None = None,
                          wait: float = 60) -> Any:
        d = self.tmp / (wdir or f"worker-{name}")
        d.mkdir(exist_ok=True)
        furl_file = d.parent / f"{d.name}.furl"
        write_private(str(furl_file), furl + "\n")
        out = open(self.tmp / f"{d.name}.out", "wb")  # noqa: SIM115
        p = self.procs.popen(PY, "-m", "buildbot_furl.cli.worker", "start", str(d),
                             "--nodaemon", "--furl-file", str(furl_file), "--wait", str(wait),
                             stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.workers[d.name] = p
        return p

    def start_pb_worker(self) -> None:
        d = self.tmp / "worker-pbw"
        d.mkdir()
        assert self.pb_port is not None
        self.pb_worker = PBWorkerService("127.0.0.1", self.pb_port, "pbw", "pbpass", str(d),
                                         keepalive=0)
        self.pb_worker.startService()

    def bb_worker(self, name: str) -> Any:
        assert self.master is not None
        return self.master.workers.workers.get(name)

    def connected(self, name: str) -> bool:
        w = self.bb_worker(name)
        return w is not None and w.conn is not None

    async def wait_connected(self, name: str, timeout: float = 30) -> None:
        ok = await wait_for(lambda: self.connected(name), timeout)
        assert ok, f"worker {name} did not attach within {timeout} s; see {self.tmp}"

    # -- builds -----------------------------------------------------------------
    async def force(self, builder: str) -> int:
        """Force a build on ``builder``; returns its build request id."""
        assert self.master is not None
        _bsid, brids = await self.master.data.control(
            "force", {"builderNames": [builder], "reason": "test"}, ("forceschedulers", "force"))
        return list(brids.values())[0]

    async def build_of(self, brid: int, timeout: float = 30) -> dict[str, Any]:
        assert self.master is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            builds = await self.master.data.get(
                ("builds",), filters=[resultspec.Filter("buildrequestid", "eq", [brid])])
            if builds:
                return builds[-1]
            await sleep(0.1)
        raise AssertionError(f"build request {brid} did not start within {timeout} s")

    async def finished(self, buildid: int, timeout: float = 60) -> dict[str, Any]:
        assert self.master is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = await self.master.data.get(("builds", buildid))
            if b["complete"]:
                return b
            await sleep(0.1)
        raise AssertionError(f"build {buildid} did not finish within {timeout} s")

    async def run_build(self, builder: str, timeout: float = 60) -> dict[str, Any]:
        brid = await self.force(builder)
        b = await self.build_of(brid)
        return await self.finished(b["buildid"], timeout)

    async def steps(self, buildid: int) -> list[dict[str, Any]]:
        assert self.master is not None
        return await self.master.data.get(("builds", buildid, "steps"))

    async def logs(self, stepid: int) -> dict[str, str]:
        assert self.master is not None
        out = {}
        for lg in await self.master.data.get(("steps", stepid, "logs")):
            c = await self.master.data.get(("logs", lg["logid"], "contents"))
            out[lg["name"]] = c["content"] if c else ""
        return out






def expected_stdout() -> str:
    return "".join(f"line {i:06d} " + "x" * 80 + "\n" for i in range(BIG_LINES))


def tree_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def env_factory(tmp_path: Path, procs: Procs) -> Callable[..., Env]:
    """``Env(...)`` in this test's tmp dir; ``procs`` kills its workers by pid."""

    def make(**kw: Any) -> Env:
        return Env(tmp_path, procs, **kw)

    return make


@pytest.fixture
def cut_env(env_factory: Callable[..., Env]) -> Iterator[Env]:
    """An Env whose FURL workers reach the master through a FaultProxy."""
    port = free_port()
    with FaultProxy(port) as proxy:
        env = env_factory(proxy=proxy)
        env.port = port
        yield env


@contextlib.asynccontextmanager
async def running(env: Env) -> Any:
    try:
        yield env
    finally:
        await env.close()


# -- the tests --------------------------------------------------------------------


def test_entry_point() -> None:
    """``from buildbot.plugins import worker; worker.FurlWorker`` (setup.py entry point)."""
    from importlib.metadata import entry_points

    if not any(ep.name == "FurlWorker" for ep in entry_points(group="buildbot.worker")):
        pytest.skip("entry point buildbot.worker:FurlWorker not installed (pip install -e .)")
    from buildbot.plugins import worker

    assert worker.FurlWorker is FurlWorker


def test_load_workers_and_config_errors(tmp_path: Path) -> None:
    from buildbot.config.errors import ConfigErrors

    p = tmp_path / "workers.furls"
    tubid = "a" * 32
    write_private(str(p), f"w1 pb://{tubid}@tcp:h:1/{'s' * 20}\n"
                                f"# a comment\nw2 pb://{tubid}@tcp:h:1/{'t' * 20}  # box\n")
    ws = load_workers(str(p), max_builds=2)
    assert [w.name for w in ws] == ["w1", "w2"]
    assert all(isinstance(w, FurlWorker) and w.password is None for w in ws)
    assert ws[0].max_builds == 2
    # the secret is kept nowhere in the worker's config
    assert "s" * 20 not in repr(ws[0].getConfigDict()) and "s" * 20 not in repr(vars(ws[0]))
    assert [w.name for w in load_workers(str(tmp_path))] == ["w1", "w2"]  # a directory works
    p.write_text("w1 not-a-furl\n")
    with pytest.raises(ConfigErrors, match=r"workers.furls:1"):
        load_workers(str(p))
    with pytest.raises(ConfigErrors, match="no password"):
        FurlWorker("w1", password="x")
    with pytest.raises(ConfigErrors, match="malformed FURL"):
        FurlWorker("w1", furl="pb://nope")


def _summary(steps: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Step names, results and texts, with the worker's name taken out."""
    return [(s["name"], s["results"],
             s["state_string"].replace("worker fw ", "worker W ")
             .replace("worker pbw ", "worker W ")) for s in steps]


async def _both_attached(env: Env) -> None:
    await env.start_master()
    env.start_furl_worker("fw", env.furls["fw"])
    env.start_pb_worker()
    await env.wait_connected("fw")
    await env.wait_connected("pbw")


@pytest_twisted.ensureDeferred
async def test_build_on_furl_worker_matches_pb(env_factory: Callable[..., Env]) -> None:
    """ShellCommand with 5 MB of output, FileDownload, FileUpload and
    DirectoryUpload: SUCCESS, byte-exact files, and the same step results
    and output as on a plain PB worker."""
    env = env_factory(with_pb=True)
    env.create_worker("fw")
    source = random.Random(42).randbytes(INPUT_SIZE)
    (env.data / "input.bin").write_bytes(source)
    async with running(env):
        await _both_attached(env)
        conn = env.bb_worker("fw").conn
        assert type(conn).__name__ == "FurlConnection"
        assert conn.info["worker_commands"]["shell"]

        results = {}
        for kind in ("furl", "pb"):
            t0 = time.monotonic()
            b = await env.run_build(f"xfer-{kind}")
            elapsed = time.monotonic() - t0
            steps = await env.steps(b["buildid"])
            assert b["results"] == SUCCESS, (kind, [(s["name"], s["state_string"]) for s in steps])
            logs = {s["name"]: await env.logs(s["stepid"]) for s in steps}
            results[kind] = (steps, logs, elapsed)
            out = env.data / f"xfer-{kind}"
            assert (out / "out.bin").read_bytes() == source[::-1]
            assert tree_files(out / "tree") == {
                "a.txt": b"hello tree\n" * 1000,
                "sub/b.bin": random.Random(7).randbytes(1_500_000),
                "sub/deeper/empty": b"",
            }
            big = streams(logs["big-output"]["stdio"])
            assert big["o"] == expected_stdout()
            assert big["e"] == "done on stderr\n"

        fsteps, flogs, ftime = results["furl"]
        psteps, plogs, ptime = results["pb"]
        print(f"xfer build: furl {ftime:.2f} s, pb {ptime:.2f} s")
        assert _summary(fsteps) == _summary(psteps)
        assert flogs.keys() == plogs.keys()
        for step in flogs:
            assert flogs[step].keys() == plogs[step].keys(), step
            for name in flogs[step]:
                f, p = streams(flogs[step][name]), streams(plogs[step][name])
                assert (f["o"], f["e"]) == (p["o"], p["e"]), (step, name)


@pytest_twisted.ensureDeferred
async def test_stopped_build_ends_as_on_pb(env_factory: Callable[..., Env],
                                           timing: Timing) -> None:
    """A step stopped mid-run ends the same way on both, and the FURL worker
    is still attached and usable afterwards."""
    env = env_factory(with_pb=True)
    env.create_worker("fw")
    async with running(env):
        await _both_attached(env)
        stopped = {}
        for kind in ("furl", "pb"):
            brid = await env.force(f"slow-{kind}")
            b = await env.build_of(brid)

            async def started(buildid: int = b["buildid"]) -> bool:
                steps = await env.steps(buildid)
                if not steps or steps[-1]["name"] != "slow":
                    return False
                logs = await env.logs(steps[-1]["stepid"])
                return "started" in streams(logs.get("stdio", ""))["o"]

            deadline = time.monotonic() + 20
            while not await started():
                assert time.monotonic() < deadline, f"slow step never started on {kind}"
                await sleep(0.1)
            t0 = time.monotonic()
            assert env.master is not None
            await env.master.data.control("stop", {"reason": "stopped by the test"},
                                          ("builds", b["buildid"]))
            done = await env.finished(b["buildid"], timeout=60)
            timing.record(f"a stopped build ends ({kind})", time.monotonic() - t0, 10)
            stopped[kind] = (done["results"], _summary(await env.steps(b["buildid"])))
        assert stopped["furl"] == stopped["pb"]
        assert stopped["furl"][0] == CANCELLED, Results[stopped["furl"][0]]
        assert env.connected("fw")
        b = await env.run_build("quick-fw")
        assert b["results"] == SUCCESS


@pytest_twisted.ensureDeferred
async def test_master_restart_worker_reattaches(env_factory: Callable[..., Env]) -> None:
    env = env_factory()
    furl = env.create_worker("fw")
    (env.data / "input.bin").write_bytes(b"x")
    async with running(env):
        await env.start_master()
        p = env.start_furl_worker("fw", furl)
        await env.wait_connected("fw")
        assert (await env.run_build("quick-fw"))["results"] == SUCCESS
        await env.stop_master()
        assert p.poll() is None  # the worker waits for its master
        await sleep(0.5)
        await env.start_master()  # same basedir, same port, fresh database
        t0 = time.monotonic()
        await env.wait_connected("fw", timeout=40)
        print(f"reattached {time.monotonic() - t0:.1f} s after the master restarted")
        b = await env.run_build("quick-fw")
        assert b["results"] == SUCCESS
        hello = [s for s in await env.steps(b["buildid"]) if s["name"] == "hello"]
        logs = await env.logs(hello[0]["stepid"])
        assert streams(logs["stdio"])["o"] == "hello\n"
        assert p.poll() is None


def policy_factory(data: Path) -> BuildFactory:
    """Steps that each ask for something the worker's policy refuses, and
    two that it allows."""
    make = ("import os\nopen('big.bin', 'wb').write(b'x' * 3_000_000)\n"
            "os.makedirs('tree', exist_ok=True)\n"
            "open('tree/b.bin', 'wb').write(b'y' * 1_500_000)\n")
    f = BuildFactory()
    f.addStep(ShellCommand(name="not-allowed", command=["echo", "hello"]))
    f.addStep(ShellCommand(name="make-files", command=[PY, "-c", make]))
    f.addStep(FileUpload(name="upload-big", workersrc="big.bin", haltOnFailure=False,
                         masterdest=str(data / "policy-big.bin")))
    f.addStep(DirectoryUpload(name="upload-tree", workersrc="tree", haltOnFailure=False,
                              masterdest=str(data / "policy-tree")))
    f.addStep(FileDownload(name="download-big", mastersrc=str(data / "input.bin"),
                           workerdest="in.bin", haltOnFailure=False))
    f.addStep(ShellCommand(name="sneaky-env", command=[PY, "-c", "pass"],
                           env={"SNEAKY": "1"}))
    f.addStep(ShellCommand(name="fine", command=[PY, "-c", "print('still fine')"],
                           env={"LANG": "C"}))
    return f


@pytest.mark.expect_log(r"refused '\w+' by the policy", r"refused by the worker's policy")  # staged
@pytest_twisted.ensureDeferred
async def test_the_workers_policy_fails_steps_with_its_reason(
        env_factory: Callable[..., Env]) -> None:
    """A worker whose admin allows only Python, 1M up, 2M down and LANG:
    each step that asks for more fails, its log says why, nothing it
    refused lands on either side, and the steps it allows still run."""
    env = env_factory()
    furl = env.create_worker("fw")
    (env.data / "input.bin").write_bytes(b"z" * INPUT_SIZE)
    env.extra_builders.append(lambda: BuilderConfig(
        name="policy-fw", workernames=["fw"], factory=policy_factory(env.data)))
    wdir = env.tmp / "worker-fw"
    wdir.mkdir()
    write_private(str(wdir / "furl-worker.policy"),
                  f"[commands]\nallow = {PY}\n[limits]\nmax_upload = 1M\nmax_download = 2M\n"
                  "[environment]\nallow = LANG\n")
    async with running(env):
        await env.start_master()
        env.start_furl_worker("fw", furl)
        await env.wait_connected("fw")
        b = await env.run_build("policy-fw")
        steps = {s["name"]: s for s in await env.steps(b["buildid"])}
        results = {name: Results[s["results"]] for name, s in steps.items()
                   if name != "worker_preparation"}
        assert results == {"not-allowed": "failure", "make-files": "success",
                           "upload-big": "failure", "upload-tree": "failure",
                           "download-big": "failure", "sneaky-env": "failure",
                           "fine": "success"}, results
        assert Results[b["results"]] == "failure"

        async def stderr(name: str) -> str:
            return streams((await env.logs(steps[name]["stepid"]))["stdio"])["e"]

        assert "worker 'fw' refused 'shell': program 'echo' is not one the worker's policy " \
               "allows" in await stderr("not-allowed")
        assert "more than the worker's policy lets it upload (1M)" in await stderr("upload-big")
        assert "(max_upload)" in await stderr("upload-tree")
        assert "(max_download)" in await stderr("download-big")
        assert "does not let the master set SNEAKY" in await stderr("sneaky-env")
        assert streams((await env.logs(steps["fine"]["stepid"]))["stdio"])["o"] == \
            "still fine\n"
        assert not (env.data / "policy-big.bin").exists()
        assert not list(wdir.rglob("in.bin"))  # a download cut short is not kept
        assert env.connected("fw")


@pytest.mark.expect_log(r"refused duplicate attach of worker fw\b")  # staged
@pytest_twisted.ensureDeferred
async def test_second_worker_with_same_furl_is_refused(env_factory: Callable[..., Env]) -> None:
    env = env_factory()
    furl = env.create_worker("fw")
    async with running(env):
        await env.start_master()
        first = env.start_furl_worker("fw", furl)
        await env.wait_connected("fw")
        conn = env.bb_worker("fw").conn
        second = env.start_furl_worker("fw", furl, wdir="worker-fw-again", wait=20)
        ok = await wait_for(lambda: second.poll() is not None, 25)
        assert ok, "the second worker was not refused"
        assert second.returncode != 0
        out = (env.tmp / "worker-fw-again.out").read_text()
        assert "already attached" in out, out
        assert first.poll() is None
        assert env.bb_worker("fw").conn is conn  # the first one was never disturbed
        assert (await env.run_build("quick-fw"))["results"] == SUCCESS


@pytest_twisted.ensureDeferred
async def test_furl_master_cli_sees_a_buildbot_master(env_factory: Callable[..., Env]) -> None:
    env = env_factory()
    furl = env.create_worker("fw")
    env.create_worker("idle")
    d = str(env.basedir)
    async with running(env):
        await env.start_master()
        env.start_furl_worker("fw", furl)
        await env.wait_connected("fw")
        # the CLI runs in a thread: this test's reactor is the master's
        p = await threads.deferToThread(cli, "furl-master", "list-workers", "--json", "-d", d)
        rows = {w["name"]: w for w in json.loads(p.stdout)["workers"]}
        assert rows["fw"]["connected"] is True and rows["idle"]["connected"] is False
        p = await threads.deferToThread(cli, "furl-master", "status", "-d", d)
        assert p.returncode == 0 and "as part of a Buildbot master" in p.stdout
        assert "1 of 2 worker(s) connected" in p.stdout
        p = await threads.deferToThread(cli, "furl-master", "run", "-d", d, "fw", "--", "true")
        assert p.returncode == 2 and "not available on a Buildbot master" in p.stderr
        (env.basedir / "buildbot.tac").write_text("# as 'buildbot create-master' makes\n")
        for cmd in ("start", "stop"):
            p = await threads.deferToThread(cli, "furl-master", cmd, "-d", d)
            assert p.returncode != 0 and f"use 'buildbot {cmd}'" in p.stderr
        assert env.connected("fw")
    assert not (env.basedir / "private" / "admin.furl").exists()
    p = cli("furl-master", "status", "-d", d)
    assert p.returncode == 3


@pytest_twisted.ensureDeferred
async def test_a_buildbot_master_serves_its_furl_metrics(env_factory: Callable[..., Env]) -> None:
    """c['protocols']['furl']['metrics_listen']: the plugin's figures over HTTP."""
    env = env_factory()
    port = free_port()
    env.furl_options = {"metrics_listen": f"tcp:{port}:interface=127.0.0.1"}
    furl = env.create_worker("fw")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()

    async with running(env):
        await env.start_master()
        env.start_furl_worker("fw", furl)
        await env.wait_connected("fw")
        build = await env.run_build("quick-fw")
        assert build["results"] == 0
        text = await threads.deferToThread(scrape)  # the test's reactor is the master's
        assert 'role="buildbot"' in text
        assert 'buildbot_furl_worker_attached{worker="fw"} 1.0' in text
        assert 'buildbot_furl_attaches_total{kind="new"} 1.0' in text
        done = [line for line in text.splitlines()
                if line.startswith('buildbot_furl_commands_total{result="completed"}')]
        assert done and float(done[0].split()[-1]) >= 1  # the build's steps
        assert furl.rsplit("/", 1)[1] not in text and "pb://" not in text


@pytest_twisted.ensureDeferred
async def test_a_buildbot_master_holds_invites_open(env_factory: Callable[..., Env]) -> None:
    """furl-master invite on a Buildbot master: the plugin serves the mailbox
    (c['protocols']['furl']), the worker claims its FURL with the code, and
    after a reconfig runs builds."""
    env = env_factory()
    mport = free_port()
    mailbox = f"ws://127.0.0.1:{mport}/v1"
    env.furl_options = {"mailbox_listen": f"tcp:{mport}:interface=127.0.0.1",
                        "mailbox_url": mailbox}
    env.create_worker("idle")  # Buildbot will not start without a worker
    d = str(env.basedir)
    async with running(env):
        m = await env.start_master()
        p = await threads.deferToThread(cli, "furl-master", "invite", "-d", d, "fw")
        assert p.returncode == 0, p.stderr
        code = p.stdout.strip()
        assert "furl-worker create-worker DIR --code CODE --mailbox " + mailbox in p.stderr
        wdir = env.tmp / "invited"
        p = await threads.deferToThread(cli, "furl-worker", "create-worker", str(wdir),
                                        "--code", code, "--mailbox", mailbox)
        assert p.returncode == 0, p.stderr
        assert "invite for worker fw claimed by" in env.log_text()
        assert code not in env.log_text()
        furl = (wdir / "master.furl").read_text().strip()
        assert env.furl_names() == ["idle", "fw"] and furl not in env.log_text()
        await m.reconfig()  # master.cfg's load_workers() reads workers.furls
        env.start_furl_worker("fw", furl)
        await env.wait_connected("fw")
        assert (await env.run_build("quick-fw"))["results"] == SUCCESS


# staged: fw2 attaches before master.cfg configures it, and is revoked at the end
@pytest.mark.expect_log(r"refused worker fw2: master.cfg configures no FurlWorker",
                        r"worker fw2: session ended \(attach refused\)",
                        r"dropping connection of worker fw2 \(attach refused\)",
                        r"revoked or rotated FURL of worker fw2")
@pytest_twisted.ensureDeferred
async def test_reconfig_adds_worker_and_revocation_drops_it(
        env_factory: Callable[..., Env]) -> None:
    env = env_factory()
    furl = env.create_worker("fw")
    async with running(env):
        m = await env.start_master()
        hub = next(s for s in m.services if isinstance(s, FurlHub))
        env.start_furl_worker("fw", furl)
        await env.wait_connected("fw")
        # the admin hard-edits workers.furls, then runs 'buildbot reconfig'
        tubid = furl.split("//", 1)[1].split("@", 1)[0]
        furl2 = f"pb://{tubid}@tcp:127.0.0.1:{env.port}/{new_swissnum()}"
        with open(env.furls_path, "a", encoding="utf-8") as f:
            f.write(f"fw2 {furl2}  # added by hand\n")
        # the master reads the edit within reload_interval (1 s); a worker that
        # dials before that is refused as unknown (seen once, in CI's matrix)
        assert await wait_for(lambda: "worker fw2 added" in env.log_text(), 10)
        # a worker the master.cfg does not know yet is refused...
        p2 = env.start_furl_worker("fw2", furl2, wait=0)
        refused = "refused worker fw2: master.cfg configures no FurlWorker"
        assert await wait_for(lambda: refused in env.log_text(), 30)  # not a pause
        assert env.bb_worker("fw2") is None
        assert p2.poll() is None  # ...but keeps trying
        await m.reconfig()
        assert env.bb_worker("fw2") is not None
        assert any(h is hub for h in m.services)  # still the one hub
        await env.wait_connected("fw2", timeout=40)
        assert (await env.run_build("quick-fw2"))["results"] == SUCCESS
        # the admin removes fw2's line: its live connection is dropped at once
        lines = [ln for ln in env.furls_path.read_text().splitlines(keepends=True)
                 if not ln.startswith("fw2 ")]
        write_private(str(env.furls_path), "".join(lines))
        t0 = time.monotonic()
        ok = await wait_for(lambda: not env.connected("fw2"), 10)
        assert ok, "revoked worker still connected"
        print(f"revoked worker dropped after {time.monotonic() - t0:.1f} s")
        await sleep(1.5)
        assert not env.connected("fw2")  # and it does not come back
        assert env.connected("fw")
        assert os.stat(env.furls_path).st_mode & 0o777 == 0o600
        assert stat.S_IMODE(os.stat(env.basedir / "private").st_mode) == 0o700


# staged (no furl-master.conf); Buildbot itself logs the failed start with a traceback
@pytest.mark.expect_log(r"while starting BuildMaster")
@pytest_twisted.ensureDeferred
async def test_startup_errors_are_clear(env_factory: Callable[..., Env]) -> None:
    # a Buildbot master dir without 'furl-master create-master'
    env = env_factory(create=False)
    env.extra_workers = ["fw"]
    async with running(env):
        await env.start_master(expect_failure=True)
        text = env.log_text()
        assert "has no furl-master.conf" in text and "furl-master create-master -d" in text
        assert not any(isinstance(s, FurlHub) for s in env.master.services)
        await env.stop_master()


@pytest_twisted.ensureDeferred
async def test_port_in_use_keeps_the_master_and_pb_workers_up(
        env_factory: Callable[..., Env]) -> None:
    """A FURL port already in use: the master starts anyway, PB workers work,
    one clear log line; once the port is free a reconfig binds it and the
    FURL worker attaches."""
    import socket

    env = env_factory(with_pb=True)
    furl = env.create_worker("fw")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", env.port))
    blocker.listen()
    try:
        async with running(env):
            m = await env.start_master()
            text = env.log_text()
            assert text.count(f"cannot listen on tcp:{env.port}:interface=127.0.0.1") == 1
            assert "BuildMaster startup failed" not in text and "Traceback" not in text
            env.start_pb_worker()
            await env.wait_connected("pbw")
            env.start_furl_worker("fw", furl, wait=0)
            await sleep(1)
            assert not env.connected("fw")
            blocker.close()
            await m.reconfig()
            assert "the port" in env.log_text() and "is free now" in env.log_text()
            await env.wait_connected("fw")
            assert (await env.run_build("quick-fw"))["results"] == SUCCESS
    finally:
        blocker.close()


@pytest_twisted.ensureDeferred
async def test_first_furl_worker_by_reconfig_then_port_change(
        env_factory: Callable[..., Env]) -> None:
    """A PB-only master gets its first FurlWorker by 'buildbot reconfig'; a
    later port change moves the listener and keeps live connections."""
    import socket

    env = env_factory(with_pb=True)
    furl = env.create_worker("fw")
    hidden = env.basedir / "later.furls"
    env.furls_path.rename(hidden)
    async with running(env):
        m = await env.start_master()
        assert not any(isinstance(s, FurlHub) for s in m.services)
        hidden.rename(env.furls_path)
        await m.reconfig()
        hub = next(s for s in m.services if isinstance(s, FurlHub))
        env.start_furl_worker("fw", furl)
        await env.wait_connected("fw")
        old = env.port
        env.port = free_port()
        await m.reconfig()
        assert hub.settings is not None and hub.settings.port.startswith(f"tcp:{env.port}:")
        socket.create_connection(("127.0.0.1", env.port), timeout=5).close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", old), timeout=5).close()
        assert env.connected("fw")
        assert (await env.run_build("quick-fw"))["results"] == SUCCESS


async def _db_text(master: BuildMaster) -> str:
    """Every row of every table of the master's database, as text."""
    import sqlalchemy as sa

    def dump(conn: Any) -> str:
        out = []
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                out.append(repr(tuple(row)))
        return "\n".join(out)

    return await master.db.pool.do(dump)


@pytest_twisted.ensureDeferred
async def test_furl_never_reaches_builds_logs_or_database(
        env_factory: Callable[..., Env]) -> None:
    """Four workers, each given its FURL another way (--furl, --furl-file,
    $FURL_WORKER_FURL, DIR/master.furl), each runs a build that prints its
    environment, the worker's /proc environ and cmdline, and ps: no swissnum
    in any step log, the worker info, any table of the database or any log."""
    env = env_factory()
    env.snoop = True
    ways = {"fwa": "--furl", "fwb": "--furl-file", "fwc": "env", "fwd": "master.furl"}
    given = {name: env.create_worker(name) for name in ways}
    secrets = [f.rsplit("/", 1)[1] for f in given.values()]
    async with running(env):
        m = await env.start_master()
        for name, way in ways.items():
            wd = env.tmp / f"worker-{name}"
            args: list[str] = []
            extra_env: dict[str, str] = {}
            if way == "master.furl":
                cli("furl-worker", "create-worker", str(wd), "--furl", given[name], check=True)
            else:
                wd.mkdir()
            if way == "--furl":
                args = ["--furl", given[name]]
            elif way == "--furl-file":
                ff = env.tmp / f"{name}.furl"
                write_private(str(ff), given[name] + "\n")
                args = ["--furl-file", str(ff)]
            elif way == "env":
                extra_env = {"FURL_WORKER_FURL": given[name]}
            p = await threads.deferToThread(cli, "furl-worker", "start", str(wd), *args,
                                            "--wait", "0", env=extra_env)
            env.procs.track_pidfile(wd / "furl-worker.pid")
            assert p.returncode == 0, p.stderr
        for name in ways:
            await env.wait_connected(name)
        seen = []
        for name in ways:
            b = await env.run_build(f"snoop-{name}")
            assert b["results"] == SUCCESS
            for step in await env.steps(b["buildid"]):
                for text in (await env.logs(step["stepid"])).values():
                    seen.append(text)
        stdio = "".join(seen)
        assert "PATH=" in stdio and "environment:" in stdio  # the snooping did work
        workers = await m.data.get(("workers",))
        seen.append(repr(workers))
        seen.append(await _db_text(m))
        seen.append(repr({n: env.bb_worker(n).worker_environ for n in ways}))
        seen.append(env.log_text())
        for log in env.tmp.rglob("*.log"):
            seen.append(log.read_text(errors="replace"))
        everything = "\n".join(seen)
        for secret in secrets:
            assert secret not in everything
        assert "FURL_WORKER_FURL" not in stdio


# -- sessions: a cut link is not a lost worker -------------------------------------


async def _cut_during(env: Env, cuts: int, low: int, high: int,
                      until: Callable[[], bool]) -> int:
    """Reset the worker's connection after a random number of bytes, up to
    ``cuts`` times (each once the previous one happened), while not ``until()``."""
    assert env.proxy is not None
    first = env.proxy.cuts
    while env.proxy.cuts - first < cuts and not until():
        before = env.proxy.cuts
        env.proxy.cut_after(random.randint(low, high))
        if not await wait_for(lambda: env.proxy.cuts > before or until(), 60):
            break
        # the next budget goes to the worker's next connection
        await wait_for(lambda: env.proxy.open_connections() > 0 or until(), 60)
    env.proxy.cut_after(1 << 62)
    return env.proxy.cuts - first


def _texts(logs: dict[str, dict[str, str]]) -> dict[tuple[str, str], tuple[str, str, str]]:
    """Each log's stdout, stderr and header text, the header without its
    timing lines (which differ between any two runs)."""
    out = {}
    for step, by_name in logs.items():
        for name, content in by_name.items():
            s = streams(content)
            header = "".join(ln for ln in s["h"].splitlines(keepends=True)
                             if "elapsedTime" not in ln and "command timed out" not in ln)
            out[(step, name)] = (s["o"], s["e"], header)
    return out


@pytest_twisted.ensureDeferred
async def test_a_build_survives_three_cuts_with_identical_logs_and_files(
        cut_env: Env) -> None:
    """The same build twice on one FURL worker, once undisturbed and once
    with its connection reset three times mid-build: both SUCCESS, the
    same logs, byte-identical files, and Buildbot never saw a disconnect."""
    env = cut_env
    env.create_worker("fw")
    source = random.Random(43).randbytes(INPUT_SIZE)
    (env.data / "input.bin").write_bytes(source)
    async with running(env):
        await env.start_master()
        env.start_furl_worker("fw", env.furls["fw"])
        await env.wait_connected("fw")
        conn = env.bb_worker("fw").conn
        results = {}
        for cuts in (0, 3):
            brid = await env.force("xfer-furl")
            b = await env.build_of(brid)
            finished = await env.master.data.get(("builds", b["buildid"]))  # type: ignore[union-attr]
            done = 0
            if cuts:
                async def over(buildid: int = b["buildid"]) -> bool:
                    return (await env.master.data.get(("builds", buildid)))["complete"]  # type: ignore[union-attr]

                flag = {"over": False}

                async def watch() -> None:
                    while not flag["over"]:
                        flag["over"] = await over()
                        await sleep(0.2)

                watcher = defer.Deferred.fromCoroutine(watch())
                done = await _cut_during(env, cuts, 20_000, 1_500_000, lambda: flag["over"])
                await watcher
            finished = await env.finished(b["buildid"], timeout=120)
            steps = await env.steps(b["buildid"])
            assert finished["results"] == SUCCESS, [(s["name"], s["state_string"]) for s in steps]
            logs = {s["name"]: await env.logs(s["stepid"]) for s in steps}
            out = env.data / "xfer-furl"
            files = ((out / "out.bin").read_bytes(), tree_files(out / "tree"))
            results[cuts] = (_summary(steps), _texts(logs), files, done)
        assert results[3][3] >= 2, "the cuts came too late to land in the build"
        assert results[0][0] == results[3][0]
        assert results[0][1] == results[3][1]
        assert results[0][2] == results[3][2]
        assert results[3][2][0] == source[::-1]
        assert env.bb_worker("fw").conn is conn  # the same connection all along


@pytest_twisted.ensureDeferred
async def test_a_cut_longer_than_the_grace_period_is_a_lost_worker(cut_env: Env) -> None:
    """Beyond the grace period it ends as a lost worker does, and the
    worker ends the orphaned step's process when it learns its session is gone."""
    env = cut_env
    env.worker_kwargs = {"session_grace": 2}
    env.create_worker("fw")
    async with running(env):
        await env.start_master()
        env.start_furl_worker("fw", env.furls["fw"])
        await env.wait_connected("fw")
        brid = await env.force("slow-furl")
        b = await env.build_of(brid)
        ok = await wait_for(lambda: bool(_slow_steps(env)), 30)
        assert ok, "the slow step never started"
        orphans = set(_slow_steps(env))
        assert env.proxy is not None
        env.proxy.refuse(True)
        env.proxy.cut()
        finished = await env.finished(b["buildid"], timeout=60)
        assert finished["results"] in (RETRY, EXCEPTION), Results[finished["results"]]
        assert not env.connected("fw")
        env.proxy.refuse(False)
        # the worker comes back, learns its session is gone, and ends the
        # step's process (Buildbot then retries the build on it)
        ok = await wait_for(lambda: not orphans & set(_slow_steps(env)), 60)
        assert ok, "the step's process outlived its session"
        await env.wait_connected("fw", timeout=60)


def _slow_steps(env: Env) -> list[int]:
    """This test's slow step processes (run in its FURL worker's directory)."""
    return processes(PY, "-c", SLOW_SCRIPT, within=env.tmp / "worker-fw")
