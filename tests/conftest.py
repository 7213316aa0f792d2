"""Shared fixtures: free loopback ports, CLI runners, and process cleanup by pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_furl.testing.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI or daemon a test starts: ours, less any
    FURL_* variable, with the checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FURL_")}
    # no empty entry: that would put each child's working directory on sys.path
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


PROGRAMS = {"furl-master": "buildbot_furl.cli.master", "furl-worker": "buildbot_furl.cli.worker"}


def cli(prog: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``furl-master``/``furl-worker`` as a new process."""
    p = subprocess.run([sys.executable, "-m", PROGRAMS[prog], *args], capture_output=True,
                       text=True,
                       env=child_env(env), timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{prog} {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return False
    return True


def processes(*argv: str, within: Path | None = None) -> list[int]:
    """Pids of live processes whose command line starts with ``argv`` (and,
    with ``within``, whose working directory is below that directory)."""
    want = [a.encode() for a in argv]
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                cwd = os.readlink(f"/proc/{pid}/cwd") if within is not None else ""
            except OSError:
                continue
            if within is not None and not cwd.startswith(str(within.resolve())):
                continue
            if cmd[:len(want)] == want and pid_alive(int(pid)):
                found.append(int(pid))
    return found


class Procs:
    """Every daemon a test starts is recorded here and killed by pid at the end."""

    def __init__(self) -> None:
        self.pidfiles: list[Path] = []
        self.pids: set[int] = set()
        self.popens: list[subprocess.Popen[bytes]] = []

    def track_pidfile(self, path: Path) -> int | None:
        self.pidfiles.append(path)
        with contextlib.suppress(OSError, ValueError):
            pid = int(path.read_text().strip())
            self.pids.add(pid)
            return pid
        return None

    def popen(self, *args: str, env: dict[str, str] | None = None, **kw: Any
              ) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(list(args), env=child_env(env), stdin=subprocess.DEVNULL, **kw)
        self.popens.append(p)
        self.pids.add(p.pid)
        return p

    def cleanup(self) -> None:
        for pf in self.pidfiles:
            with contextlib.suppress(OSError, ValueError):
                self.pids.add(int(pf.read_text().strip()))
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for p in self.popens:
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        # forget them: a second cleanup must not signal a recycled pid
        self.pids.clear()
        self.pidfiles.clear()
        self.popens.clear()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


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
        return [sys.executable, "-m", PROGRAMS["furl-master"], command, "-d", str(self.mdir),
                *args]

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

    def wait_for(self, pred: Callable[[], object], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.2)
        return False


    def assert_no_secret_in_logs(self) -> None:
        for log in self.tmp.rglob("*.log*"):
            text = log.read_text(errors="replace")
            for secret in self.secrets:
                assert secret not in text, f"a secret leaked into {log}"


@contextlib.contextmanager
def farm_in(tmp: Path, procs: Procs) -> Iterator[Farm]:
    """A created (not started) master in ``tmp``; at the end every process
    is stopped and every log is checked for secrets."""
    f = Farm(tmp, procs)
    f.create()
    yield f
    procs.cleanup()  # let the daemons finish writing their logs first
    f.assert_no_secret_in_logs()


@pytest.fixture
def farm(tmp_path: Path, procs: Procs) -> Iterator[Farm]:
    with farm_in(tmp_path, procs) as f:
        yield f


@pytest.fixture
def cut_farm(tmp_path: Path, procs: Procs) -> Iterator[Farm]:
    """A farm whose workers reach the master through a FaultProxy (farm.proxy)."""
    port = free_port()
    with FaultProxy(port) as proxy:
        f = Farm(tmp_path, procs, proxy)
        f.port = port
        f.create()
        yield f
        procs.cleanup()
        f.assert_no_secret_in_logs()


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """A running master with two attached workers, w1 and w2, shared by a
    module's tests (which leave it running as they found it)."""
    procs = Procs()
    try:
        with farm_in(tmp_path_factory.mktemp("two"), procs) as f:
            yield f.start_two()
    finally:
        procs.cleanup()
