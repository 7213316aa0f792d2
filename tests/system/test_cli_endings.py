"""How the admin's commands end when the user or the machine stops them:
a closed pipe, a full disk, Ctrl-C during a transfer.  One line at most,
never a traceback, and nothing left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbot_furl.testing.farm import Farm
from buildbot_furl.testing.procs import child_env

BIG = 64 * 1024 * 1024


def _parts(d: Path) -> list[str]:
    return [n for n in os.listdir(d) if "furl-part" in n] if d.is_dir() else []


def _growing(d: Path) -> bool:
    """A partial file with bytes in it: the transfer is under way."""
    for name in _parts(d):
        with contextlib.suppress(OSError):
            if (d / name).stat().st_size > 0:
                return True
    return False


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system (a tmpfs: needs root and mount permission)."""
    d = tmp_path / "full"
    d.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({p.stderr.strip() or p.returncode})")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_a_closed_pipe_ends_run_quietly(two: Farm) -> None:
    """``furl-master run W -- seq ... | head -3``: exit 141, as a Unix tool
    killed by SIGPIPE does, and nothing on stderr."""
    argv = two.run_argv("w1", "seq", "1", "10000000")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=child_env())
    two.procs.pids.add(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    assert [proc.stdout.readline() for _ in range(3)] == [b"1\n", b"2\n", b"3\n"]
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert err == b"", err.decode(errors="replace")


def test_get_into_a_full_disk_is_one_line(two: Farm, full_disk: Path) -> None:
    wdir = two.wdir("w1")
    (wdir / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (wdir / "bigdir").mkdir(exist_ok=True)
    for i in range(3):
        (wdir / "bigdir" / f"f{i}").write_bytes(os.urandom(1024 * 1024))
    for remote in ("big.bin", "bigdir"):
        p = two.master("get", "w1", remote, str(full_disk / remote))
        assert p.returncode == 1, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert lines[0].startswith("furl-master: error: ") and "No space left" in lines[0]
        assert str(full_disk) in lines[0]
        assert os.listdir(full_disk) == []  # nothing left, not even a partial file
    log = (two.mdir / "master.log").read_text()
    assert "gap" not in log and "Traceback" not in log


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _worker_pid(two: Farm) -> int:
    return int((two.wdir("w1") / "furl-worker.pid").read_text())


def test_ctrl_c_during_put_says_so_and_leaves_nothing(two: Farm, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        f.truncate(BIG)
    dest = two.wdir("w1") / "ctrlc"
    dest.mkdir(exist_ok=True)
    proc = two.procs.popen(*two.master_argv("put", "w1", str(src), "ctrlc/x.bin"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert two.wait_for(lambda: _growing(dest), 30), "the put did not start"
    with _stopped(_worker_pid(two)):  # the transfer cannot end meanwhile
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    text = err.decode()
    assert proc.returncode == 130, text
    assert text.strip().splitlines() == [
        "furl-master: error: interrupted: ctrlc/x.bin was not written on worker 'w1' "
        "(it discards what it received)"], text
    assert two.wait_for(lambda: not _parts(dest), 20), _parts(dest)
    assert not (dest / "x.bin").exists()
    # the reads the worker had in flight are answered with the failure, not counted
    assert "refused a read" not in (two.mdir / "master.log").read_text()


def test_ctrl_c_during_get_says_so_and_leaves_nothing(two: Farm, tmp_path: Path) -> None:
    with open(two.wdir("w1") / "big-get.bin", "wb") as f:
        f.truncate(BIG)
    out = tmp_path / "out"
    out.mkdir()
    proc = two.procs.popen(*two.master_argv("get", "w1", "big-get.bin", str(out / "b.bin")),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert two.wait_for(lambda: _growing(out), 30), "the get did not start"
    with _stopped(_worker_pid(two)):
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    text = err.decode()
    assert proc.returncode == 130, text
    assert text.strip().splitlines() == [
        f"furl-master: error: interrupted: nothing was written to {out / 'b.bin'}"], text
    assert os.listdir(out) == []
