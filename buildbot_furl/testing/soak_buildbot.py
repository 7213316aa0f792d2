"""The soak's Buildbot half: the build config and the driver (see soak.py).

The master is an unpatched Buildbot ``BuildMaster`` in the caller's process,
on the caller's reactor, configured as a user's master.cfg would be (the
FurlWorker plugin through ``buildbot.plugins``); the FURL workers are real
``furl-worker`` processes, one connection each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from buildbot_furl.testing import soak
from buildbot_furl.testing.faultproxy import FaultProxy
from buildbot_furl.testing.procs import free_port
from buildbot_furl.testing.waiting import sleep
from buildbot_furl.testing.soak import (BLOCKSIZES, CHUNK, COMPOSITE_SIZES, PY, SIZES,
                                        SLOW_SCRIPT, STRING_SIZES, TREE_SCRIPT, warm_up_until,
                                        bad_lines, big_output, big_output_script,
                                        cut_line, furl_via, guesser_argv, must,
                                        payload, Report, rss_kib, RssCheck, run_cli, schedule,
                                        streams, text, tree_files, tree_of, tubid_of,
                                        worker_bad_lines)

# -- the Buildbot build --------------------------------------------------------------------------


def _buildbot() -> Any:
    """Buildbot's modules (imported late: the standalone soak needs none)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from buildbot.schedulers.forcesched import ForceScheduler  # noqa: F401
    from buildbot import plugins
    return plugins


def _steps() -> Any:
    """The soak's own two steps (made late, they subclass Buildbot's)."""
    from buildbot.process import buildstep, logobserver
    from buildbot.process.results import FAILURE, SUCCESS
    from buildbot.steps.worker import CompositeStepMixin
    from twisted.internet import defer

    class _Watch(logobserver.LogLineObserver):
        def __init__(self) -> None:
            super().__init__()
            self.seen: defer.Deferred[None] = defer.Deferred()
            self.out: list[str] = []
            self.header: list[str] = []

        def outLineReceived(self, line: str) -> None:
            self.out.append(line)
            if line.strip() == "started" and not self.seen.called:
                self.seen.callback(None)

        def headerLineReceived(self, line: str) -> None:
            self.header.append(line)

    class InterruptedShell(buildstep.ShellMixin, buildstep.BuildStep):
        """Start a slow command, interrupt it (Buildbot's interruptCommand,
        as a stopped step sends) once it printed 'started'; SUCCESS if it
        ended at once with a nonzero rc, without finishing or timing out."""

        def __init__(self, **kwargs: Any) -> None:
            kwargs = self.setupShellMixin(kwargs)
            super().__init__(**kwargs)
            self.watch = _Watch()
            self.addLogObserver("stdio", self.watch)

        @defer.inlineCallbacks
        def run(self) -> Any:
            cmd = yield self.makeRemoteShellCommand(command=[PY, "-c", SLOW_SCRIPT])
            d = self.runCommand(cmd)
            yield self.watch.seen
            yield defer.ensureDeferred(cmd.interrupt("interrupted on purpose by the soak"))
            yield d
            header = "".join(self.watch.header)
            ok = (cmd.rc not in (0, None) and "finished" not in "".join(self.watch.out)
                  and "timed out" not in header)
            return SUCCESS if ok else FAILURE

    class CompositeChecks(CompositeStepMixin, buildstep.BuildStep):
        """The CompositeStepMixin calls, each checked: mkdir, stat, glob,
        downloadFileContentToWorker and getFileContentFromWorker at boundary
        sizes, rmfile, rmdir.  Mismatches go to the 'problems' log."""

        logEnviron = False  # what CompositeStepMixin's calls send (WorkerBuildStep has it)

        @defer.inlineCallbacks
        def run(self) -> Any:
            yield self.addLogForRemoteCommands("stdio")
            problems = []
            base = "build/comp"
            yield self.runRmdir(base, abandonOnFailure=False)
            yield self.runMkdir(base + "/sub")
            if not (yield self.pathExists(base + "/sub")):
                problems.append("stat: the new directory does not exist")
            for n in COMPOSITE_SIZES:
                want = text(n, f"c{n}")
                yield self.downloadFileContentToWorker(f"comp/f{n}.txt", want,
                                                       abandonOnFailure=True)
                got = yield self.getFileContentFromWorker(f"comp/f{n}.txt",
                                                          abandonOnFailure=True)
                if got != want:
                    problems.append(f"content of {n} bytes came back as {len(got or '')} "
                                    "different bytes")
            found = yield self.runGlob(base + "/*.txt")
            names = sorted(os.path.basename(p) for p in found)
            if names != sorted(f"f{n}.txt" for n in COMPOSITE_SIZES):
                problems.append(f"glob found {names}")
            yield self.runRmFile(base + f"/f{COMPOSITE_SIZES[0]}.txt")
            if (yield self.pathExists(base + f"/f{COMPOSITE_SIZES[0]}.txt")):
                problems.append("rmfile left the file")
            yield self.runRmdir(base)
            if (yield self.pathExists(base)):
                problems.append("rmdir left the directory")
            yield self.addCompleteLog("problems", "\n".join(problems) + "\n")
            return FAILURE if problems else SUCCESS

    return InterruptedShell, CompositeChecks


