"""Sessions outlive connections: cut links, real daemons, a fault-injecting proxy.

Every worker here reaches its master through a FaultProxy on loopback
(``cut_farm``), which resets, freezes or refuses connections on command.
The master's session for a worker outlives a cut for its grace period:
commands go on, nothing is lost or duplicated, and the layer above (the
CLI's ``run``/``put``/``get``) sees nothing but an optional notice.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from buildbot_furl.testing.faultproxy import DOWN
from buildbot_furl.testing.farm import Farm, cli
from buildbot_furl.testing.procs import pid_alive
from buildbot_furl.testing.timing import Timing

LINES = 3000
# 3000 numbered lines, with small pauses so that cuts land in the middle
SLOW_LINES = (f"i=0; while [ $i -lt {LINES} ]; do echo line$i; echo err$i >&2; i=$((i+1)); "
              "case $i in *00) sleep 0.1;; esac; done; exit 5")


def _attached_worker(farm: Farm, name: str = "w1", *extra: str) -> Path:
    farm.create_worker(name)
    if not farm.master("status").returncode == 0:
        farm.start_master()
    farm.start_worker(name, farm.furls[name], *extra)
    return farm.wdir(name)


def _cut_several(farm: Farm, cuts: int, low: int, high: int,
                 while_running: subprocess.Popen[bytes] | None = None) -> int:
    """``cuts`` cuts through the farm's proxy (FaultProxy.cut_several)."""
    assert farm.proxy is not None
    return farm.proxy.cut_several(cuts, low, high, while_running)


def _wait_found(farm: Farm, *argv: str) -> list[int]:
    """The pids of this test's own ``argv`` processes, once there are some
    (waiting for their end waits on these pids: a process reparented after
    its worker died is no longer in the test's tree, but still alive)."""
    assert farm.wait_for(lambda: farm.procs.find(*argv), 20), f"{argv} never started"
    return farm.procs.find(*argv)


