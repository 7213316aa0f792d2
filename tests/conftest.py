"""Shared fixtures: free loopback ports, CLI runners, process cleanup by pid,
process lookup within a test's own process tree, and the log check: at the
end of every test, each log its daemons wrote (furl-master, furl-worker,
Buildbot) is read, and a violation, refusal, cut-off or traceback line fails
the test unless the test declares it (``@pytest.mark.expect_log(REGEX)``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
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


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                out[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every live process below them (a parent walk over /proc).
    A process that outlived its parent was reparented and is not found: a
    test that waits for a process to end waits on the pid it found earlier."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        kids.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(kids.get(pid, ()))
    return seen


def processes(*argv: str, within: Path | None = None,
              under: Iterable[int] | None = None) -> list[int]:
    """Pids of live processes whose command line starts with ``argv`` (and,
    with ``within``, whose working directory is below that directory; with
    ``under``, that descend from one of those pids).  Machine-wide without
    ``under``: prefer ``Procs.find``, which looks only in the test's own tree
    (under ``pytest -n`` another test may run the same command)."""
    want = [a.encode() for a in argv]
    pids = sorted(descendants(under)) if under is not None else [
        int(p) for p in os.listdir("/proc") if p.isdigit()]
    found = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd") if within is not None else ""
        except OSError:
            continue
        if within is not None and not cwd.startswith(str(within.resolve())):
            continue
        if cmd[:len(want)] == want and pid_alive(pid):
            found.append(pid)
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

    def roots(self) -> set[int]:
        """The pids this test started (and the daemons' pids from their pidfiles)."""
        for pf in self.pidfiles:
            with contextlib.suppress(OSError, ValueError):
                self.pids.add(int(pf.read_text().strip()))
        return set(self.pids)

    def find(self, *argv: str, within: Path | None = None) -> list[int]:
        """``processes(*argv)``, but only among this test's own processes and
        their descendants."""
        return processes(*argv, within=within, under=self.roots())

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
    LOGS.add(tmp)
    try:
        f.create()
        yield f
        procs.cleanup()  # let the daemons finish writing their logs first
        f.assert_no_secret_in_logs()
    finally:
        LOGS.close(tmp)


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


# -- the log check ----------------------------------------------------------------
#
# The suite's own logs once held the symptom of a bug (a master refusing an
# honest worker's reads) in five tests, and nothing looked.  Every test's
# logs are now read at its end: a line below fails the test unless the test
# says it expects it (it stages an attack, a bad file, a crash):
#
#     @pytest.mark.expect_log(r"refused attach from .*: unknown FURL")
#
# (on a test, a class or a module's ``pytestmark``), or at run time with the
# ``expect_log`` fixture.  A pattern is searched in the whole log record (a
# line and its continuation lines, so a traceback with its exception).

#: a violation, refusal, cut-off or traceback line; an OS-level "connection
#: refused" (a master not up yet) is not a refusal by the peer
LOG_PROBLEM = re.compile(
    r"Traceback \(most recent call last\)|Unhandled [Ee]rror"
    r"|protocol violation|\bcut off\b"
    r"|(?<![Cc]onnection )(?<!was )(?<!Connection was )\brefus(?:ed|es|al)\b(?! by other side)")


def _is_log(path: Path) -> bool:
    """A daemon's log: master.log, worker.log, Buildbot's twistd.log, rotated
    ones (NAME.log.N), and the stdout of a --nodaemon daemon (NAME.out)."""
    name = path.name
    return (name.endswith((".log", ".out")) or bool(re.search(r"\.log\.\d+$", name))) \
        and path.is_file()


def log_records(text: str) -> Iterator[str]:
    """A log's records: a line with its continuation lines (indented: Twisted
    indents a multi-line message with a tab); a bare ``Traceback`` runs to
    its exception line."""
    rec: list[str] = []
    in_tb = False
    for line in text.splitlines():
        if rec and (line[:1] in ("\t", " ") or in_tb):
            rec.append(line)
            if in_tb and line[:1] not in ("\t", " "):
                in_tb = False
            continue
        if rec:
            yield "\n".join(rec)
        rec = [line]
        in_tb = line.startswith("Traceback (most recent call last)")
    if rec:
        yield "\n".join(rec)


class LogWatch:
    """Reads each log once: per file (by inode, so a rotated log is not read
    again) how far it has been checked."""

    def __init__(self) -> None:
        #: directories shared beyond one test (a module's farm): open or closed
        self.roots: dict[Path, bool] = {}
        self.offsets: dict[tuple[int, int], int] = {}

    def add(self, root: Path) -> None:
        self.roots[root] = True

    def close(self, root: Path) -> None:
        if root in self.roots:
            self.roots[root] = False

    def problems(self, roots: Iterable[Path]) -> list[tuple[Path, str]]:
        """The new records with a problem in the logs below ``roots``."""
        found = []
        for root in roots:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                with contextlib.suppress(OSError):
                    if not _is_log(path):
                        continue
                    st = path.stat()
                    key = (st.st_dev, st.st_ino)
                    start = self.offsets.get(key, 0)
                    if st.st_size < start:  # truncated
                        start = 0
                    with open(path, "rb") as f:
                        f.seek(start)
                        data = f.read()
                    end = data.rfind(b"\n") + 1  # a line being written waits
                    self.offsets[key] = start + end
                    for rec in log_records(data[:end].decode(errors="replace")):
                        if LOG_PROBLEM.search(rec):
                            found.append((path, rec))
        return found

    def drop_closed(self) -> None:
        for root in [r for r, is_open in self.roots.items() if not is_open]:
            del self.roots[root]


LOGS = LogWatch()


def _unexpected(found: list[tuple[Path, str]], expected: list[str]) -> str | None:
    pats = [re.compile(p) for p in expected]
    bad = [(path, rec) for path, rec in found if not any(p.search(rec) for p in pats)]
    report = os.environ.get("FURL_TEST_LOG_REPORT")  # a survey: every finding, one per line
    if report and found:
        with open(report, "a") as f:
            for path, rec in found:
                f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""),
                                    "log": str(path), "record": rec[:2000],
                                    "expected": (path, rec) not in bad}) + "\n")
    if not bad:
        return None
    lines = [f"{len(bad)} unexpected log record(s) (a violation, refusal, cut-off or "
             "traceback); if the test stages it, declare it with "
             "@pytest.mark.expect_log(REGEX):"]
    for path, rec in bad[:12]:
        head = rec.splitlines()
        shown = head[:4] + (["\t..."] + head[-1:] if len(head) > 5 else head[4:5])
        lines.append(f"  {path}:")
        lines.extend(f"    {ln[:300]}" for ln in shown)
    if len(bad) > 12:
        lines.append(f"  ... and {len(bad) - 12} more")
    return "\n".join(lines)