def soak_factory(data: Path, out: Path, blocksize: int) -> Any:
    """The soak build: every worker-touching step Buildbot ships, at every size."""
    from buildbot.process.factory import BuildFactory
    from buildbot.process.properties import Interpolate
    from buildbot.process.results import SUCCESS
    from buildbot.steps.shell import ShellCommand
    from buildbot.steps.transfer import (DirectoryUpload, FileDownload, FileUpload,
                                         MultipleFileUpload, StringDownload)
    from buildbot.steps.worker import CopyDirectory, MakeDirectory, RemoveDirectory

    InterruptedShell, CompositeChecks = _steps()
    root = str(Path(__file__).resolve().parents[2])
    dest = str(out) + "/%(prop:buildername)s-%(prop:buildnumber)s"
    f = BuildFactory()
    f.addStep(RemoveDirectory(name="clean", dir="build/t"))
    f.addStep(MakeDirectory(name="mkdir", dir="build/t/dl"))
    for n in SIZES:
        f.addStep(FileDownload(name=f"down-{n}", mastersrc=str(data / f"size-{n}.bin"),
                               workerdest=f"t/dl/{n}.bin", blocksize=blocksize))
    for n in SIZES:
        f.addStep(FileUpload(name=f"up-{n}", workersrc=f"t/dl/{n}.bin", blocksize=blocksize,
                             masterdest=Interpolate(f"{dest}/dl/{n}.bin")))
    for n in STRING_SIZES:
        f.addStep(StringDownload(text(n, f"s{n}"), name=f"string-{n}",
                                 workerdest=f"t/s{n}.txt", blocksize=blocksize))
        f.addStep(FileUpload(name=f"string-up-{n}", workersrc=f"t/s{n}.txt",
                             masterdest=Interpolate(f"{dest}/s{n}.txt")))
    f.addStep(ShellCommand(name="big-output", command=[PY, "-c", big_output_script()]))
    f.addStep(ShellCommand(name="rc3", decodeRC={3: SUCCESS},
                           command=[PY, "-c", "import sys; print('rc3'); sys.exit(3)"]))
    f.addStep(ShellCommand(name="timeout", command=[PY, "-c", SLOW_SCRIPT], timeout=2,
                           flunkOnFailure=False, warnOnFailure=False))
    f.addStep(InterruptedShell(name="interrupt", maxTime=25))
    f.addStep(ShellCommand(name="make-tree", command=[PY, "-c", TREE_SCRIPT.format(root=root)]))
    f.addStep(DirectoryUpload(name="up-tree", workersrc="t/tree", blocksize=blocksize,
                              masterdest=Interpolate(f"{dest}/tree")))
    f.addStep(MultipleFileUpload(name="up-multi", workersrcs=["t/tree/a.txt", "t/tree/sub/b.bin",
                                                              "t/tree/sub/deeper"],
                                 blocksize=blocksize, masterdest=Interpolate(f"{dest}/multi")))
    f.addStep(MultipleFileUpload(name="up-glob", workersrcs=["t/tree/*.txt"], glob=True,
                                 masterdest=Interpolate(f"{dest}/glob")))
    f.addStep(CopyDirectory(name="copy", src="build/t/tree", dest="build/t/tree2"))
    f.addStep(DirectoryUpload(name="up-copy", workersrc="t/tree2",
                              masterdest=Interpolate(f"{dest}/tree2")))
    f.addStep(CompositeChecks(name="composite"))
    f.addStep(RemoveDirectory(name="clean-end", dir="build/t"))
    return f


