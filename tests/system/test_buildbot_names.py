"""Worker names in a Buildbot master's directory: what Buildbot refuses is
refused when the worker is created, and never reaches Buildbot's config."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from buildbot.config.errors import capture_config_errors
from buildbot.config.master import MasterConfig
from buildbot.interfaces import IWorker
from twisted.logger import capturedLogs
from zope.interface import implementer

from buildbot_furl import furlsfile
from buildbot_furl.buildbot import load_workers
from buildbot_furl.errors import ConfigError
from buildbot_furl.privatefiles import write_private
from buildbot_furl.testing.farm import cli

TUBID = "a" * 32


@implementer(IWorker)
class _Named:
    def __init__(self, name: str) -> None:
        self.workername = name


def buildbot_takes(name: str) -> bool:
    """Buildbot's own check of c['workers'] (what a reconfig runs)."""
    with capture_config_errors() as errors:
        ok = MasterConfig._check_workers([_Named(name)], "c['workers']")
    return ok and not errors.errors


def _names() -> list[str]:
    fixed = ["w1", "ok.name", "1abc", "a1", "_x", "-x", "x-", "debug", "change", "status",
             "Debug", "a" * 50, "a" * 51, "a" * 64, "ok_name", ".hidden", "9", "A-b_c", "_"]
    rnd = random.Random(15)
    alphabet = "abcXYZ019._-"
    fixed += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 64)))
              for _ in range(500)]
    return fixed


def test_our_rule_is_buildbots() -> None:
    for name in _names():
        furlsfile.check_name(name)  # every one is a valid name for the standalone master
        ours = furlsfile.buildbot_name_problem(name) is None
        assert ours == buildbot_takes(name), name
        if not ours:
            with pytest.raises(ConfigError, match="for a Buildbot master"):
                furlsfile.check_buildbot_name(name)


def test_load_workers_leaves_out_what_buildbot_refuses(tmp_path: Path) -> None:
    p = tmp_path / "workers.furls"
    lines = [f"{n} pb://{TUBID}@tcp:h:1/{c * 20}\n"
             for n, c in (("w1", "s"), ("ok.name", "t"), ("debug", "u"), ("w2", "v"))]
    write_private(str(p), "".join(lines))
    with capturedLogs() as events:
        with capture_config_errors() as errors:
            ws = load_workers(str(p))
    assert not errors.errors
    assert [w.name for w in ws] == ["w1", "w2"]
    assert all(buildbot_takes(w.workername) for w in ws)
    said = [e["log_format"].format(**e) for e in events if e.get("log_level").name == "error"]
    assert len(said) == 2, said
    assert "line 2: worker 'ok.name' left out" in said[0] and "'.'" in said[0]
    assert "line 3: worker 'debug' left out: Buildbot reserves" in said[1]


def test_create_worker_refuses_in_a_buildbot_directory(tmp_path: Path) -> None:
    bb = tmp_path / "bb"
    bb.mkdir()
    (bb / "master.cfg").write_text("# a Buildbot master's\n")
    alone = tmp_path / "alone"
    for d in (bb, alone):
        cli("furl-master", "create-master", "-d", str(d), "--location", "tcp:127.0.0.1:1",
            check=True)
    before = (bb / "workers.furls").read_text()
    p = cli("furl-master", "create-worker", "-d", str(bb), "ok.name")
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "furl-master: error: invalid worker name 'ok.name' for a Buildbot master: Buildbot "
        "takes only A-Z a-z 0-9 _ - (no '.'), and not a digit first"], p.stderr
    assert (bb / "workers.furls").read_text() == before
    cli("furl-master", "create-worker", "-d", str(bb), "ok_name", check=True)
    # a standalone master takes it, as before
    cli("furl-master", "create-worker", "-d", str(alone), "ok.name", check=True)
