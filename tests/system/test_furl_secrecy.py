"""The worker's FURL never reaches a command it runs, whichever way it was given.

A command could see it in its own environment (inherited), in the
worker's ``/proc/PID/environ`` (the environment the worker was started
with, kept for its life) or ``/proc/PID/cmdline`` (shown by ``ps`` to
every user); each command here prints all three, and ``ps`` for good
measure, and the swissnum must be in none of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from buildbot_furl.testing.farm import Farm, cli

SNOOP = ('env; echo ---; tr "\\0" "\\n" < /proc/$PPID/environ; echo ---; '
         'tr "\\0" " " < /proc/$PPID/cmdline; echo; echo ---; ps -eo args')


def _assert_unseen(farm: Farm, worker: str, furl: str) -> None:
    p = farm.run(worker, "sh", "-c", SNOOP, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert out.splitlines().count("---") == 3 and "PATH=" in out  # the snooping worked
    swiss = furl.rsplit("/", 1)[1]
    assert swiss not in out, "the FURL reached a command the worker ran"
    assert "FURL_WORKER_FURL" not in out


@pytest.mark.parametrize("way", ["--furl", "--furl-file", "env", "master.furl"])
def test_daemon_never_hands_the_furl_to_commands(farm: Farm, tmp_path: Path, way: str) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    wd = tmp_path / "worker-w1"
    extra: list[str] = []
    env: dict[str, str] = {}
    if way == "--furl":
        wd.mkdir()
        extra = ["--furl", furl]
    elif way == "--furl-file":
        wd.mkdir()
        f = tmp_path / "furl.txt"
        f.write_text(furl + "\n")
        f.chmod(0o600)
        extra = ["--furl-file", str(f)]
    elif way == "env":
        wd.mkdir()
        env = {"FURL_WORKER_FURL": furl}
    else:
        cli("furl-worker", "create-worker", str(wd), "--furl", furl, check=True)
    p = cli("furl-worker", "start", str(wd), *extra, env=env)
    farm.procs.track_pidfile(wd / "furl-worker.pid")
    assert p.returncode == 0, p.stderr
    _assert_unseen(farm, "w1", furl)


@pytest.mark.parametrize("way", ["--furl", "env"])
def test_foreground_worker_drops_the_furl_from_argv_and_environ(
        farm: Farm, tmp_path: Path, way: str) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    wd = tmp_path / "fg"
    wd.mkdir()
    args = ["--furl", furl] if way == "--furl" else []
    env = {"FURL_WORKER_FURL": furl} if way == "env" else {}
    proc = farm.procs.popen(sys.executable, "-m", "buildbot_furl.cli.worker", "start", str(wd),
                            "--nodaemon", *args, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert farm.wait_for(lambda: bool(farm.workers()["w1"].get("connected")), 20)
    # the same process (exec keeps the pid), now without the FURL in argv or environ
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
    swiss = furl.rsplit("/", 1)[1].encode()
    assert swiss not in cmdline and swiss not in environ
    _assert_unseen(farm, "w1", furl)
    os.kill(proc.pid, 15)
    proc.wait(15)
