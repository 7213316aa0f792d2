"""Log files: rotated by size (a few kept), reopened on SIGHUP for logrotate."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from buildbot_furl.testing.farm import Farm, cli

from buildbot_furl import logs
from buildbot_furl.errors import ConfigError


def test_rotation_keeps_a_few_files_of_bounded_size(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    f = logs.RotatingFile(str(path), max_bytes=64 * 1024, keep=3)
    line = "y" * 99 + "\n"
    for _ in range(5000):  # about 500 KB
        f.write(line)
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x.log", "x.log.1", "x.log.2", "x.log.3"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 64 * 1024
        assert p.stat().st_mode & 0o777 == 0o600
    assert path.read_text().endswith(line)


def test_reopen_follows_an_external_rotation(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    f = logs.RotatingFile(str(path), max_bytes=0)
    f.write("before\n")
    path.rename(tmp_path / "x.log.old")
    f.write("still old\n")
    f.reopen()
    f.write("after\n")
    f.close()
    assert (tmp_path / "x.log.old").read_text() == "before\nstill old\n"
    assert path.read_text() == "after\n"


@pytest.mark.parametrize("text, n", [("10M", 10 << 20), ("512k", 512 << 10), ("0", 0),
                                     ("1G", 1 << 30), (str(1 << 20), 1 << 20)])
def test_parse_size(text: str, n: int) -> None:
    assert logs.parse_size(text) == n


@pytest.mark.parametrize("text", ["ten", "-1", "1k", "5T"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ConfigError):
        logs.parse_size(text)


def test_daemons_rotate_and_reopen_on_sighup(farm: Farm) -> None:
    with open(farm.mdir / "furl-master.conf", "a") as f:
        f.write("log_size = 64k\nlog_keep = 2\n")
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl, "--log-size", "64k")
    mpid = int((farm.mdir / "furl-master.pid").read_text())
    log = farm.mdir / "master.log"
    # SIGHUP: logrotate's way (rename, then HUP) - the master writes a new file
    log.rename(farm.mdir / "master.log.moved")
    os.kill(mpid, signal.SIGHUP)
    assert farm.wait_for(lambda: log.exists() and "log reopened" in log.read_text(), 5)
    assert (log.stat().st_mode & 0o777) == 0o600
    # size: many refused attach attempts fill master.log past 64k
    bad = furl.rsplit("/", 1)[0] + "/" + "x" * 32
    for _ in range(3):
        cli("furl-worker", "start", str(farm.tmp / "bad"), "--wait", "1",
            env={"FURL_WORKER_FURL": bad})
    wd = farm.tmp / "worker-w1"
    wpid = int((wd / "furl-worker.pid").read_text())
    deadline = time.monotonic() + 30
    while not (farm.mdir / "master.log.1").exists() and time.monotonic() < deadline:
        os.kill(mpid, signal.SIGHUP)  # each one handled is a log line on the master
        time.sleep(0.005)  # signals sent faster than handled would merge
    assert (farm.mdir / "master.log.1").exists()
    assert not (farm.mdir / "master.log.3").exists()
    # the worker reopens too, and keeps running (SIGHUP does not kill it)
    (wd / "worker.log").rename(wd / "worker.log.moved")
    os.kill(wpid, signal.SIGHUP)
    assert farm.wait_for(lambda: (wd / "worker.log").exists(), 5)
    assert cli("furl-worker", "status", str(wd)).returncode == 0
