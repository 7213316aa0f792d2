"""``furl-master run`` whose output is read slowly, or not at all.

The master's admin Tub here drops a silent link after 3 s (keepalive 1 s),
so a reader that pauses for longer than that would, before the fix, have
blocked the CLI's reactor in a write, lost the link and the output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from buildbot_furl.testing.farm import Farm, farm_in
from buildbot_furl.testing.procs import Procs, pid_alive

#: silent this long, a link to the master's admin Tub is dropped (keepalive: 1 s)
DISCONNECT = 3
LINES = 3_000_000  # `seq 1 LINES`: some 21 MB of a known pattern
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """A master whose Tubs drop a silent link after DISCONNECT s, and worker w1."""
    procs = Procs()
    try:
        with farm_in(tmp_path_factory.mktemp("quick"), procs) as f:
            f.configure(keepalive=1, disconnect_timeout=DISCONNECT)
            f.create_worker("w1")
            f.start_master()
            f.start_worker("w1", f.furls["w1"])
            assert f.wait_for(lambda: bool(f.workers()["w1"].get("connected")), 30)
            yield f
    finally:
        procs.cleanup()


def _rss(pid: int) -> int:
    """Resident bytes of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _expected() -> bytes:
    return "".join(f"{i}\n" for i in range(1, LINES + 1)).encode()


def test_a_reader_that_pauses_gets_every_byte(quick: Farm) -> None:
    """Nothing read for four disconnect windows, then all of it: every byte,
    in order, and the remote exit code."""
    p = quick.run_popen("w1", "seq", "1", str(LINES), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.read(10)  # it runs, and its output comes
    master = int((quick.mdir / "furl-master.pid").read_text())
    # meanwhile the pipe fills and stays full; what waits is held back along the
    # chain (CLI, master, worker, the command), not piled up in the CLI or master
    time.sleep(DISCONNECT)
    before = _rss(p.pid), _rss(master)
    time.sleep(3 * DISCONNECT)
    after = _rss(p.pid), _rss(master)
    rest = p.stdout.read()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0, err.decode(errors="replace")
    out = first + rest
    expected = _expected()
    assert len(out) == len(expected)
    assert out == expected
    assert err == b""
    # without the back-pressure the CLI took some 5 MB more each second
    assert after[0] - before[0] < 6 * MiB, (before, after)
    assert after[1] - before[1] < 6 * MiB, (before, after)


def test_a_closed_pipe_stops_the_remote_command(quick: Farm) -> None:
    """``run w1 -- yes | head -1``: 141, nothing on stderr, and ``yes`` on the
    worker is stopped rather than left running."""
    p = quick.run_popen("w1", "yes", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline() == b"y\n"
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141
    assert err == b"", err.decode(errors="replace")
    assert quick.wait_for(lambda: not quick.procs.find("yes"), 20), "yes still runs"


def test_a_frozen_cli_is_dropped_and_its_command_stopped(quick: Farm) -> None:
    """A CLI stopped for good (SIGSTOP) no longer answers: the master drops
    its link after the disconnect timeout and interrupts its command."""
    p = quick.run_popen("w1", "sleep", "77.5", stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    assert quick.wait_for(lambda: bool(quick.procs.find("sleep", "77.5")), 30)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        assert quick.wait_for(lambda: not quick.procs.find("sleep", "77.5"),
                              6 * DISCONNECT + 10), "the command outlived its frozen CLI"
    finally:
        os.kill(p.pid, signal.SIGCONT)
    p.wait(timeout=30)
    assert not pid_alive(p.pid)