#: the result each step of soak_factory must have (others: SUCCESS)
STEP_RESULTS = {"timeout": 2}  # FAILURE: the command timed out, as it must


def quick_factory(data: Path, out: Path) -> Any:
    """A small build for the rotated worker: one boundary download and back."""
    from buildbot.process.factory import BuildFactory
    from buildbot.process.properties import Interpolate
    from buildbot.steps.shell import ShellCommand
    from buildbot.steps.transfer import FileDownload, FileUpload

    dest = str(out) + "/%(prop:buildername)s-%(prop:buildnumber)s"
    f = BuildFactory()
    f.addStep(ShellCommand(name="hello", command=["echo", "hello"]))
    f.addStep(FileDownload(name="down", mastersrc=str(data / f"size-{CHUNK + 1}.bin"),
                           workerdest="q.bin"))
    f.addStep(FileUpload(name="up", workersrc="q.bin", masterdest=Interpolate(f"{dest}/q.bin")))
    return f


def buildbot_config(basedir: Path, port: int, data: Path, out: Path) -> dict[str, Any]:
    """A master.cfg's BuildmasterConfig for the soak: a FurlWorker per line of
    workers.furls, a soak builder per (worker, blocksize) for the build
    workers, a quick builder for every worker."""
    from buildbot.config import BuilderConfig

    from buildbot_furl import furlsfile

    plugins = _buildbot()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from buildbot.schedulers.forcesched import ForceScheduler
    names = [e.name for e in furlsfile.read(str(basedir / "workers.furls")).entries]
    workers = [plugins.worker.FurlWorker(n, max_builds=1) for n in names]
    builders = [BuilderConfig(name=f"quick-{n}", workernames=[n], factory=quick_factory(data, out))
                for n in names]
    for n in names:
        if n in BUILD_WORKERS:
            builders += [BuilderConfig(name=f"soak-{n}-{i}", workernames=[n],
                                       factory=soak_factory(data, out, bs))
                         for i, bs in enumerate(BLOCKSIZES)]
    return {
        "workers": workers,
        "protocols": {"furl": {"port": f"tcp:{port}:interface=127.0.0.1"}},
        "builders": builders,
        "schedulers": [ForceScheduler(name="force", builderNames=[b.name for b in builders])],
        "buildbotNetUsageData": None,
        "db": {"db_url": f"sqlite:///{basedir / 'state.sqlite'}"},
        "title": "furl soak",
    }


BUILD_WORKERS = ("w1", "w2")  # w1 behind the cut link, w2 beside the guesser
ROTATED = "w3"


def check_build_files(out: Path, builder: str, number: int) -> list[str]:
    """What the build uploaded, against what it must be; [] if all is exact."""
    d = out / f"{builder}-{number}"
    problems = []

    def same(rel: str, want: bytes) -> None:
        p = d / rel
        if not p.is_file():
            problems.append(f"{builder}#{number}: {rel} is missing")
        elif p.read_bytes() != want:
            problems.append(f"{builder}#{number}: {rel} differs ({p.stat().st_size} bytes, "
                            f"want {len(want)})")

    for n in SIZES:
        same(f"dl/{n}.bin", payload(n))
    for n in STRING_SIZES:
        same(f"s{n}.txt", text(n, f"s{n}").encode())
    tree = tree_files()
    for sub in ("tree", "tree2"):
        if (d / sub).is_dir():
            got = tree_of(d / sub)
            if got != tree:
                diff = sorted(k for k in set(got) | set(tree) if got.get(k) != tree.get(k))
                problems.append(f"{builder}#{number}: {sub} differs in {diff}")
        else:
            problems.append(f"{builder}#{number}: {sub} is missing")
    same("multi/a.txt", tree["a.txt"])
    same("multi/b.bin", tree["sub/b.bin"])
    same("multi/deeper/empty", b"")
    same("glob/a.txt", tree["a.txt"])
    same("glob/c.txt", tree["c.txt"])
    return problems



# -- the driver -------------------------------------------------------------------------


def _in_thread(f: Callable[..., Any], *args: Any) -> Any:
    from twisted.internet import threads
    return threads.deferToThread(f, *args)


