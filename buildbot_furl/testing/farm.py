"""The tests' master and workers: a real furl-master and furl-workers, each
CLI call a new process, every daemon stopped by pid at the end.

:func:`cli` runs ``furl-master``/``furl-worker`` once; :class:`Farm` is a
master directory with helpers to start workers against it (the tests'
``farm``, ``cut_farm`` and ``two`` fixtures hand one out).
:class:`~buildbot_furl.testing.rig.Rig` is the same idea for the benches,
which time what it does rather than check it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from buildbot_furl.testing.faultproxy import FaultProxy
from buildbot_furl.testing.logcheck import LOGS
from buildbot_furl.testing.procs import Procs, child_env, free_port, wait_for

T = TypeVar("T")

#: the module each command line runs as (``python -m``), by its installed name
PROGRAMS = {"furl-master": "buildbot_furl.cli.master", "furl-worker": "buildbot_furl.cli.worker"}


def argv(prog: str, *args: str) -> list[str]:
    """The argv of ``furl-master ARGS`` or ``furl-worker ARGS`` (``prog``), run
    by this Python from this checkout."""
    return [sys.executable, "-m", PROGRAMS[prog], *args]


def cli(prog: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``furl-master``/``furl-worker`` as a new process, to its end."""
    p = subprocess.run(argv(prog, *args), capture_output=True, text=True,
                       env=child_env(env), timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{prog} {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


class Farm:
    """A master directory plus helpers to start workers against it."""

    def __init__(self, tmp: Path, procs: Procs, proxy: FaultProxy | None = None) -> None:
        self.tmp = tmp
        self.procs = procs
        self.port = free_port()
        #: when set, workers dial this proxy (the FURLs' location), which dials the master
        self.proxy = proxy
        self.mdir = tmp / "master"
        self.secrets: set[str] = set()  # swissnums handed out: never in a log
        self.furls: dict[str, str] = {}  # worker name -> the FURL create_worker made

    def master(self, *args: str, timeout: float = 60,
               check: bool = False) -> subprocess.CompletedProcess[str]:
        return cli("furl-master", *args, "-d", str(self.mdir), timeout=timeout, check=check)

    def master_argv(self, command: str, *args: str) -> list[str]:
        """The argv of ``furl-master COMMAND -d MASTERDIR ARGS``."""
        return argv("furl-master", command, "-d", str(self.mdir), *args)

    def run_argv(self, worker: str, *cmd: str, options: tuple[str, ...] = ()) -> list[str]:
        """The argv of ``furl-master run [OPTIONS] WORKER -- CMD``."""
        return self.master_argv("run", *options, worker, "--", *cmd)

    def run(self, worker: str, *cmd: str, options: tuple[str, ...] = (),
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """``furl-master run [OPTIONS] WORKER -- CMD``; output as bytes."""
        return subprocess.run(self.run_argv(worker, *cmd, options=options),
                              capture_output=True, env=child_env(), timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def run_popen(self, worker: str, *cmd: str, **kw: Any) -> subprocess.Popen[bytes]:
        """The same, started in the background (killed at the end by pid)."""
        return self.procs.popen(*self.run_argv(worker, *cmd), **kw)

    def wdir(self, worker: str) -> Path:
        return self.tmp / f"worker-{worker}"

    def create(self, *extra: str) -> None:
        dial = self.proxy.port if self.proxy is not None else self.port
        self.master("create-master", "--location", f"tcp:127.0.0.1:{dial}",
                    "--port", f"tcp:{self.port}:interface=127.0.0.1", *extra, check=True)

    def configure(self, **settings: object) -> None:
        """Add ``key = value`` lines to furl-master.conf (before start)."""
        with open(self.mdir / "furl-master.conf", "a") as f:
            for key, value in settings.items():
                f.write(f"{key} = {value}\n")

    def start_master(self) -> None:
        p = self.master("start", check=True)
        assert "started" in p.stderr
        self.procs.track_pidfile(self.mdir / "furl-master.pid")
        self.secrets.add((self.mdir / "private" / "admin.furl").read_text().strip()
                         .rsplit("/", 1)[1])

    def stop_master(self) -> None:
        self.master("stop", check=True)

    def create_worker(self, name: str) -> str:
        p = self.master("create-worker", name, check=True)
        furl = p.stdout.strip()
        self.secrets.add(furl.rsplit("/", 1)[1])
        self.furls[name] = furl
        return furl

    def start_worker(self, name: str, furl: str, *extra: str,
                     check: bool = True) -> subprocess.CompletedProcess[str]:
        wdir = self.wdir(name)
        wdir.mkdir(exist_ok=True)
        p = cli("furl-worker", "start", str(wdir), *extra, env={"FURL_WORKER_FURL": furl},
                timeout=90)
        self.procs.track_pidfile(wdir / "furl-worker.pid")
        if check and p.returncode != 0:
            raise AssertionError(f"worker start failed: {p.stderr}")
        return p

    def start_two(self) -> Farm:
        """Workers w1 and w2, the master, and both attached."""
        for name in ("w1", "w2"):
            self.create_worker(name)
        self.start_master()
        for name in ("w1", "w2"):
            self.start_worker(name, self.furls[name])
        return self

    def workers(self) -> dict[str, dict[str, object]]:
        p = self.master("list-workers", "--json", check=True)
        return {w["name"]: w for w in json.loads(p.stdout)["workers"]}

    def connected(self, name: str) -> bool:
        """``list-workers`` shows worker ``name`` connected."""
        return bool(self.workers().get(name, {}).get("connected"))

    def wait_for(self, pred: Callable[[], T], timeout: float = 10.0) -> T:
        """:func:`~buildbot_furl.testing.procs.wait_for`, every 0.2 s."""
        return wait_for(pred, timeout, 0.2)

    def assert_no_secret_in_logs(self) -> None:
        for log in self.tmp.rglob("*.log*"):
            text = log.read_text(errors="replace")
            for secret in self.secrets:
                assert secret not in text, f"a secret leaked into {log}"


@contextlib.contextmanager
def farm_in(tmp: Path, procs: Procs) -> Iterator[Farm]:
    """A created (not started) master in ``tmp``; at the end every process
    is stopped and every log is checked for secrets (and, as a directory
    that may outlive one test, registered with the log check meanwhile)."""
    f = Farm(tmp, procs)
    LOGS.add(tmp)
    try:
        f.create()
        yield f
        procs.cleanup()  # let the daemons finish writing their logs first
        f.assert_no_secret_in_logs()
    finally:
        LOGS.close(tmp)


@contextlib.contextmanager
def cut_farm_in(tmp: Path, procs: Procs) -> Iterator[Farm]:
    """A created (not started) master in ``tmp`` whose workers reach it
    through a :class:`FaultProxy` (``farm.proxy``)."""
    port = free_port()
    with FaultProxy(port) as proxy:
        f = Farm(tmp, procs, proxy)
        f.port = port
        f.create()
        yield f
        procs.cleanup()
        f.assert_no_secret_in_logs()
