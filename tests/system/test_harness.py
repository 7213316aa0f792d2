"""The shared harness itself (tests/conftest.py): the log check that fails a
test whose daemons logged a violation, refusal, cut-off or traceback it did
not declare; process lookup confined to the test's own process tree; the
loud summary of what was skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from buildbot_furl.testing.logcheck import LOG_PROBLEM, LogWatch
from buildbot_furl.testing.procs import ROOT, Procs, pid_alive, processes

pytest_plugins = ["pytester"]

REFUSED_READ = ("2026-12-07T10:00:00+0000 [buildbot_furl.master.session#warn] worker w1: "
                "refused a read at 1048576 that skips bytes after 12\n")


@pytest.mark.parametrize("line, problem", [
    ("worker w1: refused a read at 1048576 that skips bytes after 12", True),
    ("dropping connection of worker w1 (cut off after 10 protocol violations)", True),
    ("refused attach from 127.0.0.1: unknown FURL (wrong secret)", True),
    ("Unhandled Error", True),
    ("Traceback (most recent call last):", True),
    ("cannot reach the master at tcp:127.0.0.1:1: connection refused; retrying", False),
    ("Connection was refused by other side: 111: Connection refused.", False),
    ("worker w1 attached from 127.0.0.1:5555", False),
])
def test_what_counts_as_a_problem(line: str, problem: bool) -> None:
    assert bool(LOG_PROBLEM.search(line)) is problem


@pytest.mark.expect_log("boom", "refused a read")  # this test's own lines
def test_each_record_is_read_once_with_its_traceback(tmp_path: Path) -> None:
    log = tmp_path / "master" / "master.log"
    log.parent.mkdir()
    log.write_text("2026 [-] fine\n2026 [-] Unhandled Error\n\tTraceback (most recent call "
                   "last):\n\t  File \"x\"\n\tbuiltins.ValueError: boom\n2026 [-] half")
    w = LogWatch()
    found = w.problems([tmp_path])
    assert [rec.splitlines()[-1] for _, rec in found] == ["\tbuiltins.ValueError: boom"]
    assert w.problems([tmp_path]) == []  # read once; the unfinished line waits
    with open(log, "a") as f:
        f.write(" done\n" + REFUSED_READ)
    assert [p for p, _ in w.problems([tmp_path])] == [log]
    log.rename(tmp_path / "master" / "master.log.1")  # rotated: not read again
    assert w.problems([tmp_path]) == []


def _inner(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_inner=textwrap.dedent(body))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")


def test_an_undeclared_problem_line_fails_the_test(pytester: pytest.Pytester) -> None:
    r = _inner(pytester, f'''
        import pytest
        LINE = {REFUSED_READ!r}

        def test_quiet(tmp_path):
            (tmp_path / "worker.log").write_text("all well\\n")

        def test_honest_peer_refused(tmp_path):
            (tmp_path / "master.log").write_text(LINE)

        @pytest.mark.expect_log(r"refused a read at \\d+")
        def test_staged(tmp_path):
            (tmp_path / "master.log").write_text(LINE)

        def test_staged_at_run_time(tmp_path, expect_log):
            expect_log.append("skips bytes")
            (tmp_path / "master.log").write_text(LINE)
    ''')
    r.assert_outcomes(passed=4, errors=1)
    r.stdout.fnmatch_lines(["*ERROR at teardown of test_honest_peer_refused*",
                            "*1 unexpected log record(s)*",
                            "*worker w1: refused a read at 1048576 that skips bytes after 12*"])


def test_skips_are_said_loudly_without_rs(pytester: pytest.Pytester) -> None:
    r = _inner(pytester, '''
        import pytest

        @pytest.mark.skip(reason="no crossbar here")
        def test_cluster():
            pass
    ''')
    r.stdout.fnmatch_lines(["*NOT TESTED HERE: 1 test(s) skipped*",
                            "*1 skipped: no crossbar here*"])


def test_find_sees_only_the_tests_own_processes(procs: Procs) -> None:
    marker = "3599.125"
    stranger = subprocess.Popen(["sleep", marker])  # another test's, as far as procs knows
    try:
        own = procs.popen("sh", "-c", f"sleep {marker}; true")
        assert processes("sleep", marker)  # machine-wide: both
        found = []
        for _ in range(100):
            found = procs.find("sleep", marker)
            if found:
                break
            subprocess.run(["sleep", "0.05"])
        assert found and stranger.pid not in found
        assert all(pid_alive(p) for p in found)
    finally:
        for pid in procs.find("sleep", marker):
            os.kill(pid, signal.SIGKILL)
        stranger.kill()
        stranger.wait()
