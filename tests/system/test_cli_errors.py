"""Errors a user meets (issue 15, items 8-10): a bad setting never locks the
admin out, the same mistake exits the same way on every path, problems are
reported all at once and each once, and what is echoed back is cut short."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from buildbot_furl.errors import ConfigError
from buildbot_furl.master import config as mconfig
from buildbot_furl.testing.farm import Farm, cli


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_a_bad_setting_warns_but_never_locks_the_admin_out(farm: Farm, tmp_path: Path) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl)
    farm.configure(log_size="4k")
    run = farm.run("w1", "echo", "hi")
    assert run.returncode == 0 and run.stdout == b"hi\n", run.stderr
    assert len(_warnings(run.stderr.decode())) == 1
    for args in (("status",), ("list-workers",),
                 ("put", "w1", str(farm.mdir / "furl-master.conf"), "conf.copy"),
                 ("get", "w1", "conf.copy", str(tmp_path / "back"))):
        p = farm.master(*args)
        assert p.returncode == 0, (args, p.stderr)
        warned = _warnings(p.stderr)
        assert len(warned) == 1 and "log_size = 4k" in warned[0], (args, p.stderr)
    assert (tmp_path / "back").read_bytes() == (farm.mdir / "furl-master.conf").read_bytes()
    st = json.loads(farm.master("status", "--json").stdout)
    assert any("log_size" in p for p in st["problems"])
    # what would start the master with it is refused, and the running one keeps running
    p = farm.master("restart")
    assert p.returncode == 1 and "log_size = 4k" in p.stderr
    assert farm.master("status").returncode == 0
    p = farm.master("stop")
    assert p.returncode == 0 and "stopped" in p.stderr, p.stderr
    assert farm.master("status").returncode == 3


def test_the_same_bad_value_exits_1_on_every_path(farm: Farm, tmp_path: Path) -> None:
    farm.configure(log_size="4k")
    p = farm.master("start")
    assert p.returncode == 1 and "log size below 64k" in p.stderr
    wd = tmp_path / "wd"
    wd.mkdir()
    for bad in (("--log-size", "10k"), ("--log-keep", "0"), ("--umask", "999")):
        p = cli("furl-worker", "start", str(wd), *bad, "--furl-file", str(tmp_path / "none"))
        assert p.returncode == 1, (bad, p.returncode, p.stderr)
        assert p.stderr.startswith(f"furl-worker: error: {bad[0]}: "), p.stderr
    # a file the admin client must read, made unsafe: 1 as well (not run's 2)
    os.chmod(farm.mdir / "workers.furls", 0o644)
    for args in (("start",), ("create-worker", "w9")):
        assert farm.master(*args).returncode == 1, args


def test_every_bad_setting_is_named_at_once(tmp_path: Path) -> None:
    d = tmp_path / "m"
    mconfig.create(str(d), "tcp:127.0.0.1:9", None)
    with open(d / "furl-master.conf", "a") as f:
        f.write("log_size = 4k\nlog_keep = 0\ncall_timeout = soon\n")
    reading = mconfig.read(str(d))
    assert reading.config is not None and reading.config.log_size == 10 * 1024 * 1024
    assert [p.split(": ")[1].split(" =")[0] for p in reading.problems] == \
        ["log_size", "log_keep", "call_timeout"]
    assert "call_timeout = soon: not a number" in reading.problems[2]
    with pytest.raises(ConfigError) as e:
        mconfig.load(str(d))
    assert str(e.value).count("furl-master.conf") == 3


def test_a_copied_master_directory_reports_every_problem_at_once(farm: Farm) -> None:
    farm.create_worker("w1")
    farm.start_master()
    farm.stop_master()
    # what a copy that lost its modes looks like
    for rel, mode in (("private", 0o755), ("private/tub.pem", 0o644),
                      ("workers.furls", 0o644)):
        os.chmod(farm.mdir / rel, mode)
    p = farm.master("start")
    assert p.returncode == 1
    for rel in ("private ", "tub.pem", "workers.furls"):
        assert rel in p.stderr, (rel, p.stderr)
    assert p.stderr.startswith("furl-master: error: 3 problems stop the master"), p.stderr
    # list-workers and status say each of them once (list-workers cannot read
    # workers.furls: that one is its error, not also a warning)
    for cmd in ("list-workers", "status"):
        p = farm.master(cmd)
        assert p.stderr.count("holds secrets") == 3, (cmd, p.stderr)
        assert len(_warnings(p.stderr)) == (2 if cmd == "list-workers" else 3), p.stderr


def test_copied_logs_are_made_private_at_start(farm: Farm) -> None:
    farm.create_worker("w1")
    farm.start_master()
    farm.stop_master()
    os.chmod(farm.mdir / "master.log", 0o644)
    (farm.mdir / "master.log.1").write_text("old worker names and addresses\n")
    os.chmod(farm.mdir / "master.log.1", 0o644)
    farm.start_master()
    # the logs hold worker names and addresses: a start makes them 0600
    for log in ("master.log", "master.log.1"):
        assert (farm.mdir / log).stat().st_mode & 0o777 == 0o600, log
    assert "made master.log, master.log.1 mode 0600" in (farm.mdir / "master.log").read_text()


def test_list_workers_says_a_broken_file_once(farm: Farm) -> None:
    furls = farm.mdir / "workers.furls"
    furls.write_text(furls.read_text() + "broken line here\n")
    p = farm.master("list-workers")
    assert p.returncode == 1
    assert p.stderr.count("found 3 field(s)") == 1, p.stderr


def test_a_graceful_stop_names_the_worker(farm: Farm) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl)
    wd = farm.wdir("w1")
    st = cli("furl-worker", "status", str(wd))
    assert f"attached to the master at tcp:127.0.0.1:{farm.port} as 'w1' since" in st.stdout
    p = cli("furl-worker", "stop", "--graceful", str(wd))
    assert p.returncode == 0, p.stderr
    assert f"give worker 'w1' (in {wd}) no new work" in p.stderr, p.stderr


def test_refusals_of_a_revoked_worker_are_named_in_every_line() -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    from buildbot_furl.master.refusals import Refusals

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        r = Refusals(limit=0)
        for _ in range(3):
            r.refused("192.0.2.1", "w1")
            r.refused("192.0.2.2")
        r.summarize()
        r.refused("192.0.2.1")  # the next minute: only a guess from that address
        r.refused("192.0.2.1")
        r.summarize()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
    assert lines[0] == ("refused attach from 192.0.2.1 with the revoked or rotated FURL of "
                        "worker w1; more from it are summed up every 60 s")
    assert "refused 3 attach attempts from 192.0.2.1 in the last 60 s (among them the " \
           "revoked or rotated FURL of worker w1)" in lines
    assert "refused 3 attach attempts from 192.0.2.2 in the last 60 s" in lines
    assert lines[-1] == "refused 2 attach attempts from 192.0.2.1 in the last 60 s"


def test_a_revoked_worker_is_logged_as_revoked(farm: Farm) -> None:
    farm.create_worker("w1")
    farm.configure(reload_interval=0.2)
    farm.start_master()
    farm.master("revoke-worker", "w1", check=True)
    log = farm.mdir / "master.log"
    assert farm.wait_for(lambda: "worker w1 revoked: its old FURL no longer works"
                         in log.read_text(), 5), log.read_text()
    assert "removed" not in log.read_text()


def test_an_invalid_name_is_echoed_short_and_never_past_a_slash(farm: Farm) -> None:
    long_name = "a" * 5000
    furlish = "pb://" + "b" * 32 + "@tcp:127.0.0.1:9/" + "c" * 40
    for args in (("create-worker", long_name), ("revoke-worker", long_name),
                 ("run", long_name, "--", "true"), ("get", long_name, "x", "y"),
                 ("create-worker", furlish), ("run", furlish, "--", "true")):
        p = cli("furl-master", "-d", str(farm.mdir), *args)
        assert p.returncode == 1, (args[0], p.returncode, p.stderr)
        assert len(p.stderr) < 300 and p.stderr.count("\n") == 1, p.stderr
        assert "c" * 40 not in p.stderr and "b" * 32 not in p.stderr
    p = farm.master("create-worker", long_name)
    assert "(5000 characters)" in p.stderr


def test_a_malformed_furl_is_described_as_furls_are_written() -> None:
    from buildbot_furl.furl import parse_furl

    for bad in ("pb://nonsense", "pb://" + "a" * 32 + "@/" + "s" * 32):
        with pytest.raises(ConfigError) as e:
            parse_furl(bad)
        assert "tcp:HOST:PORT" in str(e.value), str(e.value)


def test_put_and_get_name_the_copy_itself(farm: Farm, tmp_path: Path) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl)
    src = tmp_path / "a.bin"
    src.write_bytes(b"data")
    (tmp_path / "into").mkdir()
    # the worker's directory itself: one line, no ValueError
    for args in (("get", "w1", ".", str(tmp_path / "backup")), ("put", "w1", str(src), ".")):
        p = farm.master(*args)
        assert p.returncode == 2 and "names the worker's directory itself" in p.stderr, p.stderr
        assert "ValueError" not in p.stderr and p.stderr.count("\n") == 1
    # an existing directory on the receiving side is refused, on either side
    assert farm.master("put", "w1", str(src), "a.bin").returncode == 0
    assert farm.run("w1", "mkdir", "dir").returncode == 0
    p = farm.master("put", "w1", str(src), "dir")
    assert p.returncode == 2 and "is a directory" in p.stderr, p.stderr
    p = farm.master("get", "w1", "a.bin", str(tmp_path / "into"))
    assert p.returncode == 2 and "is a directory" in p.stderr, p.stderr
    assert f"{tmp_path / 'into' / 'a.bin'}" in p.stderr
    assert os.listdir(tmp_path / "into") == []
    # a file there is replaced, on either side
    (tmp_path / "old.bin").write_bytes(b"old")
    assert farm.master("get", "w1", "a.bin", str(tmp_path / "old.bin")).returncode == 0
    assert (tmp_path / "old.bin").read_bytes() == b"data"


def _main_in_process(main: Any, argv: list[str], monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a CLI's ``main()`` here (no process): its exit code and stderr."""
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    return int(e.value.code or 0), capsys.readouterr().err