#: lines the rotated worker's logs may hold about its planned revocation
def _rotation_line(line: str) -> bool:
    return bool(re.search(r"revoked|rotated|no longer works|detached", line, re.I))


#: what the in-process master's RSS may grow after warm-up (see _check_logs_and_detaches)
IN_PROCESS_SLACK_KIB = 96 * 1024
IN_PROCESS_SLACK_RATIO = 0.35


class BuildbotSoak:
    """Builds back to back on w1 (behind a FaultProxy) and w2 (beside the
    guesser), with the faults of soak.schedule; w3 is revoked and rotated.

    ``procs`` starts processes (``popen(*argv, **kw)``) and stops them by
    pid later; call :meth:`run` on a running reactor, then :meth:`close`."""

    def __init__(self, tmp: Path, procs: Any, seconds: float, cycle: float | None = None,
                 build_timeout: float = 120,
                 say: Callable[[str], None] = lambda msg: None) -> None:
        self.tmp = tmp
        self.procs = procs
        self.seconds = seconds
        self.cycle = cycle
        self.build_timeout = build_timeout
        self.say = say
        self.basedir = tmp / "bbmaster"
        self.data = tmp / "data"
        self.out = tmp / "out"
        self.port = free_port()
        self.proxy = FaultProxy(self.port)
        self.report = Report("buildbot")
        self.master: Any = None
        self.furls: dict[str, str] = {}
        self.wdirs: dict[str, Path] = {}
        self.t0 = 0.0
        self.detaches: dict[str, list[float]] = {}
        self.planned_detach: dict[str, int] = {}
        self.guesser: Any = None
        self._conns: dict[str, Any] = {}
        self._loops: list[Any] = []
        self._log: Any = None
        self._observer: Any = None
        self._signals: dict[int, Any] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- setting up -------------------------------------------------------------------
    def _create(self) -> None:
        """(in a thread) the master directory, the FURLs, the workers' directories."""
        soak.write_sources(self.data)
        self.out.mkdir(exist_ok=True)
        must(run_cli("furl-master", "create-master", "-d", str(self.basedir), "--location",
                     f"tcp:127.0.0.1:{self.port}"), "create-master")
        for name in (*BUILD_WORKERS, ROTATED):
            furl = must(run_cli("furl-master", "create-worker", "-d", str(self.basedir), name),
                        "create-worker").strip()
            if name == "w1":
                furl = furl_via(furl, self.proxy.port)  # w1 dials through the proxy
            self.furls[name] = furl
            wdir = self.tmp / f"worker-{name}"
            ffile = self.tmp / f"{name}.furl"
            fd = os.open(ffile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(furl + "\n")
            must(run_cli("furl-worker", "create-worker", str(wdir), "--furl-file", str(ffile)),
                 "furl-worker create-worker")
            self.wdirs[name] = wdir

    async def _start_master(self) -> None:
        from buildbot.config.master import MasterConfig
        from buildbot.interfaces import IConfigLoader
        from buildbot.master import BuildMaster
        from twisted.internet import reactor
        from twisted.logger import globalLogPublisher, textFileLogObserver
        from zope.interface import implementer

        @implementer(IConfigLoader)
        class Loader:
            def loadConfig(loader) -> Any:  # noqa: N805 - the soak is the outer self
                return MasterConfig.loadFromDict(
                    buildbot_config(self.basedir, self.port, self.data, self.out), "<soak>")

        self._log = open(self.tmp / "master.log", "a", encoding="utf-8")  # noqa: SIM115
        self._observer = textFileLogObserver(self._log)
        globalLogPublisher.addObserver(self._observer)
        self._signals = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1,
                                                          signal.SIGTERM, signal.SIGINT)}
        # 'buildbot upgrade-master': a database in a file is made by it
        from buildbot.scripts.upgrade_master import upgradeDatabase
        await upgradeDatabase({"basedir": str(self.basedir), "quiet": True},
                              Loader().loadConfig())
        m = BuildMaster(str(self.basedir), reactor=reactor, config_loader=Loader())
        self.master = m
        # BuildMaster stops the reactor on a startup error: keep ours running
        with mock.patch.object(reactor, "stop") as stop:
            await m.startService()
        if stop.called:
            raise AssertionError(f"the Buildbot master did not start, see {self.tmp}/master.log")

    def _start_worker(self, name: str) -> None:
        out = open(self.tmp / f"worker-{name}.out", "ab")  # noqa: SIM115
        self.procs.popen(PY, "-m", "buildbot_furl.cli.worker", "start", str(self.wdirs[name]),
                         "--nodaemon", "--wait", "0", stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def conn(self, name: str) -> Any:
        w = self.master.workers.workers.get(name) if self.master else None
        return getattr(w, "conn", None)

    async def _wait(self, pred: Callable[[], Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            await sleep(0.1)
        return bool(pred())

    def log_text(self) -> str:
        self._log.flush()
        return (self.tmp / "master.log").read_text(errors="replace")

    # -- watching -----------------------------------------------------------------------
    def _watch(self) -> None:
        """Every tick: a worker whose Buildbot connection went away (or was
        replaced) detached; every second, the master's RSS."""
        for name in (*BUILD_WORKERS, ROTATED):
            c = self.conn(name)
            old = self._conns.get(name)
            if old is not None and c is not old:
                self.detaches.setdefault(name, []).append(self.now())
            self._conns[name] = c

    def _sample(self) -> None:
        self.report.rss.append((round(self.now(), 1), rss_kib()))

    # -- builds --------------------------------------------------------------------------
    async def build(self, builder: str) -> tuple[int, dict[str, Any] | None]:
        """Force a build on ``builder`` and wait for it: (number, build) or
        (0, None) if it did not end within build_timeout."""
        from buildbot.data import resultspec
        from buildbot.process.results import RETRY
        m = self.master
        _bsid, brids = await m.data.control(
            "force", {"builderNames": [builder], "reason": "soak"}, ("forceschedulers", "force"))
        brid = list(brids.values())[0]
        deadline = time.monotonic() + self.build_timeout
        while time.monotonic() < deadline:
            builds = await m.data.get(
                ("builds",), filters=[resultspec.Filter("buildrequestid", "eq", [brid])])
            if builds and builds[-1]["complete"]:
                if builds[-1]["results"] == RETRY:
                    # one try per request: a retried one would pile up beside the next
                    await m.data.control("cancel", {"reason": "soak: no retry"},
                                         ("buildrequests", brid))
                return builds[-1]["number"], builds[-1]
            await sleep(0.2)
        try:
            await m.data.control("cancel", {"reason": "soak: too slow"},
                                 ("buildrequests", brid))
        except Exception as e:  # noqa: BLE001 - the report says the build hung anyway
            self.report.problem(f"could not cancel the hung build request {brid}: {e}")
        return 0, None

    async def _logs(self, stepid: int) -> dict[str, str]:
        out = {}
        for lg in await self.master.data.get(("steps", stepid, "logs")):
            c = await self.master.data.get(("logs", lg["logid"], "contents"))
            out[lg["name"]] = c["content"] if c else ""
        return out

    async def check_soak_build(self, builder: str, number: int, b: dict[str, Any]) -> list[str]:
        from buildbot.process.results import Results
        problems = []
        name = f"{builder}#{number}"
        steps = await self.master.data.get(("builds", b["buildid"], "steps"))
        for s in steps:
            want = STEP_RESULTS.get(s["name"], 0)
            if s["results"] != want:
                logs = await self._logs(s["stepid"])
                tail = " | ".join(ln for ln in "".join(logs.values()).splitlines()[-4:])
                problems.append(f"{name}: step {s['name']} {Results[s['results']]} "
                                f"({s['state_string']}): {tail[-300:]}")
            elif s["name"] in ("big-output", "rc3", "timeout"):
                got = streams((await self._logs(s["stepid"])).get("stdio", ""))
                if s["name"] == "big-output" and (got["o"], got["e"]) != big_output():
                    problems.append(f"{name}: big-output's log differs ({len(got['o'])} "
                                    f"bytes of stdout, {len(got['e'])} of stderr)")
                if s["name"] == "rc3" and (got["o"] != "rc3\n" or "exit code 3" not in got["h"]):
                    problems.append(f"{name}: rc3's log is not what the command said")
                if s["name"] == "timeout" and ("timed out" not in got["h"]
                                               or got["o"] != "started\n"):
                    problems.append(f"{name}: the timeout step's log: {got['h'][-200:]!r}")
        if b["results"] != 0:
            problems.append(f"{name}: build {Results[b['results']]}")
        if b["results"] == 0:
            problems += check_build_files(self.out, builder, number)
        return problems

    async def _loop(self, worker: str, end: float) -> None:
        """Soak builds on ``worker`` back to back until ``end``."""
        i = 0
        while self.now() < end:
            builder = f"soak-{worker}-{i % len(BLOCKSIZES)}"
            i += 1
            t0 = time.monotonic()
            number, b = await self.build(builder)
            self.report.took("build", time.monotonic() - t0)
            self.report.builds += 1
            if b is None:
                self.report.problem(f"{builder}: a build did not end within "
                                    f"{self.build_timeout:.0f} s (t={self.now():.0f} s); "
                                    f"no more builds on {worker}")
                return
            problems = await self.check_soak_build(builder, number, b)
            self.report.results[worker] = self.report.results.get(worker, 0) + 1
            if problems:
                self.report.problems += problems
            else:
                self.report.ok += 1
                self.report.bytes += BUILD_BYTES
            shutil.rmtree(self.out / f"{builder}-{number}", ignore_errors=True)

    async def quick(self, worker: str) -> None:
        builder = f"quick-{worker}"
        number, b = await self.build(builder)
        self.report.builds += 1
        if b is None or b["results"] != 0:
            self.report.problem(f"{builder}: {'no end' if b is None else b['results']} "
                                f"(t={self.now():.0f} s)")
            return
        q = self.out / f"{builder}-{number}" / "q.bin"
        if not q.is_file() or q.read_bytes() != payload(CHUNK + 1):
            self.report.problem(f"{builder}#{number}: q.bin is not what was downloaded")
            return
        self.report.ok += 1

    # -- faults ---------------------------------------------------------------------------
    async def fault(self, what: str) -> None:
        t = self.now()
        if what == "guess":
            tubid = tubid_of(self.furls["w2"])
            self.guesser = self.procs.popen(*guesser_argv(tubid, self.port),
                                            stdout=subprocess.PIPE)
            self.report.fault(t, "guess", "forged FURLs from 127.0.0.1 until the end")
        elif what == "cut":
            before = self.proxy.cuts
            self.proxy.cut()
            await self._wait(lambda: self.proxy.cuts > before, 10)
            self.report.fault(t, "cut", f"w1's link reset ({self.proxy.cuts - before} conn)")
        elif what == "rotate":
            await self.rotate()
        elif what == "reconfig":
            done = "configuration update complete"
            before = self.log_text().count(done)
            os.kill(os.getpid(), signal.SIGHUP)  # 'buildbot reconfig' sends this
            ok = await self._wait(lambda: self.log_text().count(done) > before, 60)
            self.report.fault(t, "reconfig", "SIGHUP" + ("" if ok else ": did not end in 60 s"))
            if not ok:
                self.report.problem("the SIGHUP reconfig did not end within 60 s")

    async def rotate(self) -> None:
        t = self.now()
        new = self.tmp / f"{ROTATED}-new.furl"
        self.planned_detach[ROTATED] = self.planned_detach.get(ROTATED, 0) + 1
        p = await _in_thread(run_cli, "furl-master", "rotate-worker", "-d", str(self.basedir),
                             ROTATED, "-o", str(new))
        if p.returncode != 0:
            self.report.problem(f"rotate-worker failed: {p.stderr.strip()[-300:]}")
            return
        dropped = await self._wait(lambda: self.conn(ROTATED) is None, 30)
        p = await _in_thread(run_cli, "furl-worker", "set-furl", str(self.wdirs[ROTATED]),
                             "--furl-file", str(new), "--wait", "30")
        new.unlink()
        back = await self._wait(lambda: self.conn(ROTATED) is not None, 30)
        self.report.fault(t, "rotate", f"w3 dropped: {dropped}, set-furl rc {p.returncode}, "
                          f"back: {back}")
        if not dropped:
            self.report.problem("the rotated worker's connection was not dropped in 30 s")
        if p.returncode != 0 or not back:
            self.report.problem(f"set-furl after rotate-worker: rc {p.returncode}, attached "
                                f"{back}: {p.stderr.strip()[-300:]}")
            return
        await self.quick(ROTATED)

    async def _faults(self) -> None:
        for at, what in schedule(self.seconds, self.cycle):
            while self.now() < at:
                await sleep(min(0.5, at - self.now()))
            self.say(f"t={self.now():.0f} s: {what}")
            await self.fault(what)

    # -- the whole run ---------------------------------------------------------------------
    async def run(self) -> Report:
        from twisted.internet import defer, task

        self.proxy.start()
        await _in_thread(self._create)
        await self._start_master()
        for name in (*BUILD_WORKERS, ROTATED):
            self._start_worker(name)
        for name in (*BUILD_WORKERS, ROTATED):
            if not await self._wait(lambda n=name: self.conn(n) is not None, 60):
                raise AssertionError(f"worker {name} did not attach in 60 s; see {self.tmp}")
        self.t0 = time.monotonic()
        watch = task.LoopingCall(self._watch)
        watch.start(0.1)
        rss = task.LoopingCall(self._sample)
        rss.start(1.0)
        try:
            await self.quick(ROTATED)
            loops = [defer.Deferred.fromCoroutine(self._loop(w, self.seconds))
                     for w in BUILD_WORKERS]
            loops.append(defer.Deferred.fromCoroutine(self._faults()))
            await defer.DeferredList(loops, consumeErrors=False)
            for d in loops:
                d.addErrback(lambda f: self.report.problem(f"the soak itself failed: {f!r}"))
        finally:
            watch.stop()
            rss.stop()
        self.report.seconds = self.now()
        await self._end_guesser()
        self._check_logs_and_detaches()
        return self.report

    async def _end_guesser(self) -> None:
        g, self.guesser = self.guesser, None
        if g is None:
            return
        g.terminate()
        line = await _in_thread(g.stdout.readline)
        with contextlib.suppress(ValueError):
            self.report.guesser = json.loads(line)
        if self.report.guesser.get("accepted"):
            self.report.problem(f"the guesser got in: {self.report.guesser}")

    def _check_logs_and_detaches(self) -> None:
        r = self.report
        for name in (*BUILD_WORKERS, ROTATED):
            n = len(self.detaches.get(name, []))
            planned = self.planned_detach.get(name, 0)
            if n > planned:
                r.problem(f"{name} detached from Buildbot {n} time(s) (planned: {planned}), "
                          f"at t={self.detaches[name]}")
        # The Buildbot master runs in this process, beside the soak's own byte-exact
        # checks (whole files read back) and Buildbot's database: its RSS moves by
        # tens of MiB with them (seen: 242 -> 287 -> 242 MiB), so a run of a minute
        # can only catch a gross leak here; flatness is judged by the long runs of
        # bench/soak, and by the standalone half's separate master process.
        if p := RssCheck(r.rss, warm_up_until(r), slack_kib=IN_PROCESS_SLACK_KIB,
                         slack_ratio=IN_PROCESS_SLACK_RATIO).problem():
            r.problem(f"master {p}")
        text_ = self.log_text()
        r.problems += [f"master.log: {ln}" for ln in bad_lines(text_, BUILD_WORKERS,
                                                                cut_line("w1"))]
        r.problems += [f"master.log: {ln}" for ln in bad_lines(
            text_, (ROTATED,), _rotation_line) if ln not in bad_lines(text_, BUILD_WORKERS)]
        for name in (*BUILD_WORKERS, ROTATED):
            expected = _rotation_line if name == ROTATED else (lambda line: False)
            for f in (self.wdirs[name] / "worker.log", self.tmp / f"worker-{name}.out"):
                if f.exists():
                    seen = worker_bad_lines(f.read_text(errors="replace"), expected)
                    r.problems += [f"{f.name} ({name}): {ln}" for ln in seen]

    async def close(self) -> None:
        from twisted.logger import globalLogPublisher
        try:
            if self.guesser is not None:
                await self._end_guesser()
            m, self.master = self.master, None
            if m is not None and m.running:
                workers = list(m.workers.workers.values())
                await m.stopService()
                for w in workers:
                    w.stopMissingTimer()
        finally:
            self.proxy.stop()
            if self._observer is not None:
                globalLogPublisher.removeObserver(self._observer)
                self._log.close()
            for s, h in self._signals.items():
                signal.signal(s, h)
        await sleep(0.01)


BUILD_BYTES = (2 * sum(SIZES) + 2 * sum(STRING_SIZES) + 3 * sum(map(len, tree_files().values()))
               + 2 * sum(COMPOSITE_SIZES))
