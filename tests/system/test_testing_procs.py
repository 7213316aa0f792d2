"""buildbot_furl.testing.procs and rig: the bench tools' shared harness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from buildbot_furl.testing.procs import Procs, pid_alive, proc_rss_kb, proc_ticks
from buildbot_furl.testing.rig import pct

SLEEP = "import time, sys; time.sleep(60)"


def test_cleanup_stops_what_it_started_and_daemons_naming_its_directory(tmp_path: Path) -> None:
    procs = Procs(tmp_path, grace=5)
    child = procs.popen(sys.executable, "-c", SLEEP)
    # a "daemon": not our child, known by its pidfile, its command line names tmp_path
    daemon = subprocess.Popen([sys.executable, "-c", SLEEP, str(tmp_path)])
    stranger = subprocess.Popen([sys.executable, "-c", SLEEP, "elsewhere"])
    try:
        (tmp_path / "d.pid").write_text(f"{daemon.pid}\n")
        (tmp_path / "s.pid").write_text(f"{stranger.pid}\n")
        assert procs.track_pidfile(tmp_path / "d.pid") == daemon.pid
        procs.track_pidfile(tmp_path / "s.pid")  # a recycled pid: not ours
        assert {child.pid, daemon.pid} <= procs.roots()
        assert proc_rss_kb(child.pid) and proc_ticks(child.pid) is not None
        procs.cleanup()
        assert child.poll() is not None
        assert daemon.wait(timeout=10) is not None
        assert pid_alive(stranger.pid)
        assert procs.roots() == set()
    finally:
        for p in (daemon, stranger):
            p.kill()
            p.wait()


def test_a_closed_tracker_starts_nothing(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    procs.close()
    try:
        procs.popen(sys.executable, "-c", "pass")
    except RuntimeError:
        pass
    else:
        raise AssertionError("a process was started after close()")


def test_pct_is_nearest_rank() -> None:
    assert pct([], 50) is None
    assert pct([3.0, 1.0, 2.0], 50) == 2.0
    assert pct([float(i) for i in range(1, 101)], 95) == 95.0
    assert pct([5.0], 99) == 5.0
