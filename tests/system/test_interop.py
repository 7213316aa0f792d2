"""Interop-style tests: real furl-master / furl-worker processes on 127.0.0.1,
driven through the standalone CLI (run, put, get), byte-exact."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildbot_furl.testing.farm import Farm, cli
from buildbot_furl.testing.procs import pid_alive
from buildbot_furl.testing.timing import Timing

# Most tests share one running master with two workers (the module-scoped
# fixture 'two'); each leaves it as it found it, in directories of its own.
# Tests that stop a daemon make their own ('farm').


# staged: a command that does not exist; buildbot_worker's RunProcess logs a traceback
@pytest.mark.expect_log(r"error in RunProcess._startCommand", r"AbandonChain: .*No such file")
def test_exit_codes_and_both_streams(two: Farm) -> None:
    p = two.run("w1", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (p.returncode, p.stdout, p.stderr) == (3, b"out\n", b"err\n")
    assert two.run("w2", "true").returncode == 0
    p = two.run("w1", "sh", "-c", "kill -TERM $$")
    assert p.returncode == 128 + signal.SIGTERM
    p = two.run("w1", "no-such-command-xyz")
    assert p.returncode != 0


def test_env_and_workdir(two: Farm) -> None:
    (two.wdir("w1") / "envsub").mkdir()
    p = two.run("w1", "sh", "-c", 'echo "$GREETING"; pwd',
                options=("--env", "GREETING=hi there", "--workdir", "envsub"))
    assert p.returncode == 0
    lines = p.stdout.decode().splitlines()
    assert lines[0] == "hi there"
    assert Path(lines[1]).resolve() == (two.wdir("w1") / "envsub").resolve()


def test_interleaved_stdout_stderr_keep_their_order(two: Farm) -> None:
    script = "i=0; while [ $i -lt 500 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done"
    p = two.run("w1", "sh", "-c", script)
    assert p.returncode == 0
    assert p.stdout.decode().splitlines() == [f"out{i}" for i in range(500)]
    assert p.stderr.decode().splitlines() == [f"err{i}" for i in range(500)]


def test_large_output_is_byte_exact(two: Farm) -> None:
    raw = os.urandom(38 * 1024 * 1024)
    text = base64.encodebytes(raw)  # ~51 MiB of text lines
    assert len(text) >= 50 * 1024 * 1024
    (two.wdir("w1") / "big.txt").write_bytes(text)
    p = two.run("w1", "cat", "big.txt", timeout=300)
    assert p.returncode == 0
    assert len(p.stdout) == len(text)
    assert hashlib.sha256(p.stdout).hexdigest() == hashlib.sha256(text).hexdigest()


def test_interrupt_with_ctrl_c_kills_the_remote_command(two: Farm) -> None:
    marker = "61.123"
    proc = two.run_popen("w1", "sleep", marker, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert two.wait_for(lambda: _sleepers(two, marker), 10)
        found = _sleepers(two, marker)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert b"interrupt" in err
    assert two.wait_for(lambda: not any(map(pid_alive, found)), 10)


def _sleepers(farm: Farm, marker: str) -> list[int]:
    """This test's own ``sleep MARKER`` processes (waiting for their end
    waits on these pids: one orphaned by its worker leaves the test's tree)."""
    return farm.procs.find("sleep", marker)


def test_timeout_kills_and_says_so(two: Farm, timing: Timing) -> None:
    t0 = time.monotonic()
    p = two.run("w1", "sleep", "30", options=("--timeout", "1"), timeout=25)  # < the 30 s
    timing.record("run --timeout 1 of sleep 30 ends", time.monotonic() - t0, 20)
    assert p.returncode == 128 + signal.SIGKILL
    assert b"timed out after 1 s" in p.stderr


def test_put_and_get_200_mib_byte_exact(two: Farm, tmp_path: Path) -> None:
    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1024 * 1024))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    p = two.master("put", "w1", str(src), "in/data.bin", timeout=300)
    assert p.returncode == 0, p.stderr
    dest = two.wdir("w1") / "in" / "data.bin"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == want
    assert not [n for n in os.listdir(dest.parent) if "furl-part" in n]
    back = tmp_path / "back.bin"
    p = two.master("get", "w1", "in/data.bin", str(back), timeout=300)
    assert p.returncode == 0, p.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want
    assert sorted(os.listdir(tmp_path)) == ["back.bin", "src.bin"]  # no temp left


