"""Day-to-day commands: handing FURLs out and in, status of what is wrong,
restart, exit codes, and the help that explains them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from buildbot_furl.testing.farm import Farm, cli


def test_create_and_rotate_write_the_furl_to_a_new_private_file(farm: Farm,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "w1.furl"
    p = farm.master("create-worker", "w1", "-o", str(out))
    assert p.returncode == 0 and p.stdout == ""
    assert os.stat(out).st_mode & 0o777 == 0o600
    furl = out.read_text().strip()
    farm.secrets.add(furl.rsplit("/", 1)[1])
    assert furl in (farm.mdir / "workers.furls").read_text()
    # an existing file is never overwritten, and then nothing is added
    p = farm.master("create-worker", "w2", "-o", str(out))
    assert p.returncode == 1 and "already exists; not overwriting" in p.stderr
    assert "w2" not in farm.workers() and out.read_text().strip() == furl
    new = tmp_path / "w1-new.furl"
    assert farm.master("rotate-worker", "w1", "-o", str(new)).returncode == 0
    assert os.stat(new).st_mode & 0o777 == 0o600
    assert new.read_text().strip() != furl
    farm.secrets.add(new.read_text().strip().rsplit("/", 1)[1])
    # a failed edit leaves no half-made file behind
    p = farm.master("rotate-worker", "nosuch", "-o", str(tmp_path / "x.furl"))
    assert p.returncode == 1 and not (tmp_path / "x.furl").exists()


@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker w1", r"refused \d+ attach attempts from")  # staged
def test_set_furl_after_rotation_switches_a_running_worker(farm: Farm,
                                                            tmp_path: Path) -> None:
    old = farm.create_worker("w1")
    farm.start_master()
    wd = tmp_path / "wd"
    cli("furl-worker", "create-worker", str(wd), "--furl", old, check=True)
    p = cli("furl-worker", "start", str(wd))
    farm.procs.track_pidfile(wd / "furl-worker.pid")
    assert p.returncode == 0, p.stderr
    new_file = tmp_path / "new.furl"
    farm.master("rotate-worker", "w1", "-o", str(new_file), check=True)
    new = new_file.read_text().strip()
    farm.secrets.add(new.rsplit("/", 1)[1])
    assert farm.wait_for(lambda: not farm.connected("w1"), 5)
    p = cli("furl-worker", "set-furl", str(wd), "--furl-file", str(new_file))
    assert p.returncode == 0, p.stderr
    assert "switched to the new FURL and is attached" in p.stderr
    assert (wd / "master.furl").read_text().strip() == new
    assert os.stat(wd / "master.furl").st_mode & 0o777 == 0o600
    assert farm.connected("w1")
    # and the next start uses it
    cli("furl-worker", "restart", str(wd), check=True)
    assert farm.connected("w1")
    # set-furl with no worker running just stores it
    cli("furl-worker", "stop", str(wd), check=True)
    p = cli("furl-worker", "set-furl", str(wd), "--furl-file", str(new_file))
    assert p.returncode == 0 and "no worker runs" in p.stderr


def test_start_with_another_furl_says_how_to_keep_it(farm: Farm, tmp_path: Path) -> None:
    old = farm.create_worker("w1")
    farm.start_master()
    wd = tmp_path / "wd"
    cli("furl-worker", "create-worker", str(wd), "--furl", old, check=True)
    new_file = tmp_path / "new.furl"
    farm.master("rotate-worker", "w1", "-o", str(new_file), check=True)
    farm.secrets.add(new_file.read_text().strip().rsplit("/", 1)[1])
    p = cli("furl-worker", "start", str(wd), "--furl-file", str(new_file))
    farm.procs.track_pidfile(wd / "furl-worker.pid")
    assert p.returncode == 0
    assert "holds another FURL" in p.stderr and "furl-worker set-furl" in p.stderr


def test_status_and_list_report_the_same_problems(farm: Farm) -> None:
    farm.create_worker("w1")
    furls_path = farm.mdir / "workers.furls"
    os.chmod(furls_path, 0o644)
    for cmd in (("status",), ("list-workers",)):
        p = farm.master(*cmd)
        # said once: status warns; list-workers cannot list without it, so it is the error
        assert p.stderr.count("chmod 600") == 1, (cmd, p.stderr)
        assert ("warning:" if cmd == ("status",) else "error:") in p.stderr, cmd
    os.chmod(furls_path, 0o600)
    with open(farm.mdir / "furl-master.conf", "a") as f:
        f.write("reload_interval = 0.2\n")
    farm.start_master()
    # while it runs: a chmod is noticed and logged within the reload interval
    os.chmod(furls_path, 0o644)
    log = farm.mdir / "master.log"
    assert farm.wait_for(lambda: "accessible by group or others" in log.read_text(), 3)
    st = json.loads(farm.master("status", "--json").stdout)
    lw = json.loads(farm.master("list-workers", "--json").stdout)
    assert st["problems"] == lw["problems"] and any("chmod 600" in p for p in st["problems"])
    os.chmod(furls_path, 0o600)
    assert farm.wait_for(lambda: "is fine again" in log.read_text(), 3)
    # a broken edit: both say which line
    furls_path.write_text(furls_path.read_text() + "broken line here\n")
    assert farm.wait_for(lambda: "workers.furls not applied" in log.read_text(), 3)
    for cmd in ("status", "list-workers"):
        p = farm.master(cmd)
        assert "workers.furls:" in p.stderr and "found 3 field(s)" in p.stderr, (cmd, p.stderr)
    assert farm.master("status").returncode == 0  # still running and serving


def test_restart_and_status_json(farm: Farm) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl)
    wd = farm.tmp / "worker-w1"
    st = cli("furl-worker", "status", "--json", str(wd))
    rec = json.loads(st.stdout)
    assert st.returncode == 0 and rec["running"] and rec["attached"]
    assert rec["master"].startswith("tcp:127.0.0.1:") and rec["last_error"] is None
    pid = int((farm.mdir / "furl-master.pid").read_text())
    p = farm.master("restart")
    assert p.returncode == 0 and "stopped" in p.stderr and "started" in p.stderr
    farm.procs.track_pidfile(farm.mdir / "furl-master.pid")
    assert int((farm.mdir / "furl-master.pid").read_text()) != pid
    assert farm.wait_for(lambda: farm.connected("w1"), 30)
    cli("furl-worker", "stop", str(wd), check=True)
    st = cli("furl-worker", "status", "--json", str(wd))
    assert st.returncode == 3 and json.loads(st.stdout)["running"] is False
    assert farm.master("stop").returncode == 0
    p = farm.master("stop")
    assert p.returncode == 3 and "not running" in p.stderr


def test_hand_edit_applies_within_about_a_second(farm: Farm) -> None:
    """The documented figure: the default reload interval is 1 s."""
    farm.start_master()
    furl = farm.create_worker("late")
    time.sleep(1.5)
    farm.start_worker("late", furl, "--wait", "5")
    assert farm.connected("late")