def _run_slow(farm: Farm, *options: str) -> subprocess.Popen[bytes]:
    return farm.procs.popen(
        *farm.run_argv("w1", "sh", "-c", SLOW_LINES, options=options),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _check_slow(p: subprocess.Popen[bytes], timeout: float = 120) -> bytes:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 5, err
    assert out.decode().splitlines() == [f"line{i}" for i in range(LINES)]
    errs = [ln for ln in err.decode().splitlines() if ln.startswith("err")]
    assert errs == [f"err{i}" for i in range(LINES)]
    return err


def test_a_run_survives_resets_without_loss_or_duplication(cut_farm: Farm) -> None:
    farm = cut_farm
    _attached_worker(farm)
    p = _run_slow(farm)
    # up to three cuts while it runs (a cut armed after the last byte never comes:
    # how many land depends on how fast the machine replays the backlog)
    assert _cut_several(farm, 3, 200, 6_000, while_running=p) >= 1
    err = _check_slow(p)
    assert b"connection to worker" not in err  # no notice: not -v, not a terminal
    # with -v the admin hears of the cut, in one line each way
    p = _run_slow(farm, "-v")
    # its own command (another test may run the same one: -n)
    assert farm.wait_for(lambda: farm.procs.find("sh", "-c", SLOW_LINES), 30)
    farm.proxy.cut()
    err = _check_slow(p)
    assert b"furl-master: the connection to worker 'w1' was lost; waiting up to 60 s" in err
    assert b"furl-master: the connection to worker 'w1' is back" in err


def test_cuts_during_attach_and_during_a_reattach(cut_farm: Farm) -> None:
    farm = cut_farm
    farm.create_worker("w1")
    farm.start_master()
    # the first two connections are reset during TLS, negotiation or attach
    farm.proxy.cut_after(400, new_only=True, count=2)
    farm.start_worker("w1", farm.furls["w1"], "--wait", "30")
    assert farm.proxy.cuts == 2
    p = _run_slow(farm)
    _wait_found(farm, "sh", "-c", SLOW_LINES)  # it runs
    farm.proxy.cut_after(1500, new_only=True)  # the reattach is cut too
    farm.proxy.cut()
    _check_slow(p)
    assert farm.proxy.cuts >= 4


def _big(path: Path, mib: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mib):
            block = os.urandom(1 << 20)
            f.write(block)
            h.update(block)
    return h.hexdigest()


def _with_cuts(farm: Farm, argv: list[str], cuts: int = 3) -> subprocess.CompletedProcess[bytes]:
    p = farm.procs.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    n = _cut_several(farm, cuts, 100_000, 3_000_000, while_running=p)
    out, err = p.communicate(timeout=300)
    assert n >= 2, f"only {n} cut(s) landed in the transfer"
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def test_uploads_downloads_and_trees_resume_mid_transfer(cut_farm: Farm, tmp_path: Path) -> None:
    farm = cut_farm
    wd = _attached_worker(farm)
    src = tmp_path / "big.bin"
    want = _big(src, 80)
    p = _with_cuts(farm, farm.master_argv("put", "w1", str(src), "in/big.bin"))
    assert p.returncode == 0, p.stderr
    assert hashlib.sha256((wd / "in" / "big.bin").read_bytes()).hexdigest() == want
    back = tmp_path / "back.bin"
    p = _with_cuts(farm, farm.master_argv("get", "w1", "in/big.bin", str(back)))
    assert p.returncode == 0, p.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want
    # a directory the worker sends (tar stream up), cut in the middle
    (wd / "tree" / "sub").mkdir(parents=True)
    for i in range(6):
        _big(wd / "tree" / "sub" / f"f{i}.bin", 8)
    (wd / "tree" / "link").symlink_to("sub/f0.bin")
    p = _with_cuts(farm, farm.master_argv("get", "w1", "tree", str(tmp_path / "tree")))
    assert p.returncode == 0, p.stderr
    from buildbot_furl.tree import manifest_path

    assert manifest_path(str(tmp_path / "tree")) == manifest_path(str(wd / "tree"))


def test_a_cut_after_the_rc_was_sent_but_not_acknowledged(cut_farm: Farm) -> None:
    farm = cut_farm
    wd = _attached_worker(farm)
    marker = wd / "done-marker"
    p = farm.procs.popen(*farm.run_argv(
        "w1", "sh", "-c", f"echo one; sleep 1; echo two; touch {marker}; exit 7"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert farm.wait_for(lambda: marker.exists(), 20)
    farm.proxy.freeze(DOWN)  # the master's acknowledgements no longer reach the worker
    time.sleep(1.0)  # the last output, the rc and the completion go up meanwhile
    farm.proxy.cut()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 7, err
    assert out == b"one\ntwo\n"


def test_a_link_down_longer_than_the_grace_period_ends_like_a_lost_worker(
        cut_farm: Farm, timing: Timing) -> None:
    farm = cut_farm
    farm.configure(session_grace=2)
    _attached_worker(farm)
    marker = "63.25"
    p = farm.procs.popen(*farm.run_argv("w1", "sleep", marker), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    sleepers = _wait_found(farm, "sleep", marker)
    farm.proxy.refuse(True)
    farm.proxy.cut()
    t0 = time.monotonic()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert b"disconnected during the command" in err
    # it ended because the grace period ran out (not sooner, not for another reason)
    mlog = (farm.mdir / "master.log").read_text()
    assert "worker w1: session ended (no reattach within 2 s)" in mlog
    timing.record("a run ends once the 2 s grace is over", time.monotonic() - t0, 15)
    # the worker comes back: the master no longer knows its session, so the
    # worker ends the orphaned command at once
    farm.proxy.refuse(False)
    assert farm.wait_for(lambda: not any(map(pid_alive, sleepers)), 30)
    log = (farm.wdir("w1") / "worker.log").read_text()
    assert "ended 1 command(s) of a session no master has any more" in log


def test_a_worker_without_a_master_ends_its_orphans(cut_farm: Farm) -> None:
    farm = cut_farm
    farm.configure(session_grace=1)
    _attached_worker(farm)
    marker = "64.75"
    farm.procs.popen(*farm.run_argv("w1", "sleep", marker), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    sleepers = _wait_found(farm, "sleep", marker)
    farm.proxy.refuse(True)  # no master can be reached any more
    farm.proxy.cut()
    # grace (1 s) plus the worker's margin (15 s)
    assert farm.wait_for(lambda: not any(map(pid_alive, sleepers)), 40)
    assert "no master took the session back" in (farm.wdir("w1") / "worker.log").read_text()


def test_a_restarted_master_ends_the_old_sessions_commands(cut_farm: Farm) -> None:
    farm = cut_farm
    _attached_worker(farm)
    marker = "65.5"
    farm.procs.popen(*farm.run_argv("w1", "sleep", marker), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    sleepers = _wait_found(farm, "sleep", marker)
    farm.master("restart", check=True)
    farm.procs.track_pidfile(farm.mdir / "furl-master.pid")
    assert farm.wait_for(lambda: not any(map(pid_alive, sleepers)), 30)
    assert farm.wait_for(lambda: bool(farm.workers()["w1"].get("connected")), 30)
    log = (farm.wdir("w1") / "worker.log").read_text()
    assert "the master does not know this worker's session" in log


def test_a_half_open_link_is_noticed_and_recovered(cut_farm: Farm) -> None:
    farm = cut_farm
    farm.configure(keepalive=1, disconnect_timeout=3)
    _attached_worker(farm, "w1", "--keepalive", "1", "--disconnect-timeout", "3")
    p = _run_slow(farm)
    _wait_found(farm, "sh", "-c", SLOW_LINES)  # it runs
    farm.proxy.blackhole()  # no RST, no FIN: nothing at all gets through
    _check_slow(p, timeout=120)
    log = (farm.wdir("w1") / "worker.log").read_text()
    assert "session resumed" in log


@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker w1", r"refused \d+ attach attempts from")  # staged
def test_revocation_during_a_gap_ends_the_session_at_once(cut_farm: Farm,
                                                          timing: Timing) -> None:
    farm = cut_farm
    _attached_worker(farm)
    p = farm.procs.popen(*farm.run_argv("w1", "sleep", "66.5"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    sleepers = _wait_found(farm, "sleep", "66.5")
    farm.proxy.refuse(True)
    farm.proxy.cut()
    time.sleep(0.5)
    t0 = time.monotonic()
    farm.master("revoke-worker", "w1", check=True)
    out, err = p.communicate(timeout=30)  # well short of the 60 s grace
    assert p.returncode == 2
    timing.record("revoke ends a detached session's run", time.monotonic() - t0, 10)
    farm.proxy.refuse(False)
    # the worker's session is gone with its FURL: its command ends when it learns
    # so, at the latest when its own wait runs out
    assert farm.wait_for(lambda: not any(map(pid_alive, sleepers)), 90)


def test_a_newcomer_without_the_session_cannot_take_it_over(cut_farm: Farm,
                                                             tmp_path: Path) -> None:
    """The same FURL in another process, while the real worker's link is
    down: without the session's secret it cannot rebind the session; the
    master takes it for the worker started afresh, ends the old session
    and gives the newcomer a new one."""
    farm = cut_farm
    _attached_worker(farm)
    p = farm.procs.popen(*farm.run_argv("w1", "sleep", "67.5"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    _wait_found(farm, "sleep", "67.5")
    farm.proxy.refuse(True)  # the real worker cannot come back...
    farm.proxy.cut()
    time.sleep(0.5)
    # ...while another process dials the master directly with the same FURL
    direct = farm.furls["w1"].replace(f"tcp:127.0.0.1:{farm.proxy.port}",
                                      f"tcp:127.0.0.1:{farm.port}")
    other = tmp_path / "other"
    other.mkdir()
    q = cli("furl-worker", "start", str(other), "--wait", "30",
            env={"FURL_WORKER_FURL": direct})
    farm.procs.track_pidfile(other / "furl-worker.pid")
    assert q.returncode == 0, q.stderr
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2  # the old session, and its run, ended
    mlog = (farm.mdir / "master.log").read_text()
    assert "session resumed" not in mlog
    assert "the worker attached afresh, without its session" in mlog
