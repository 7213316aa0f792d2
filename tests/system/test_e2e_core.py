"""End to end: real furl-master / furl-worker processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import time

import pytest

from buildbot_furl.privatefiles import write_private
from buildbot_furl.testing.farm import Farm, cli
from buildbot_furl.testing.procs import free_port
from buildbot_furl.testing.timing import Timing


def test_create_start_attach_and_list(farm: Farm) -> None:
    p = farm.master("create-worker", "w1", "--comment", "linux box")
    assert p.returncode == 0
    furl = p.stdout.strip()
    assert p.stdout == furl + "\n" and furl.startswith("pb://")  # only the FURL on stdout
    assert "w1" in p.stderr
    farm.start_master()
    st = farm.master("status")
    assert st.returncode == 0 and "0 of 1 worker(s) connected" in st.stdout
    info = farm.tmp / "worker-w1" / "info"
    info.mkdir(parents=True)
    # an escape sequence (here: retitle the terminal) never reaches the admin's terminal
    (info / "host").write_text("build-box-7,\x1b]0;pwned\x07 16 cores\n")
    w = farm.start_worker("w1", furl)
    assert "attached" in w.stderr
    rows = farm.workers()
    assert rows["w1"]["connected"] is True
    assert rows["w1"]["peer"].startswith("127.0.0.1:")
    assert rows["w1"]["comment"] == "linux box"
    assert rows["w1"]["host"] == "build-box-7,?]0;pwned? 16 cores"  # from its info/host
    listed = farm.master("list-workers", check=True).stdout
    assert "(build-box-7,?]0;pwned? 16 cores)" in listed and "\x1b" not in listed
    assert "furl" not in rows["w1"]  # hidden unless asked
    shown = farm.master("list-workers", "--show-furls", check=True).stdout
    assert furl in shown
    # no secret in any log line
    swiss = furl.rsplit("/", 1)[1]
    for log in (farm.mdir / "master.log", farm.tmp / "worker-w1" / "worker.log"):
        assert swiss not in log.read_text()


@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker w1", r"refused \d+ attach attempts from")  # staged
def test_revoke_drops_live_connection_and_refuses_reconnect(farm: Farm, timing: Timing) -> None:
    furl = farm.create_worker("w1")
    farm.create_worker("w2")
    farm.start_master()
    farm.start_worker("w1", furl)
    t0 = time.monotonic()
    farm.master("revoke-worker", "w1", check=True)
    assert farm.wait_for(lambda: "w1" not in farm.workers(), 30)
    log = farm.mdir / "master.log"
    assert farm.wait_for(lambda: "dropping connection of worker w1" in log.read_text(), 30)
    timing.record("revoke-worker drops the live connection", time.monotonic() - t0, 4)
    # the worker keeps dialing and is refused each time
    assert farm.wait_for(lambda: "revoked or rotated FURL of worker w1" in log.read_text(), 10)
    assert "refused attach from 127.0.0.1 " in log.read_text()
    wlog = (farm.tmp / "worker-w1" / "worker.log").read_text()
    assert "lost the connection" in wlog
    # a fresh worker process with that FURL is refused with a clear error
    p = farm.start_worker("w1b", furl, check=False)
    assert p.returncode != 0
    assert "does not know this FURL" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker w1", r"refused \d+ attach attempts from")  # staged
def test_rotate_old_refused_new_works(farm: Farm) -> None:
    old = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", old)
    new = farm.master("rotate-worker", "w1", check=True).stdout.strip()
    farm.secrets.add(new.rsplit("/", 1)[1])
    assert new != old and new.startswith("pb://")
    assert farm.wait_for(lambda: not farm.connected("w1"), 5)
    p = farm.start_worker("again", old, check=False)
    assert p.returncode != 0 and "does not know this FURL" in p.stderr
    cli("furl-worker", "stop", str(farm.tmp / "worker-w1"), check=True)
    farm.start_worker("w1", new)
    assert farm.connected("w1")


@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker w1", r"refused \d+ attach attempts from")  # staged
def test_hand_edit_applies_without_restart(farm: Farm) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl)
    # admin removes the line by hand: the worker is dropped.  Each edit lands
    # whole (as an editor's save-by-rename does): a file read in the middle of
    # a truncate-and-write is a known hazard, not what this test is about
    path = farm.mdir / "workers.furls"
    text = path.read_text()
    write_private(str(path), "".join(l for l in text.splitlines(True)
                                     if not l.startswith("w1 ")))
    assert farm.wait_for(lambda: not farm.connected("w1") and "w1" not in farm.workers(), 5)
    # and puts it back: it works again without restarting the master
    write_private(str(path), text)
    assert farm.wait_for(lambda: farm.connected("w1"), 30)
    # a broken edit is reported and the master keeps serving the old list
    write_private(str(path), text + "garbage line here\n")
    log = farm.mdir / "master.log"
    assert farm.wait_for(lambda: "workers.furls not applied" in log.read_text(), 5)
    assert farm.connected("w1")


def test_restarted_master_gets_its_worker_back(farm: Farm) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl)
    farm.stop_master()
    farm.start_master()
    assert farm.wait_for(lambda: farm.connected("w1"), 30)


@pytest.mark.expect_log(r"refused duplicate attach of worker w1")  # staged
def test_duplicate_worker_process_is_refused(farm: Farm) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl)
    p = farm.start_worker("w1-copy", furl, check=False)
    assert p.returncode != 0
    assert "already attached from another process" in p.stderr
    assert farm.connected("w1")


@pytest.mark.expect_log(r"unknown FURL \(wrong secret\)")  # staged
def test_bad_furls_give_one_clear_line(farm: Farm, tmp_path) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    tubid = furl.split("@")[0][5:]
    cases = {
        "pb://nonsense": "malformed FURL",
        furl.rsplit("/", 1)[0] + "/" + "x" * 32: "does not know this FURL",
        furl.replace(tubid, "c" * 32): "is not the master this FURL names",
        f"pb://{tubid}@tcp:127.0.0.1:{free_port()}/{'y' * 32}": "connection refused",
    }
    for bad, needle in cases.items():
        p = farm.start_worker("bad", bad, "--wait", "3", check=False)
        assert p.returncode != 0, bad
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], p.stderr
        assert bad.rsplit("/", 1)[-1] not in p.stderr or needle == "malformed FURL"
    # the master kept serving: a good worker still attaches
    farm.start_worker("w1", furl)


def test_world_readable_secrets_refused(farm: Farm) -> None:
    farm.create_worker("w1")
    os.chmod(farm.mdir / "workers.furls", 0o644)
    p = farm.master("start")
    assert p.returncode != 0 and "chmod 600" in p.stderr
    os.chmod(farm.mdir / "workers.furls", 0o600)
    os.chmod(farm.mdir / "private", 0o755)
    p = farm.master("start")
    assert p.returncode != 0 and "chmod 700" in p.stderr


def test_basedir_errors(tmp_path) -> None:
    p = cli("furl-master", "create-worker", "w1", "-d", str(tmp_path / "nope"))
    assert p.returncode != 0 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    d = str(tmp_path / "m")
    cli("furl-master", "create-master", "-d", d, "--location", "tcp:127.0.0.1:9", check=True)
    p = cli("furl-master", "create-master", "-d", d, "--location", "tcp:127.0.0.1:9")
    assert p.returncode != 0 and "already a master" in p.stderr
    p = cli("furl-master", "create-master", "-d", str(tmp_path / "x"), "--location", "nohost")
    assert p.returncode != 0 and "expected tcp:HOST:PORT" in p.stderr
    cli("furl-master", "create-worker", "w1", "-d", d, check=True)
    p = cli("furl-master", "create-worker", "w1", "-d", d)
    assert p.returncode != 0 and "already exists" in p.stderr
    p = cli("furl-master", "create-worker", "bad name", "-d", d)
    assert p.returncode != 0 and "invalid worker name" in p.stderr
    p = cli("furl-master", "status", "-d", d)
    assert p.returncode == 3 and "not running" in p.stdout
    p = cli("furl-worker", "start", str(tmp_path / "w"))
    assert p.returncode != 0 and "does not exist" in p.stderr


@pytest.mark.expect_log(r"unknown FURL \(wrong secret\)")  # staged: its line is not read yet
def test_sighup_applies_an_edit_at_once(farm: Farm) -> None:
    with open(farm.mdir / "furl-master.conf", "a") as f:
        f.write("reload_interval = 3600\n")
    farm.start_master()
    furl = farm.create_worker("late")  # written after start: not seen until told
    time.sleep(1.5)
    p = farm.start_worker("late", furl, "--wait", "2", check=False)
    assert p.returncode != 0 and "does not know this FURL" in p.stderr
    pid = int((farm.mdir / "furl-master.pid").read_text())
    os.kill(pid, signal.SIGHUP)
    farm.start_worker("late", furl)
    assert farm.connected("late")


def test_port_in_use_is_one_clear_line(farm: Farm, tmp_path) -> None:
    farm.start_master()
    other = str(tmp_path / "other")
    cli("furl-master", "create-master", "-d", other, "--location",
        f"tcp:127.0.0.1:{farm.port}", "--port", f"tcp:{farm.port}:interface=127.0.0.1",
        check=True)
    p = cli("furl-master", "start", "-d", other)
    assert p.returncode != 0
    assert p.stderr.strip() == (f"furl-master: error: cannot listen on tcp:{farm.port}:"
                                "interface=127.0.0.1: [Errno 98] Address already in use")
    assert not os.path.exists(os.path.join(other, "private", "admin.furl"))


def test_worker_furl_file_must_be_private(farm: Farm, tmp_path) -> None:
    furl = farm.create_worker("w1")
    f = tmp_path / "furl.txt"
    f.write_text(furl + "\n")
    os.chmod(f, 0o644)
    wd = str(tmp_path / "wd")
    p = cli("furl-worker", "create-worker", wd, "--furl-file", str(f))
    assert p.returncode != 0 and "chmod 600" in p.stderr and furl not in p.stderr
    os.chmod(f, 0o600)
    cli("furl-worker", "create-worker", wd, "--furl-file", str(f), check=True)
    assert oct(os.stat(os.path.join(wd, "master.furl")).st_mode & 0o777) == "0o600"
    assert (tmp_path / "wd" / "info" / "host").exists()
    p = cli("furl-worker", "create-worker", wd, "--furl", furl)
    assert p.returncode != 0 and "already a worker" in p.stderr
    assert cli("furl-worker", "status", wd).returncode == 3
    farm.start_master()
    p = cli("furl-worker", "start", wd)  # the FURL comes from DIR/master.furl
    farm.procs.track_pidfile(tmp_path / "wd" / "furl-worker.pid")
    assert p.returncode == 0, p.stderr
    st = cli("furl-worker", "status", wd)
    assert st.returncode == 0 and "attached to the master at tcp:127.0.0.1:" in st.stdout
    p = cli("furl-worker", "start", wd)
    assert p.returncode != 0 and "already running" in p.stderr
    assert farm.connected("w1")


def test_dead_master_is_noticed_and_worker_comes_back(farm: Farm) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl, "--keepalive", "1", "--disconnect-timeout", "3")
    wlog = farm.tmp / "worker-w1" / "worker.log"
    master_pid = int((farm.mdir / "furl-master.pid").read_text())
    os.kill(master_pid, signal.SIGSTOP)  # a hung master, or a NAT that dropped us
    try:
        assert farm.wait_for(lambda: "lost the connection" in wlog.read_text(), 15)
        st = cli("furl-worker", "status", str(farm.tmp / "worker-w1"))
        assert st.returncode == 4 and "not attached" in st.stdout
    finally:
        os.kill(master_pid, signal.SIGCONT)
    assert farm.wait_for(lambda: wlog.read_text().count("attached to the master") >= 2, 30)
    assert farm.wait_for(lambda: farm.connected("w1"), 10)