def test_path_traversal_refused(two: Farm, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    for remote in ("../escape", "/etc/escape", "a/../../escape", "~/escape"):
        p = two.master("put", "w1", str(src), remote)
        assert p.returncode == 2 and "worker's directory" in p.stderr, (remote, p.stderr)
        p = two.master("get", "w1", remote, str(tmp_path / "out"))
        assert p.returncode == 2 and "worker's directory" in p.stderr
    assert not (two.tmp / "escape").exists() and not (tmp_path / "out").exists()


def test_unavailable_worker_or_master_exit_2(farm: Farm, tmp_path: Path) -> None:
    farm.start_two()
    p = farm.run("nosuch", "true")
    assert p.returncode == 2 and b"no worker named 'nosuch'" in p.stderr
    farm.create_worker("w3")
    p = farm.run("w3", "true")
    assert p.returncode == 2 and b"not connected" in p.stderr
    p = farm.master("get", "w1", "does/not/exist", str(tmp_path / "x"))
    assert p.returncode == 2 and "does not exist" in p.stderr
    farm.stop_master()
    p = farm.run("w1", "true")
    assert p.returncode == 2 and b"not running" in p.stderr
    assert len(p.stderr.decode().strip().splitlines()) == 1


def test_twenty_concurrent_commands_across_two_workers(two: Farm) -> None:
    procs = []
    for i in range(20):
        worker = "w1" if i % 2 else "w2"
        procs.append(two.run_popen(worker, "sh", "-c", f"sleep 1; echo job{i}; exit {i}",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert (p.returncode, out) == (i, f"job{i}\n".encode()), err


def test_slow_reader_backpressure_bounds_worker_memory(two: Farm) -> None:
    pid = int((two.wdir("w1") / "furl-worker.pid").read_text())
    total = 17 * 18_000_000  # whole lines: a last partial line would get a newline
    proc = two.run_popen("w1", "sh", "-c", f"yes 0123456789abcdef | head -c {total}",
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stdout = proc.stdout
    assert stdout is not None
    try:
        time.sleep(4)  # nobody reads: output must back up to the worker's process
        rss = _rss_mib(pid)
        got = 0
        while True:
            chunk = stdout.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        stdout.close()
    assert got == total and proc.returncode == 0
    assert rss < 150, f"worker grew to {rss} MiB while the reader was stalled"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "x.txt").write_text("hello\n")
    (root / "a" / "b" / "blob.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    (root / "a" / "link").symlink_to("x.txt")


def test_put_and_get_directory_byte_exact(two: Farm, tmp_path: Path) -> None:
    from buildbot_furl.tree import manifest_path as manifest

    src = tmp_path / "tree"
    _tree(src)
    p = two.master("put", "w2", str(src), "trees/t1", timeout=120)
    assert p.returncode == 0, p.stderr
    landed = two.wdir("w2") / "trees" / "t1"
    assert manifest(str(landed)) == manifest(str(src))
    assert (landed / "a" / "link").is_symlink()
    out = tmp_path / "out"
    out.mkdir()
    # LOCAL names the copy itself (as put's REMOTE): not the directory to put it in
    p = two.master("get", "w2", "trees/t1", str(out))
    assert p.returncode == 2 and "is a directory" in p.stderr, p.stderr
    p = two.master("get", "w2", "trees/t1", str(out / "t1"), timeout=120)
    assert p.returncode == 0, p.stderr
    assert manifest(str(out / "t1")) == manifest(str(src))
    assert sorted(os.listdir(out)) == ["t1"]
    # an existing destination directory is never overwritten by a put
    p = two.master("put", "w2", str(src), "trees/t1")
    assert p.returncode == 2 and "'trees/t1' already exists" in p.stderr
    assert manifest(str(landed)) == manifest(str(src))


def test_worker_lost_mid_command_is_one_clear_line(farm: Farm) -> None:
    farm.start_two()
    proc = farm.run_popen("w1", "sleep", "62.5", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert farm.wait_for(lambda: _sleepers(farm, "62.5"), 10)
        found = _sleepers(farm, "62.5")
        cli("furl-worker", "stop", str(farm.wdir("w1")), check=True)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert err.decode().strip() == "furl-master: error: worker 'w1' disconnected during the command"
    # the worker killed it on its way out
    assert farm.wait_for(lambda: not any(map(pid_alive, found)), 10)


def test_symlinks_cannot_lead_put_or_get_outside(two: Farm, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours\n")
    src = tmp_path / "f.txt"
    src.write_text("payload\n")
    assert two.run("w1", "ln", "-s", str(outside), "lnk").returncode == 0
    assert two.run("w1", "sh", "-c", "mkdir -p sub && ln -s sub inlink && "
                   f"ln -s {os.path.relpath(outside, two.wdir('w1') / 'sub')} sub/up"
                   ).returncode == 0
    for remote in ("lnk/escaped.txt", "sub/up/escaped.txt", "lnk"):
        p = two.master("put", "w1", str(src), remote)
        assert p.returncode == 2 and "outside" in p.stderr, (remote, p.stderr)
    for remote in ("lnk/secret.txt", "sub/up/secret.txt"):
        p = two.master("get", "w1", remote, str(tmp_path / "got"))
        assert p.returncode == 2 and "outside" in p.stderr, (remote, p.stderr)
    assert sorted(os.listdir(outside)) == ["secret.txt"] and not (tmp_path / "got").exists()
    # a symlink that stays inside is followed
    assert two.master("put", "w1", str(src), "inlink/in.txt").returncode == 0
    assert (two.wdir("w1") / "sub" / "in.txt").read_text() == "payload\n"
    # the worker's own files: its FURL is never overwritten nor sent
    p = two.master("put", "w1", str(src), "master.furl")
    assert p.returncode == 2 and "worker's own files" in p.stderr
    p = two.master("get", "w1", "./sub/../master.furl", str(tmp_path / "stolen"))
    assert p.returncode == 2 and "never sent" in p.stderr


def test_a_directory_swapped_for_a_symlink_mid_put_is_not_followed(
        two: Farm, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(160):
            f.write(os.urandom(1 << 20))
    work = two.wdir("w1")
    (work / "swap").mkdir()
    put = two.procs.popen(sys.executable, "-m", "buildbot_furl.cli.master", "put", "-d",
                          str(two.mdir), "w1", str(big), "swap/big.bin",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    swaps = 0
    try:
        # as soon as the part file exists, 'swap' is replaced by a symlink
        # to a directory outside, back and forth, until the put ends
        deadline = time.monotonic() + 60
        while put.poll() is None and time.monotonic() < deadline:
            parts = [n for n in os.listdir(work / "swap") if "furl-part" in n] \
                if (work / "swap").is_dir() and not (work / "swap").is_symlink() else []
            if parts or swaps:
                if (work / "swap").is_symlink():
                    (work / "swap").unlink()
                    (work / "swap.real").rename(work / "swap")
                else:
                    (work / "swap").rename(work / "swap.real")
                    (work / "swap").symlink_to(outside)
                swaps += 1
            time.sleep(0.01)
        put.communicate(timeout=60)
    finally:
        if put.poll() is None:
            put.kill()
    assert swaps > 0, "the put finished before the swap could happen"
    assert os.listdir(outside) == [], "a write went through the swapped-in symlink"
    landed = [p for p in (work / "swap", work / "swap.real")
              if p.is_dir() and not p.is_symlink() and (p / "big.bin").exists()]
    if put.returncode == 0:
        assert len(landed) == 1 and (landed[0] / "big.bin").read_bytes() == big.read_bytes()


# staged: programs that cannot start; buildbot_worker's RunProcess logs a traceback
@pytest.mark.expect_log(r"error in RunProcess._startCommand",
                        r"AbandonChain: .*(No such file|Permission denied)")
def test_a_program_that_cannot_start_is_one_line_like_a_shell(two: Farm) -> None:
    p = two.run("w1", "no-such-command-xyz", "arg")
    assert p.returncode == 127
    assert p.stderr.decode() == ("furl-master: error: no-such-command-xyz: command not found "
                                 "on worker 'w1'\n")
    assert p.stdout == b""
    (two.wdir("w1") / "notexec.sh").write_text("#!/bin/sh\necho hi\n")
    p = two.run("w1", "./notexec.sh")
    assert p.returncode == 126
    assert p.stderr.decode() == ("furl-master: error: ./notexec.sh: permission denied on "
                                 "worker 'w1'\n")
    # the worker is fine afterwards
    assert two.run("w1", "true").returncode == 0


def test_setuid_and_setgid_bits_never_cross_put_or_get(two: Farm, tmp_path: Path) -> None:
    """A 6755 file keeps its permission bits but not setuid/setgid, both ways."""
    local = tmp_path / "tool"
    local.write_bytes(b"#!/bin/sh\necho hi\n")
    local.chmod(0o6755)
    p = two.master("put", "w1", str(local), "suid-put")
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE((two.wdir("w1") / "suid-put").stat().st_mode) == 0o755
    theirs = two.wdir("w1") / "suid-get"
    theirs.write_bytes(b"#!/bin/sh\n")
    theirs.chmod(0o6755)
    back = tmp_path / "back"
    p = two.master("get", "w1", "suid-get", str(back))
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(back.stat().st_mode) == 0o755
