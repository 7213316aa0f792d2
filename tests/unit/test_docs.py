"""The docs name commands and options that exist, and say one thing about reloads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest

from buildbot_furl.cli.master import cli as master_cli
from buildbot_furl.cli.worker import cli as worker_cli
from buildbot_furl.testing.procs import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
               *(ROOT / "examples").rglob("*.cfg"), *(ROOT / "examples").rglob("*.sh"),
               *(ROOT / "examples" / "systemd").glob("*.service")])
GROUPS = {"furl-master": master_cli, "furl-worker": worker_cli}


def _invocations() -> list[tuple[str, str, list[str]]]:
    """(file, program, words after it) for every furl-master/furl-worker call shown."""
    found = []
    for path in DOCS:
        for line in path.read_text().splitlines():
            for m in re.finditer(r"(?:^|[\s`($]|bin/)(furl-master|furl-worker)\s+([^`|;&)#]*)",
                                 line):
                if re.search(r"(-[ogu]|User=|Group=)\s*$", line[:m.start(1)]):
                    continue  # a user or group named furl-worker, not the command
                try:
                    words = shlex.split(m.group(2), posix=True)
                except ValueError:
                    words = m.group(2).split()
                found.append((path.name, m.group(1), words))
    return found


def _options(cmd: click.Command) -> set[str]:
    names: set[str] = {"--help", "-h"}
    for p in cmd.params:
        if isinstance(p, click.Option):
            names.update(p.opts)
            names.update(p.secondary_opts)
    return names


def test_every_documented_command_and_option_exists() -> None:
    seen = 0
    for where, prog, words in _invocations():
        group = GROUPS[prog]
        top = _options(group) | {"--version"}
        i = 0
        while i < len(words) and words[i].startswith("-"):  # group options, e.g. -d DIR
            assert words[i] in top, f"{where}: {prog} has no option {words[i]}"
            i += 2 if words[i] in ("-d", "--basedir") else 1
        if i >= len(words) or not re.fullmatch(r"[a-z][a-z-]+", words[i]):
            continue  # prose ("furl-master is ...") or a placeholder
        sub = words[i]
        if sub not in group.commands:  # type: ignore[attr-defined]
            if sub in ("is", "and", "or", "to", "with", "on", "as", "the", "a", "in", "for",
                       "from", "command", "commands", "daemon", "per", "user", *GROUPS):
                continue
            pytest.fail(f"{where}: '{prog} {sub}' is not a command")
        cmd = group.commands[sub]  # type: ignore[attr-defined]
        allowed = _options(cmd) | top
        for w in words[i + 1:]:
            if w == "--":
                break
            if w.startswith("--") or re.fullmatch(r"-[a-zA-Z]", w):
                assert w.split("=")[0] in allowed, f"{where}: '{prog} {sub}' has no {w}"
        seen += 1
    assert seen > 40  # the docs do show the commands


@pytest.mark.parametrize("path", DOCS + [ROOT / "buildbot_furl" / "furlsfile.py",
                                         ROOT / "buildbot_furl" / "cli" / "master.py"],
                         ids=lambda p: p.name)
def test_one_reload_delay(path: Path) -> None:
    """The file is checked every reload_interval (1 s): 'within about a second'."""
    text = " ".join(path.read_text().split())
    for stale in ("within 2 s", "within 2 seconds", "within a second"):
        assert stale not in text, f"{path.name} still says '{stale}'"


def test_the_exit_code_table_is_the_code() -> None:
    """admin.md's table names every exit code, and 0, 1 and 64 as exits.py does."""
    from buildbot_furl.cli.exits import MEANING, Exit

    rows = dict(re.findall(r"^\| ([0-9, +N]+) \| (.+?) \|$",
                           (ROOT / "docs" / "admin.md").read_text(), re.M))
    listed = {c.strip() for key in rows for c in key.split(",")}
    for code in Exit:
        assert str(int(code)) in listed, f"admin.md has no row for exit {int(code)}"
    for code in (Exit.OK, Exit.ERROR, Exit.USAGE):
        assert rows[str(int(code))] == " ".join(MEANING[code].split()), code


SCRIPTS = sorted([*(ROOT / "scripts").glob("*.sh"), *(ROOT / "examples").rglob("*.sh")])


@pytest.mark.parametrize("path", SCRIPTS + DOCS, ids=lambda p: p.name)
def test_no_furl_on_a_command_line(path: Path) -> None:
    """A FURL is a secret, and argv is public ('ps'): scripts and docs hand it
    over in a 0600 file (-o, --furl-file) as the README advises."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        assert not re.search(r"--furl[= ]+[\"'$]*(pb:|\$|\")", line), f"{path.name}:{n}: {line}"


def test_the_policy_refusal_quoted_in_security_md_is_the_real_one(tmp_path: Path) -> None:
    from buildbot_furl.errors import PolicyRefused
    from buildbot_furl.worker.policy import parse_policy

    policy = parse_policy("[commands]\nallow = make, git\n", str(tmp_path))
    with pytest.raises(PolicyRefused) as e:
        policy.check("shell", {"command": ["curl", "-O", "x"], "workdir": "."}, 0)
    # what furl-master run prints (master/standalone.py words the refusal)
    line = f"furl-master: error: worker 'w1' refused: {e.value}"
    text = " ".join((ROOT / "docs" / "security.md").read_text().split())
    assert f"`{line}`" in text


def test_create_master_prints_what_buildbot_md_says(tmp_path: Path, cli_here: Any) -> None:
    """buildbot.md: create-master in a Buildbot directory prints the
    load_workers form of the master.cfg lines; that form is shown there."""
    d = tmp_path / "bb"
    d.mkdir()
    (d / "master.cfg").write_text("# buildbot\n")
    p = cli_here("furl-master", "create-master", "-d", str(d), "--location", "tcp:127.0.0.1:9",
                 check=True)
    printed = [line.strip() for line in p.stderr.splitlines() if line.startswith("    ")]
    assert any("load_workers(" in line for line in printed)
    doc = (ROOT / "docs" / "buildbot.md").read_text()
    assert "in their `load_workers` form" in doc
    for line in printed:
        assert line in doc, f"buildbot.md does not show {line!r}"


def test_skip_reasons_show_in_the_default_summary() -> None:
    addopts = re.search(r"^addopts\s*=(.*)$", (ROOT / "pytest.ini").read_text(), re.M)
    assert addopts and re.search(r"(^|\s)-r\S*s", addopts.group(1))