def test_a_furl_typed_where_it_does_not_belong_is_never_echoed_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16 item 14: a FURL pasted where a name, a directory or an
    option's value belongs; the error says what was wrong, never the secret."""
    from buildbot_furl.cli.master import main as master_main
    from buildbot_furl.cli.worker import main as worker_main
    mdir = tmp_path / "m"
    cli("furl-master", "create-master", "-d", str(mdir), "--location", "tcp:127.0.0.1:9",
        check=True)
    furl = cli("furl-master", "create-worker", "-d", str(mdir), "w1", check=True).stdout.strip()
    secret = furl.rsplit("/", 1)[1]
    m, w = ["furl-master", "-d", str(mdir)], ["furl-worker"]
    cases = [
        (master_main, m + ["create-worker", "w2", furl], 64),  # click: an extra argument
        (master_main, m + ["run", "--timeout", furl, "w1", "--", "true"], 64),  # click: a value
        (master_main, m + ["drain", "--wait", furl, "w1"], 64),
        (master_main, m + [furl], 64),  # click: no such command
        (master_main, m + ["list-workers", furl], 64),
        (master_main, ["furl-master", "status", "-d", furl], 1),  # a directory
        (master_main, m + ["revoke-worker", furl], 1),  # a name
        (master_main, m + ["rotate-worker", furl], 1),
        (master_main, m + ["drain", furl], 1),
        (master_main, m + ["put", furl, str(mdir / "workers.furls"), "x"], 1),
        (master_main, m + ["run", "--env", furl, "w1", "--", "true"], 64),
        (worker_main, w + ["start", furl], 1),
        (worker_main, w + ["policy", furl], 1),
        (worker_main, w + ["settings", furl], 1),
        (worker_main, w + ["set-furl", furl], 1),
        (worker_main, w + ["create-worker", str(tmp_path / "wd"), "--furl-file", furl], 1),
        (worker_main, w + ["create-worker", str(tmp_path / "wd"), furl], 64),
    ]
    for main, argv, code in cases:
        got, err = _main_in_process(main, argv, monkeypatch, capsys)
        assert secret not in err, (argv[1:], err)
        assert got == code, (argv[1:], got, err)
        assert "/..." in err, (argv[1:], err)  # it does say what was typed, short
    assert not (tmp_path / "wd").exists()


