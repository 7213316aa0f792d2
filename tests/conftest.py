"""Shared fixtures and hooks; the harness itself is buildbot_furl/testing/.

* ``procs``: every process a test starts, killed by pid at its end
  (:class:`~buildbot_furl.testing.procs.Procs`);
* ``farm``, ``cut_farm``, ``two``: a real master and workers
  (:mod:`buildbot_furl.testing.farm`);
* ``cli_here``: ``furl-master``/``furl-worker`` run in this process (click's
  CliRunner), for the commands that start no daemon;
* the log check: at the end of every test, each log its daemons wrote
  (furl-master, furl-worker, Buildbot) is read, and a violation, refusal,
  cut-off or traceback line fails the test unless the test declares it
  (``@pytest.mark.expect_log(REGEX)``; :mod:`buildbot_furl.testing.logcheck`);
* ``timing``: wall-clock figures for bench/timings;
* the loud summary of what was skipped.

tests/unit/ and tests/system/ share it (``scripts/test.sh unit`` runs the
first only)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from buildbot_furl.testing.farm import Farm, cut_farm_in, farm_in
from buildbot_furl.testing.logcheck import LOGS, unexpected
from buildbot_furl.testing.procs import Procs
from buildbot_furl.testing.timing import Timing


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def farm(tmp_path: Path, procs: Procs) -> Iterator[Farm]:
    with farm_in(tmp_path, procs) as f:
        yield f


@pytest.fixture
def cut_farm(tmp_path: Path, procs: Procs) -> Iterator[Farm]:
    """A farm whose workers reach the master through a FaultProxy (farm.proxy)."""
    with cut_farm_in(tmp_path, procs) as f:
        yield f


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


# -- the command lines, in-process ---------------------------------------------------

class _Script(click.Command):
    """What CliRunner runs: a console script's own ``main`` (run_main: exit 64
    for a bad command line, a one-line error, never a traceback)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog)
        self.prog = prog

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        # the CLI is imported here, by the tests that run it, never by the harness
        from buildbot_furl.cli import master, worker
        from buildbot_furl.cli.common import run_main

        group = {"furl-master": master.cli, "furl-worker": worker.cli}[self.prog]
        run_main(group, self.prog, list(args or ()))


@pytest.fixture
def cli_here() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli_here(PROG, *ARGS, env=..., check=...)``: what
    :func:`buildbot_furl.testing.farm.cli` does, in this process (click's
    CliRunner), for a command that starts no daemon and runs no reactor; the
    same result (returncode, stdout, stderr), without a Python start-up."""

    def run(prog: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        # as child_env: none of our FURL_* variables, then the test's
        mine: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FURL_")}
        mine.update(env or {})
        r = CliRunner().invoke(_Script(prog), list(args), env=mine)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception  # a bug in the command: the test shows its traceback
        if check and r.exit_code != 0:
            raise AssertionError(f"{prog} {' '.join(args)} failed ({r.exit_code}):\n{r.stderr}")
        return subprocess.CompletedProcess([prog, *args], r.exit_code, r.stdout, r.stderr)

    return run


# -- the log check (see buildbot_furl/testing/logcheck.py) ---------------------------

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
    msg = unexpected(found, _expected_by_marks(request.node) + expect_log)
    if msg:
        pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def _module_log_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """The same for what a module's shared farm logged while stopping."""
    yield
    found = LOGS.problems(list(LOGS.roots))
    LOGS.drop_closed()
    msg = unexpected(found, _expected_by_marks(request.node))
    if msg:
        pytest.fail(msg, pytrace=False)


# -- wall-clock figures (see buildbot_furl/testing/timing.py) -------------------------

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