def _expected_by_marks(node: Any) -> list[str]:
    return [p for m in node.iter_markers("expect_log") for p in m.args]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "expect_log(*regex): log records the test stages (an attack, a crash, "
        "a bad file); any other violation, refusal, cut-off or traceback record in a "
        "log of the test's daemons fails it")


@pytest.fixture
def expect_log() -> list[str]:
    """Call ``expect_log.append(REGEX)`` (or extend) to declare, at run time,
    log records this test stages."""
    return []


@pytest.fixture(autouse=True)
def _log_check(request: pytest.FixtureRequest, expect_log: list[str]) -> Iterator[None]:
    """At the end of the test (after its daemons stopped): its logs (its
    tmp_path, and what a shared farm logged meanwhile) hold no unexpected
    problem record."""
    roots = []
    if "tmp_path" in request.fixturenames:
        roots.append(request.getfixturevalue("tmp_path"))
    yield
    found = LOGS.problems([*roots, *LOGS.roots])
    LOGS.drop_closed()
    msg = _unexpected(found, _expected_by_marks(request.node) + expect_log)
    if msg:
        pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def _module_log_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """The same for what a module's shared farm logged while stopping."""
    yield
    found = LOGS.problems(list(LOGS.roots))
    LOGS.drop_closed()
    msg = _unexpected(found, _expected_by_marks(request.node))
    if msg:
        pytest.fail(msg, pytrace=False)


# -- wall-clock figures -------------------------------------------------------------

class Timing:
    """A test's wall-clock figures: not asserted in the test (on a shared CPU
    a bound is either flaky or meaningless) but recorded, and
    ``python -m bench.timings`` runs those tests alone and holds each figure to its
    budget.  The test keeps only the event, with a bound against hanging."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.figures: list[tuple[str, float, float]] = []

    def record(self, what: str, seconds: float, budget: float) -> None:
        self.figures.append((what, seconds, budget))
        out = os.environ.get("FURL_TEST_TIMINGS")
        if out:
            with open(out, "a") as f:
                f.write(json.dumps({"test": self.nodeid, "what": what,
                                    "seconds": round(seconds, 3), "budget": budget}) + "\n")


@pytest.fixture
def timing(request: pytest.FixtureRequest) -> Timing:
    return Timing(request.node.nodeid)


# -- what was not tested ----------------------------------------------------------

def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say loudly, in every run (no ``-rs`` needed), what was skipped and why:
    a skipped test is a part of the product nobody checked here."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, list[str]] = {}
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reasons.setdefault(reason.removeprefix("Skipped: "), []).append(rep.nodeid)
    terminalreporter.write_sep("!", f"NOT TESTED HERE: {len(skipped)} test(s) skipped",
                               yellow=True, bold=True)
    for reason, ids in sorted(reasons.items()):
        terminalreporter.write_line(f"{len(ids)} skipped: {reason}", yellow=True, bold=True)
        for nodeid in ids[:5]:
            terminalreporter.write_line(f"    {nodeid}")
        if len(ids) > 5:
            terminalreporter.write_line(f"    ... and {len(ids) - 5} more")
