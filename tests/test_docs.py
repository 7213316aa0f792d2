"""The docs name commands and options that exist, and say one thing about reloads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from buildbot_furl.cli.master import cli as master_cli
from buildbot_furl.cli.worker import cli as worker_cli

ROOT = Path(__file__).resolve().parent.parent
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
