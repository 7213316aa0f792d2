"""Invites end to end: a real furl-master serving its own mailbox on
loopback (never the public one), real furl-worker claims: a claimed
invite, a code used twice, a wrong code, a cancelled invite, a master
restarted while an invite is pending, a rotation by invite, and an invite
for a worker revoked meanwhile."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from buildbot_furl import furlsfile
from buildbot_furl.testing.farm import Farm, argv, cli
from buildbot_furl.testing.procs import child_env, free_port


def _mailbox(farm: Farm) -> str:
    port = free_port()
    farm.configure(mailbox_listen=f"tcp:{port}:interface=127.0.0.1",
                   mailbox_url=f"ws://127.0.0.1:{port}/v1")
    return f"ws://127.0.0.1:{port}/v1"


def _invite(farm: Farm, name: str, *extra: str) -> str:
    p = farm.master("invite", name, *extra, check=True)
    code = p.stdout.strip()
    assert p.stdout == code + "\n" and code[0].isdigit()  # only the code on stdout
    assert "good once" in p.stderr and code not in p.stderr
    farm.secrets.add(code)
    return code


def _claim(farm: Farm, cmd: str, wdir: Path, code: str, mailbox: str,
           wait: str = "20") -> tuple[int, str, str]:
    p = cli("furl-worker", cmd, str(wdir), "--code", code, "--mailbox", mailbox,
            "--claim-wait", wait, timeout=90)
    assert "Traceback" not in p.stderr
    return p.returncode, p.stdout, p.stderr


def _furl_of(farm: Farm, name: str) -> str:
    entry = furlsfile.read(str(farm.mdir / "workers.furls")).get(name)
    assert entry is not None
    farm.secrets.add(entry.furl.swissnum)
    return str(entry.furl)


@pytest.mark.expect_log(r"invite for worker w2: a wrong code was tried")  # staged
def test_invites_from_code_to_attached_worker(farm: Farm, tmp_path: Path) -> None:
    mailbox = _mailbox(farm)
    farm.start_master()
    code = _invite(farm, "w1")
    listed = farm.master("list-workers", check=True).stdout
    assert "w1  invite pending until" in listed and code not in listed
    # claimed: the FURL is minted now, stored 0600, and the worker attaches with it
    wdir = tmp_path / "w1"
    rc, out, err = _claim(farm, "create-worker", wdir, code, mailbox)
    assert rc == 0, err
    furl = _furl_of(farm, "w1")
    assert (wdir / "master.furl").read_text().strip() == furl
    assert stat.S_IMODE(os.stat(wdir / "master.furl").st_mode) == 0o600
    assert furl not in out + err and "pb://" not in out + err
    p = cli("furl-worker", "start", str(wdir), timeout=90)
    farm.procs.track_pidfile(wdir / "furl-worker.pid")
    assert p.returncode == 0, p.stderr
    assert farm.wait_for(lambda: farm.connected("w1"), 30)
    rows = farm.master("list-workers", "--json", check=True).stdout
    assert '"state": "claimed"' in rows and code not in rows
    log = (farm.mdir / "master.log").read_text()
    assert "invite for worker w1 claimed by" in log
    # the same code again meets nobody (here given on stdin, off the command line)
    p = subprocess.run(argv("furl-worker", "create-worker", str(tmp_path / "again"),
                            "--code", "-", "--mailbox", mailbox, "--claim-wait", "3"),
                       input=code + "\n", capture_output=True, text=True, timeout=90,
                       env=child_env())
    assert p.returncode == 1 and "no master answered this code" in p.stderr, p.stderr
    assert code not in p.stderr
    assert not (tmp_path / "again" / "master.furl").exists()
    # a wrong code: both ends say so, and the invite is burned
    code2 = _invite(farm, "w2")
    wrong = code2.split("-", 1)[0] + "-wrong-guess"
    rc, _, err = _claim(farm, "create-worker", tmp_path / "w2", wrong, mailbox)
    assert rc == 1 and "the code is wrong" in err
    rc, _, err = _claim(farm, "create-worker", tmp_path / "w2", code2, mailbox, "3")
    assert rc == 1 and "no master answered" in err
    assert "w2" not in farm.workers()
    # cancelled
    code3 = _invite(farm, "w3")
    farm.master("invite", "w3", "--cancel", check=True)
    rc, _, err = _claim(farm, "create-worker", tmp_path / "w3", code3, mailbox, "3")
    assert rc == 1 and "no master answered" in err
    p = farm.master("invite", "w3", "--cancel")
    assert p.returncode == 1 and "no invite for worker 'w3' is pending" in p.stderr


@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker w1",
                        r"refused \d+ attach attempts from")  # staged: the rotation
def test_invites_survive_a_restart_rotate_and_die_with_their_worker(
        farm: Farm, tmp_path: Path) -> None:
    mailbox = _mailbox(farm)
    furl = farm.create_worker("w1")
    farm.create_worker("w2")
    farm.start_master()
    farm.start_worker("w1", furl)
    wdir = farm.wdir("w1")
    # a new FURL for w1, by invite, across a restart of the master
    code = _invite(farm, "w1", "--ttl", "2h")
    farm.stop_master()
    farm.start_master()
    assert "w1  invite pending" in farm.master("list-workers", check=True).stdout
    rc, out, err = _claim(farm, "set-furl", wdir, code, mailbox)
    assert rc == 0, err
    new = _furl_of(farm, "w1")
    assert new != furl
    assert farm.wait_for(lambda: farm.connected("w1"), 30)  # switched to it
    assert (wdir / "master.furl").read_text().strip() == new
    # an invite for w2, then w2 is revoked: the invite dies with it
    code2 = _invite(farm, "w2")
    farm.master("revoke-worker", "w2", check=True)
    assert farm.wait_for(
        lambda: "invite pending" not in farm.master("list-workers", check=True).stdout, 10)
    farm.wdir("w2").mkdir()
    rc, _, err = _claim(farm, "set-furl", farm.wdir("w2"), code2, mailbox, "3")
    assert rc == 1 and "no master answered" in err
    assert "w2" not in farm.workers()
