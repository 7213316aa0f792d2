"""The command lines that start no daemon, run in this process (click's
CliRunner through the ``cli_here`` fixture: the console scripts' own
``run_main``, so exit codes and one-line errors are what a shell sees).
A test that needs a process boundary (a daemon, a signal, a terminal)
runs the real thing: tests/system/test_cli_*.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

CliHere = Callable[..., subprocess.CompletedProcess[str]]


# -- from test_cli_daily: exit codes, help, hints ---------------------------------------

def test_exit_codes_usage_is_64_and_help_lists_codes(tmp_path: Path,
                                                     cli_here: CliHere) -> None:
    for prog, args in (("furl-master", ["bogus"]), ("furl-master", ["run"]),
                       ("furl-worker", ["start", "--no-such-option"])):
        p = cli_here(prog, *args)
        assert p.returncode == 64, (prog, args, p.stderr)
        assert "Traceback" not in p.stderr
    h = cli_here("furl-master", "run", "--help").stdout
    for code in ("127", "126", "130", "137", "128+N", " 2 ", " 64 "):
        assert code in h, code
    h = cli_here("furl-worker", "start", "--help").stdout
    assert "master.furl" in h and "Exit codes:" in h
    h = cli_here("furl-worker", "status", "--help").stdout
    assert " 3 " in h and " 4 " in h


def test_no_furl_hint_points_to_files_not_the_command_line(tmp_path: Path,
                                                           cli_here: CliHere) -> None:
    wd = tmp_path / "w"
    wd.mkdir()
    p = cli_here("furl-worker", "start", str(wd))
    assert p.returncode == 1
    assert "--furl-file" in p.stderr and "--furl " not in p.stderr and "--furl," not in p.stderr


def test_create_master_in_a_buildbot_directory_says_what_to_add(tmp_path: Path,
                                                                cli_here: CliHere) -> None:
    d = tmp_path / "bb"
    d.mkdir()
    (d / "buildbot.tac").write_text("# buildbot\n")
    p = cli_here("furl-master", "create-master", "-d", str(d), "--location", "tcp:127.0.0.1:9")
    assert p.returncode == 0
    assert "load_workers" in p.stderr and "furl_protocol" in p.stderr
    assert "workernames" in p.stderr and "buildbot reconfig" in p.stderr
    assert "furl-master start" not in p.stderr


def test_shell_completion_is_provided(cli_here: CliHere) -> None:
    p = cli_here("furl-master", env={"_FURL_MASTER_COMPLETE": "bash_source"})
    assert p.returncode == 0 and "complete" in p.stdout and "furl-master" in p.stdout


# -- from test_cli_errors -------------------------------------------------------------

def test_hints_quote_paths_for_the_shell(tmp_path: Path, cli_here: CliHere) -> None:
    d = tmp_path / "my master"
    p = cli_here("furl-master", "create-master", "-d", str(d), "--location", "tcp:127.0.0.1:9")
    assert f"furl-master start -d '{d}'" in p.stderr, p.stderr
    os.chmod(d / "workers.furls", 0o644)
    p = cli_here("furl-master", "status", "-d", str(d))
    assert f"chmod 600 '{d}/workers.furls'" in p.stderr, p.stderr
    wd = tmp_path / "my worker"
    p = cli_here("furl-worker", "settings", str(wd))
    assert f"furl-worker create-worker '{wd}' --furl-file FILE" in p.stderr, p.stderr