def test_the_master_refuses_a_name_that_is_none_before_logging_it() -> None:
    """A FURL sent as a worker's name to the admin capability (an older or a
    hand-made client): refused, and neither the answer nor the log holds it."""
    from twisted.logger import globalLogPublisher

    from buildbot_furl.errors import UnknownWorker
    from buildbot_furl.master.standalone import Standalone
    from buildbot_furl.protocol.messages import RunRequest

    class Registry:  # the host's queries (master/consumer.py's Workers)
        def knows(self, name: str) -> bool:
            raise AssertionError("a name that is none reached the registry")

        def session_of(self, name: str) -> Any:
            raise AssertionError("a name that is none reached the registry")

        def connection_of(self, session: Any) -> Any:
            raise AssertionError("a name that is none reached the registry")

        def drain(self, *args: Any) -> int:
            raise AssertionError("a name that is none reached the registry")

    furl = "pb://" + "b" * 32 + "@tcp:127.0.0.1:9/" + "s3cr3t" * 6
    seen: list[str] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        st = Standalone(Registry())  # type: ignore[arg-type]
        with pytest.raises(UnknownWorker) as drained:
            st.drain(furl)
        with pytest.raises(UnknownWorker) as ran:
            # refused before its first wait: one step of the coroutine runs it
            st.run(furl, RunRequest(argv=["true"], run_id="r1"), None).send(None)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    for e in (drained.value, ran.value):
        assert "s3cr3t" not in str(e) and "'pb:/...'" in str(e), str(e)
    assert not any("s3cr3t" in repr(event) for event in seen), seen
