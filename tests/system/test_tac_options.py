"""buildbot.tac's umask, numcpus, maxretries and info/ files for a FURL worker:
parsing and storage (furl-worker.conf), and what the daemon does with them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from buildbot_furl.testing.farm import PROGRAMS, Farm, cli
from buildbot_furl.testing.procs import child_env
from buildbot_furl.testing.timing import Timing

from buildbot_furl.cli.exits import Exit
from buildbot_furl.errors import ConfigError
from buildbot_furl.furl import parse_furl
from buildbot_furl.layout import WORKER_FILES, WorkerPaths
from buildbot_furl.worker import service
from buildbot_furl.worker.config import WorkerOptions
from buildbot_furl.worker.settings import (
    Settings,
    parse_maxretries,
    parse_numcpus,
    parse_settings,
    parse_umask,
    read_settings,
)

# -- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [("022", 0o22), ("0o027", 0o27), ("000", 0),
                                        ("777", 0o777), ("0777", 0o777), ("2", 2)])
def test_umask_is_octal(text: str, value: int) -> None:
    assert parse_umask(text) == value


@pytest.mark.parametrize("text", ["8", "0x12", "1000", "", "-022", "22 2", "abc", "07777"])
def test_bad_umask_says_what_it_wants(text: str) -> None:
    with pytest.raises(ConfigError, match="is not an octal mode from 000 to 777"):
        parse_umask(text)


def test_numcpus_and_maxretries() -> None:
    assert parse_numcpus("8") == 8 and parse_maxretries("0") == 0
    assert parse_maxretries("12") == 12
    for bad in ("0", "-1", "1.5", "x", ""):
        with pytest.raises(ConfigError, match="is not a positive whole number"):
            parse_numcpus(bad)
    for bad in ("-1", "1.5", "x", ""):
        with pytest.raises(ConfigError, match="is not a whole number of 0 or more"):
            parse_maxretries(bad)


def test_settings_file_round_trip_and_errors() -> None:
    st = Settings(umask=0o22, numcpus=4, maxretries=3)
    assert parse_settings(st.to_text(), "f") == st
    assert parse_settings("", "f") == Settings()
    assert parse_settings("[worker]\nnumcpus = 2  # two\n", "f") == Settings(numcpus=2)
    for text, error in [("[worker]\numask = 9\n", "f: umask: '9' is not an octal mode"),
                        ("[worker]\ncpus = 2\n", "f: unknown key 'cpus'"),
                        ("[other]\n", "f: unknown section [other]"),
                        ("umask = 022\n", "f: File contains no section headers.")]:
        with pytest.raises(ConfigError) as e:
            parse_settings(text, "f")
        assert str(e.value).startswith(error) and "\n" not in str(e.value)
    # the command line's values over the file's
    assert Settings(numcpus=8).over(st) == Settings(umask=0o22, numcpus=8, maxretries=3)


def test_options_pass_the_settings_to_the_daemon() -> None:
    argv = WorkerOptions(settings=Settings(umask=0o2, numcpus=3, maxretries=0)).to_argv()
    assert argv[-6:] == ["--umask", "002", "--numcpus", "3", "--maxretries", "0"]
    assert "--umask" not in WorkerOptions().to_argv()


def test_the_settings_file_is_the_workers_own() -> None:
    """A policy and furl.put refuse to let the master write it."""
    assert os.path.basename(WorkerPaths("/w").settings) in WORKER_FILES


# -- the command line ---------------------------------------------------------------

FURL = "pb://ab7qgmm3z5ot4l2zfzuzlgdydh3txdqm@tcp:127.0.0.1:1/c7jxnhpj3vhxxnqxqyxfb6hhrsrrnnre"


def test_create_worker_stores_settings_and_info(tmp_path: Path) -> None:
    wd = tmp_path / "w"
    p = cli("furl-worker", "create-worker", str(wd), "--furl", FURL, "--umask", "022",
            "--numcpus", "7", "--maxretries", "5", "--access-uri", "ssh://w.example.org",
            "--admin", "Ann <ann@example.org>", "--host", "box 7")
    assert p.returncode == 0, p.stderr
    assert read_settings(str(wd / "furl-worker.conf")) == Settings(0o22, 7, 5)
    assert (wd / "furl-worker.conf").read_text() == \
        "[worker]\numask = 022\nnumcpus = 7\nmaxretries = 5\n"
    info = {f.name: f.read_text() for f in (wd / "info").iterdir()}
    assert info == {"admin": "Ann <ann@example.org>\n", "host": "box 7\n",
                    "access_uri": "ssh://w.example.org\n"}
    # without options: no settings file, and no access_uri (as buildbot-worker)
    p = cli("furl-worker", "create-worker", str(tmp_path / "plain"), "--furl", FURL)
    assert p.returncode == 0 and not (tmp_path / "plain" / "furl-worker.conf").exists()
    assert sorted(os.listdir(tmp_path / "plain" / "info")) == ["admin", "host"]


@pytest.mark.parametrize("option,value,error", [
    ("--umask", "8", "--umask: '8' is not an octal mode from 000 to 777 (e.g. 022)"),
    ("--umask", "0x1ff", "--umask: '0x1ff' is not an octal mode"),
    ("--numcpus", "0", "--numcpus: '0' is not a positive whole number"),
    ("--maxretries", "-2", "--maxretries: '-2' is not a whole number of 0 or more"),
])
def test_bad_values_are_one_line_and_create_nothing(tmp_path: Path, option: str, value: str,
                                                   error: str) -> None:
    wd = tmp_path / "w"
    p = cli("furl-worker", "create-worker", str(wd), "--furl", FURL, option, value)
    assert p.returncode == Exit.ERROR  # as the same value in furl-worker.conf
    assert p.stderr.startswith(f"furl-worker: error: {error}")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert not wd.exists()
    # start and settings check them the same way
    cli("furl-worker", "create-worker", str(wd), "--furl", FURL, check=True)
    for cmd in ("start", "restart", "settings"):
        p = cli("furl-worker", cmd, str(wd), option, value)
        assert p.returncode == Exit.ERROR and p.stderr.count("\n") == 1, (cmd, p.stderr)
        assert error in p.stderr
    # the same value in furl-worker.conf: the same exit code
    conf = wd / "furl-worker.conf"
    conf.write_text(f"[worker]\n{option[2:]} = {value}\n")
    conf.chmod(0o600)
    p = cli("furl-worker", "start", str(wd))
    assert p.returncode == Exit.ERROR and repr(value) in p.stderr, p.stderr
    assert not (wd / "furl-worker.pid").exists()


def test_settings_shows_and_changes_the_file(tmp_path: Path) -> None:
    wd = tmp_path / "w"
    cli("furl-worker", "create-worker", str(wd), "--furl", FURL, "--numcpus", "3", check=True)
    p = cli("furl-worker", "settings", str(wd), check=True)
    assert p.stdout.split("\n")[1:4] == ["  umask:       inherited", "  numcpus:     3",
                                         "  maxretries:  none (retry forever)"]
    cli("furl-worker", "settings", str(wd), "--umask", "027", "--maxretries", "4", check=True)
    assert read_settings(str(wd / "furl-worker.conf")) == Settings(0o27, 3, 4)
    cli("furl-worker", "settings", str(wd), "--unset", "numcpus", "--unset", "umask",
        check=True)
    assert read_settings(str(wd / "furl-worker.conf")) == Settings(maxretries=4)
    p = cli("furl-worker", "settings", str(wd), "--unset", "umask", "--umask", "022")
    assert p.returncode == Exit.USAGE and "give one" in p.stderr
    # a bad file: start says what is wrong in one line (exit 1), and never starts
    (wd / "furl-worker.conf").write_text("[worker]\nnumcpus = many\n")
    p = cli("furl-worker", "start", str(wd))
    assert p.returncode == Exit.ERROR and p.stderr.count("\n") == 1
    assert "furl-worker.conf: numcpus: 'many' is not a positive whole number" in p.stderr
    assert not (wd / "furl-worker.pid").exists()


def test_failures_in_a_row_and_a_success_resets_them(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from buildbot_furl.errors import ConnectionLost
    from buildbot_furl.testing.fakelink import FakeDialer, attach_answer

    clock, dialer = Clock(), FakeDialer()
    svc = service.WorkerService(WorkerPaths(str(tmp_path)), parse_furl(FURL), numcpus=5,
                                maxretries=3, clock=clock, dial=dialer)
    assert svc.bot.attach_info()["numcpus"] == 5
    svc.link.start()
    gave_up: list[str] = []
    svc.on_give_up = gave_up.append
    for ok in (False, False, True, False, False):
        if ok:
            login = dialer.connect()
            login.answer("attach", attach_answer())
            clock.advance(service.STABLE_AFTER)
            login.cut()  # a link that held: its loss is no failed attempt
        else:
            dialer.refuse(ConnectionLost("nope"))
        clock.advance(svc.core.retry_timer.getTime() - clock.seconds())  # dial again
    assert not gave_up and svc.failures == 2
    dialer.refuse(ConnectionLost("connection refused"))
    assert gave_up == ["connection refused; 3 failed attempts in a row (maxretries 3)"]


# -- the daemon -----------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", ["027", "000"])
def test_umask_applies_to_what_builds_create_not_to_the_workers_files(
        farm: Farm, umask: str) -> None:
    farm.create_worker("w1")
    farm.start_master()
    wd = farm.wdir("w1")
    cli("furl-worker", "create-worker", str(wd), "--furl", farm.furls["w1"], "--umask", umask,
        check=True)
    p = cli("furl-worker", "start", str(wd))
    farm.procs.track_pidfile(wd / "furl-worker.pid")
    assert p.returncode == 0, p.stderr
    r = farm.run("w1", "sh", "-c", "touch made.txt && mkdir made.d")
    assert r.returncode == 0, r.stderr
    mask = int(umask, 8)
    assert _mode(wd / "made.txt") == 0o666 & ~mask
    assert _mode(wd / "made.d") == 0o777 & ~mask
    # the worker's own files keep their explicit modes, whatever the umask
    for name in ("master.furl", "worker.log", "furl-worker.state", "furl-worker.conf"):
        assert _mode(wd / name) == 0o600, name
    assert f"umask set to {umask}" in (wd / "worker.log").read_text()


def test_umask_on_the_command_line_overrides_the_file(farm: Farm) -> None:
    farm.create_worker("w1")
    farm.start_master()
    wd = farm.wdir("w1")
    cli("furl-worker", "create-worker", str(wd), "--furl", farm.furls["w1"], "--umask", "077",
        check=True)
    p = cli("furl-worker", "start", str(wd), "--umask", "002")
    farm.procs.track_pidfile(wd / "furl-worker.pid")
    assert p.returncode == 0, p.stderr
    assert farm.run("w1", "touch", "f").returncode == 0
    assert _mode(wd / "f") == 0o664


def test_maxretries_gives_up_with_one_line_and_exit_2(farm: Farm, timing: Timing) -> None:
    """No master listens: the worker exits after N attempts, quickly, with a
    line that says why (and no secret anywhere)."""
    farm.create_worker("w1")  # the master is never started
    wd = farm.wdir("w1")
    cli("furl-worker", "create-worker", str(wd), "--furl", farm.furls["w1"],
        "--maxretries", "2", check=True)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", PROGRAMS["furl-worker"], "start", str(wd),
                        "--nodaemon", "--wait", "0"], capture_output=True, text=True,
                       env=child_env(), timeout=60, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - t0
    assert p.returncode == Exit.UNAVAILABLE, p.stderr
    timing.record("a worker gives up after 2 failed attempts", elapsed, 15)
    want = (f"giving up: cannot reach the master at tcp:127.0.0.1:{farm.port}: connection "
            "refused; 2 failed attempts in a row (maxretries 2)")
    assert want in p.stderr
    assert p.stderr.count("; retrying") == 1  # the last attempt does not say it retries
    assert want in (wd / "worker.log").read_text()
    assert not (wd / "furl-worker.pid").exists() or \
        not (wd / "furl-worker.pid").read_text().strip()
    # started in the background with --wait, start itself reports it
    p = cli("furl-worker", "start", str(wd), "--maxretries", "1")
    assert p.returncode == Exit.ERROR and p.stderr.count("\n") == 1
    assert "1 failed attempt in a row (maxretries 1)" in p.stderr


def test_maxretries_counts_again_after_an_attach(farm: Farm) -> None:
    """Attached, then the master goes away for good: the worker gives up
    after N more failures (exit 2), where a plain worker keeps trying."""
    farm.create_worker("w1")
    farm.start_master()
    wd = farm.wdir("w1")
    cli("furl-worker", "create-worker", str(wd), "--furl", farm.furls["w1"],
        "--maxretries", "2", check=True)
    p = farm.procs.popen(sys.executable, "-m", PROGRAMS["furl-worker"], "start", str(wd),
                         "--nodaemon", "--wait", "30", stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    assert farm.wait_for(lambda: farm.workers().get("w1", {}).get("connected"), 30)
    farm.stop_master()
    assert p.wait(timeout=30) == Exit.UNAVAILABLE
    log = (wd / "worker.log").read_text()
    assert "lost the connection to the master; reconnecting" in log
    assert "2 failed attempts in a row (maxretries 2)" in log
