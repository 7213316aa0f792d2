"""An interrupted or timed-out command ends with its whole process tree,
whatever its working directory (the worker's own directory included)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from buildbot_worker import runprocess
from twisted.internet import reactor

from buildbot_furl.worker import procgroup
from buildbot_furl.testing.farm import Farm
from buildbot_furl.testing.procs import pid_alive

# a shell that starts two children and waits for them, its pids in a file
TREE = "echo $$ > {pids}; sleep 1000 & echo $! >> {pids}; sleep 1000 & echo $! >> {pids}; wait"


def _pids(path: Path) -> list[int]:
    try:
        lines = path.read_text().split()
    except OSError:
        return []
    return [int(x) for x in lines] if len(lines) == 3 else []


def _kill(pids: list[int]) -> None:
    """What a failed test leaves is killed by pid."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("workdir", [".", "tree-sub"])
@pytest.mark.parametrize("how", ["ctrl-c", "timeout"])
def test_interrupt_and_timeout_end_the_whole_tree(two: Farm, tmp_path: Path, workdir: str,
                                                  how: str) -> None:
    (two.wdir("w1") / "tree-sub").mkdir(exist_ok=True)
    pidfile = tmp_path / "pids"
    options = ("--workdir", workdir) + (("--timeout", "3") if how == "timeout" else ())
    argv = two.run_argv("w1", "sh", "-c", TREE.format(pids=pidfile), options=options)
    proc = two.procs.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids: list[int] = []
    try:
        assert two.wait_for(lambda: _pids(pidfile), 20), "the tree did not start"
        pids = _pids(pidfile)
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == (130 if how == "ctrl-c" else 128 + signal.SIGKILL), err
        assert two.wait_for(lambda: not any(map(pid_alive, pids)), 10), \
            f"left running: {[p for p in pids if pid_alive(p)]}"
    finally:
        _kill(pids)
    log = (two.wdir("w1") / "worker.log").read_text()
    assert "failed to kill process group" not in log


@pytest_twisted.inlineCallbacks
def test_a_command_in_the_daemons_own_directory_leads_its_group(tmp_path: Path) -> None:
    """The code every command goes through (Buildbot steps and standalone
    runs alike): buildbot-worker's RunProcess, in the current directory."""
    procgroup.install()
    out: list[str] = []

    def send(updates: list[tuple[str, object]]) -> None:
        out.extend(str(v) for k, v in updates if k == "stdout")

    probe = "import os; print('leader' if os.getpgrp() == os.getpid() else 'member')"
    for workdir in (os.getcwd(), str(tmp_path)):
        out.clear()
        rp = runprocess.RunProcess("c1", [sys.executable, "-c", probe], workdir, "utf-8",
                                   send, sendRC=False, logEnviron=False)
        rp._reactor = reactor
        yield rp.start()
        assert "".join(out).strip() == "leader", workdir
