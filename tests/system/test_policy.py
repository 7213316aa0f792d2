"""The worker's policy file: what it allows its master, whatever the master asks.

Unit tests for the parser and each rule, then every rule against real
``furl-master``/``furl-worker`` daemons: one worker whose policy file each
test rewrites (so reloading on change is exercised by every test too).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_furl.testing.farm import Farm, cli, farm_in
from buildbot_furl.testing.procs import Procs

# the policy refusals these tests stage
pytestmark = pytest.mark.expect_log(r"refused '[\w.]+' by the policy",
                                    r"refused by the worker's policy",
                                    r"policy file refused, every request is refused")

from buildbot_furl.errors import ConfigError, PolicyRefused
from buildbot_furl.privatefiles import write_private
from buildbot_furl.worker.policy import PolicyFile, parse_policy

ECHO = shutil.which("echo")
TRUE = shutil.which("true")


def policy(tmp: Path, text: str) -> Any:
    return parse_policy(text, str(tmp))


# -- parsing ------------------------------------------------------------------------------


def test_an_empty_policy_allows_everything_in_the_worker_directory(tmp_path: Path) -> None:
    p = policy(tmp_path, "")
    assert p.programs is None and p.environment is None and p.max_commands is None
    assert p.roots == (os.path.realpath(tmp_path),)


@pytest.mark.parametrize(("text", "message"), [
    ("allow = make\n", "line 1: a setting before any [section]"),
    ("[command]\nallow = x\n", "unknown section [command]"),
    ("[commands]\nprograms = x\n", "[commands] programs: unknown setting"),
    ("[commands]\nallow = any, make\n", "'any' and 'none' stand alone"),
    ("[commands]\nallow = bin/make\n", "give a program's name or its absolute path"),
    ("[commands]\nallow =\n", "empty (write 'none' for nothing)"),
    ("[paths]\nallow = none\n", "nowhere to build"),
    ("[limits]\nmax_upload = lots\n", "'lots' is not a size"),
    ("[limits]\nmax_commands = 0\n", "a whole number, 1 or more"),
    ("[environment]\nallow = A-B\n", "'A-B' is not a variable name"),
    ("[commands]\nallow = a\nallow = b\n", "already exists"),
    ("[commands]\nallow a\n", "line 2: cannot read"),
])
def test_a_bad_policy_says_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        policy(tmp_path, text)
    assert message in str(e.value)


def test_values_lists_sizes_and_comments(tmp_path: Path) -> None:
    p = policy(tmp_path, "[commands]\nallow = make,\n  git  # the usual\n"
                         "[limits]\nmax_upload = 10M\nmax_download = 512k\nmax_commands = 3\n"
                         "[paths]\nallow = ., sub, /srv\n[environment]\nallow = none\n")
    assert p.programs == ("make", "git")
    assert (p.limits.upload, p.limits.download, p.max_commands) == (10 << 20, 512 << 10, 3)
    base = os.path.realpath(tmp_path)
    assert p.roots == (base, os.path.join(base, "sub"), "/srv")
    assert p.environment == ()


# -- the rules ------------------------------------------------------------------------------


def shell(command: Any, workdir: str = ".", env: Any = None, **more: Any) -> dict[str, Any]:
    return {"command": command, "workdir": workdir, "env": env, **more}


def test_programs_by_name_or_path_and_the_program_that_runs(tmp_path: Path) -> None:
    p = policy(tmp_path, f"[commands]\nallow = echo, {TRUE}\n")
    args = shell(["echo", "hi"])
    p.check("shell", args, 0)
    assert args["command"] == [ECHO, "hi"]  # what runs is what was checked
    p.check("shell", shell([TRUE]), 0)
    for refused in (["cat", "x"], "echo hi", [str(tmp_path / "echo")], [], ["./echo"]):
        (tmp_path / "echo").write_text("#!/bin/sh\n")
        (tmp_path / "echo").chmod(0o755)
        with pytest.raises(PolicyRefused):
            p.check("shell", shell(refused), 0)


def test_a_string_command_needs_the_shell(tmp_path: Path) -> None:
    p = policy(tmp_path, "[commands]\nallow = sh\n")
    p.check("shell", shell("echo hi | tr a-z A-Z"), 0)
    none = policy(tmp_path, "[commands]\nallow = none\n")
    with pytest.raises(PolicyRefused, match="no programs"):
        none.check("shell", shell(["echo"]), 0)
    none.check("downloadFile", {"path": str(tmp_path / "x")}, 0)  # file transfers still go


def test_obfuscated_program_names_are_checked_by_their_real_value(tmp_path: Path) -> None:
    p = policy(tmp_path, "[commands]\nallow = echo\n")
    p.check("shell", shell([["obfuscated", "echo", "XXX"], "hi"]), 0)
    with pytest.raises(PolicyRefused):
        p.check("shell", shell([["obfuscated", "cat", "echo"], "hi"]), 0)


def test_paths_symlinks_and_the_workers_own_files(tmp_path: Path) -> None:
    base = tmp_path / "w"
    (base / "build").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (base / "escape").symlink_to(tmp_path / "outside")
    p = policy(base, "")
    p.check("shell", shell(["x"], workdir=str(base / "build")), 0)
    p.check("shell", shell(["x"], workdir=str(base)), 0)  # standalone runs there
    p.check("downloadFile", {"path": str(base / "build" / "in.bin")}, 0)
    p.check("mkdir", {"paths": [str(base / "build" / "a"), str(base / "b")]}, 0)
    refusals = [
        ("shell", shell(["x"], workdir=str(tmp_path / "outside"))),
        ("shell", shell(["x"], workdir="escape")),
        ("shell", shell(["x"], workdir="build", logfiles={"l": "../../outside/log"})),
        ("uploadFile", {"path": str(base / "escape" / "secret")}),
        ("uploadDirectory", {"path": "/etc"}),
        ("downloadFile", {"path": str(base / "furl-worker.policy")}),
        ("downloadFile", {"path": str(base / "build" / ".." / "master.furl")}),
        ("rmfile", {"path": str(base / "worker.log.1")}),
        ("rmdir", {"paths": [str(base / "build"), str(base)]}),
        ("rmdir", {"paths": str(tmp_path)}),
        ("cpdir", {"from_path": "/etc", "to_path": str(base / "build")}),
        ("cpdir", {"from_path": str(base / "build"), "to_path": str(base)}),
        ("glob", {"path": str(base / "*" / ".." / ".." / "outside" / "*")}),
        ("glob", {"path": "/etc/*"}),
        ("stat", {"path": "/etc/passwd"}),
        ("listdir", {"path": str(base / "escape")}),
        ("furl.get", {"path": "escape/x"}),
        ("furl.put", {"path": "furl-worker.policy"}),
        ("somethingNew", {"path": str(base)}),
    ]
    for command, args in refusals:
        with pytest.raises(PolicyRefused):
            p.check(command, args, 0)
            pytest.fail(f"{command} {args} was allowed")


def test_more_roots_limits_and_environment(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    p = policy(tmp_path / "w", f"[paths]\nallow = ., {shared}\n[limits]\nmax_upload = 1k\n"
                               "max_commands = 2\n[environment]\nallow = LANG, LC_*\n")
    p.check("stat", {"path": str(shared / "x")}, 0)
    p.check("shell", shell(["x"], env={"LANG": "C", "LC_ALL": "C"}), 1)
    with pytest.raises(PolicyRefused, match="set PATH, SECRET"):
        p.check("shell", shell(["x"], env={"LANG": "C", "SECRET": "1", "PATH": "/x"}), 0)
    with pytest.raises(PolicyRefused, match="already runs 2"):
        p.check("stat", {"path": str(shared)}, 2)
    big = tmp_path / "w" / "big"
    big.parent.mkdir()
    big.write_bytes(b"x" * 1025)
    with pytest.raises(PolicyRefused, match="more than the worker's policy lets it upload"):
        p.check("uploadFile", {"path": str(big)}, 0)


def test_code_loading_variables_need_naming_while_commands_are_restricted(
        tmp_path: Path) -> None:
    """LD_PRELOAD=./evil.so with an allowed ``true`` would run anything."""
    restricted = policy(tmp_path, "[commands]\nallow = true\n")  # [environment]: any
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "GCONV_PATH", "BASH_ENV", "ENV",
                 "PYTHONPATH", "PERL5OPT", "RUBYOPT", "NODE_OPTIONS", "GIT_SSH_COMMAND"):
        with pytest.raises(PolicyRefused, match=f"set {name}"):
            restricted.check("shell", shell(["true"], env={name: "./evil.so"}), 0)
    restricted.check("shell", shell(["true"], env={"CC": "gcc", "LANG": "C"}), 0)
    star = policy(tmp_path, "[commands]\nallow = true\n[environment]\nallow = *\n")
    with pytest.raises(PolicyRefused, match="set LD_PRELOAD"):
        star.check("shell", shell(["true"], env={"LD_PRELOAD": "x"}), 0)
    named = policy(tmp_path, "[commands]\nallow = true\n[environment]\nallow = LD_*, CC\n")
    named.check("shell", shell(["true"], env={"LD_LIBRARY_PATH": "/opt/lib"}), 0)
    # [commands] any: the master may run anything anyway, so nothing more is refused
    policy(tmp_path, "").check("shell", shell(["true"], env={"LD_PRELOAD": "x"}), 0)


def test_a_program_name_never_resolves_into_what_the_master_may_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "w"
    (base / "bin").mkdir(parents=True)
    planted = base / "bin" / "true"
    planted.write_text("#!/bin/sh\nid\n")
    planted.chmod(0o755)
    p = policy(base, "[commands]\nallow = true\n")
    # an empty PATH entry or "." means the worker's current directory
    monkeypatch.chdir(base / "bin")
    monkeypatch.setenv("PATH", f":.:{os.path.dirname(TRUE)}")
    args = shell(["true"])
    p.check("shell", args, 0)
    assert args["command"] == [TRUE]
    # an absolute PATH entry inside the writable paths
    monkeypatch.setenv("PATH", f"{base / 'bin'}:{os.path.dirname(TRUE)}")
    with pytest.raises(PolicyRefused, match="inside the paths"):
        p.check("shell", shell(["true"]), 0)


def test_glob_with_a_wildcard_in_the_first_component(tmp_path: Path) -> None:
    p = policy(tmp_path / "w", "")
    for pattern in ("/*", "/[e]tc/pass*", "/**", "/?tc/*"):
        with pytest.raises(PolicyRefused, match="outside the paths"):
            p.check("glob", {"path": pattern}, 0)
    p.check("glob", {"path": "*.txt"}, 0)
    p.check("glob", {"path": str(tmp_path / "w" / "*")}, 0)


def test_builder_directories_are_checked(tmp_path: Path) -> None:
    base = tmp_path / "w"
    base.mkdir()
    write_private(str(base / "furl-worker.policy"), "[commands]\nallow = any\n")
    pf = PolicyFile(str(base / "furl-worker.policy"), str(base))
    pf.builder_dirs(["b1", str(base / "b2")])
    pf.builder_dirs(["."])  # the standalone master's builder
    for bad in (str(tmp_path / "elsewhere"), "../x", "/"):
        with pytest.raises(PolicyRefused):
            pf.builder_dirs([bad])


def test_the_worker_discloses_only_what_its_policy_says(tmp_path: Path) -> None:
    """getWorkerInfo's environ: all without a policy (Buildbot's behaviour), as
    [environment] allow by default, as disclose when given, none when broken."""
    from buildbot_furl.protocol import unwrap
    from buildbot_furl.worker.bot import FurlBot

    env = {"PATH": "/bin", "LANG": "C", "AWS_SECRET_ACCESS_KEY": "k", "LC_ALL": "C"}
    assert policy(tmp_path, "").disclose(env) == env
    assert policy(tmp_path, "[environment]\nallow = LANG, LC_*\n").disclose(env) == {
        "LANG": "C", "LC_ALL": "C"}
    assert policy(tmp_path, "[environment]\nallow = any\ndisclose = PATH\n").disclose(
        env) == {"PATH": "/bin"}
    assert policy(tmp_path, "[environment]\ndisclose = none\n").disclose(env) == {}
    with pytest.raises(ConfigError, match="not a variable name"):
        policy(tmp_path, "[environment]\ndisclose = A-B\n")
    base = tmp_path / "w"
    base.mkdir()
    bot = FurlBot(str(base))
    assert "PATH" in unwrap_info(bot, unwrap)
    write_private(str(base / "furl-worker.policy"), "[environment]\ndisclose = LANG\n")
    assert set(unwrap_info(bot, unwrap)) <= {"LANG"}
    write_private(str(base / "furl-worker.policy"), "[environment]\nbogus = 1\n")
    assert unwrap_info(bot, unwrap) == {}


def unwrap_info(bot: Any, unwrap: Any) -> dict[str, Any]:
    out: list[Any] = []
    bot.remote_getWorkerInfo().addCallback(out.append)
    return unwrap(out[0])["environ"]


def test_the_file_is_read_again_fails_closed_and_outlives_removal(tmp_path: Path) -> None:
    path = tmp_path / "furl-worker.policy"
    holder = PolicyFile(str(path), str(tmp_path))
    holder.check("shell", shell(["anything"]), 0)  # no file: everything
    write_private(str(path), "[commands]\nallow = echo\n")
    holder.check("shell", shell(["echo"]), 0)
    with pytest.raises(PolicyRefused):
        holder.check("shell", shell(["cat"]), 0)
    write_private(str(path), "[commands\n")
    with pytest.raises(PolicyRefused, match="refuses every request"):
        holder.check("shell", shell(["echo"]), 0)
    assert "error" in (holder.summary() or {})
    write_private(str(path), "[commands]\nallow = cat\n")
    holder.check("shell", shell(["cat"]), 0)
    path.chmod(0o644)  # others may read it: not the admin's alone
    with pytest.raises(PolicyRefused, match="refuses every request"):
        holder.check("shell", shell(["cat"]), 0)
    assert "chmod 600" in holder.error
    path.chmod(0o600)
    holder.check("shell", shell(["cat"]), 0)
    path.unlink()  # the last policy stays
    with pytest.raises(PolicyRefused):
        holder.check("shell", shell(["echo"]), 0)
    holder.check("shell", shell(["cat"]), 0)


# -- against real daemons ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pfarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """A master and worker 'p', whose policy file each test writes."""
    procs = Procs()
    try:
        with farm_in(tmp_path_factory.mktemp("policy"), procs) as f:
            f.create_worker("p")
            f.start_master()
            f.start_worker("p", f.furls["p"])
            yield f
    finally:
        procs.cleanup()


def set_policy(farm: Farm, text: str) -> Path:
    path = farm.wdir("p") / "furl-worker.policy"
    write_private(str(path), text)
    return path


def no_policy(farm: Farm) -> None:
    # a removed policy stays in force: allow everything explicitly instead
    set_policy(farm, "[paths]\nallow = any\n")


def refused(p: Any) -> str:
    err = p.stderr.decode() if isinstance(p.stderr, bytes) else p.stderr
    assert p.returncode == 2, (p.returncode, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_run_allowed_and_refused_programs(pfarm: Farm) -> None:
    set_policy(pfarm, "[commands]\nallow = echo\n")
    ok = pfarm.run("p", "echo", "allowed")
    assert ok.returncode == 0 and ok.stdout == b"allowed\n"
    err = refused(pfarm.run("p", "true"))
    assert "refused" in err and "program 'true' is not one the worker's policy allows" in err
    log = (pfarm.wdir("p") / "worker.log").read_text()
    assert "refused 'shell' by the policy: program 'true'" in log


def test_file_transfers_only(pfarm: Farm, tmp_path: Path) -> None:
    set_policy(pfarm, "[commands]\nallow = none\n")
    assert "no programs" in refused(pfarm.run("p", "echo", "x"))
    src = tmp_path / "in.txt"
    src.write_text("data\n")
    assert pfarm.master("put", "p", str(src), "copied.txt").returncode == 0
    assert pfarm.master("get", "p", "copied.txt", str(tmp_path / "back.txt")).returncode == 0
    assert (tmp_path / "back.txt").read_text() == "data\n"


def test_paths_outside_and_the_policy_itself(pfarm: Farm, tmp_path: Path) -> None:
    set_policy(pfarm, "[limits]\nmax_commands = 4\n")  # paths: the worker's directory
    (pfarm.wdir("p") / "out").unlink(missing_ok=True)
    (pfarm.wdir("p") / "out").symlink_to(tmp_path)
    for workdir in (str(tmp_path), "out"):
        err = refused(pfarm.run("p", "pwd", options=("--workdir", workdir)))
        assert "outside the paths the worker's policy allows" in err
    src = tmp_path / "evil"
    src.write_text("[commands]\nallow = any\n")
    p = pfarm.master("put", "p", str(src), "furl-worker.policy")
    assert p.returncode == 2 and "own files" in p.stderr
    assert "max_commands = 4" in (pfarm.wdir("p") / "furl-worker.policy").read_text()


def test_transfer_sizes(pfarm: Farm, tmp_path: Path) -> None:
    set_policy(pfarm, "[limits]\nmax_upload = 1M\nmax_download = 1M\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    p = pfarm.master("put", "p", str(big), "big.bin")
    assert p.returncode == 2, p.stderr
    assert "more than the 1M it lets the master send to the worker" in p.stderr
    assert not (pfarm.wdir("p") / "big.bin").exists()
    assert not [f for f in os.listdir(pfarm.wdir("p")) if "furl-part" in f]
    (pfarm.wdir("p") / "big-here.bin").write_bytes(os.urandom(3 << 20))
    p = pfarm.master("get", "p", "big-here.bin", str(tmp_path / "got.bin"))
    assert p.returncode == 2 and "(max_upload)" in p.stderr, p.stderr
    assert not (tmp_path / "got.bin").exists()
    tree_dir = pfarm.wdir("p") / "big-tree"
    tree_dir.mkdir()
    for i in range(3):
        (tree_dir / f"f{i}").write_bytes(os.urandom(1 << 20))
    p = pfarm.master("get", "p", "big-tree", str(tmp_path / "got-tree"))
    assert p.returncode == 2 and "(max_upload)" in p.stderr, p.stderr
    assert not (tmp_path / "got-tree").exists()
    small = tmp_path / "small.bin"
    small.write_bytes(b"s" * 1000)
    assert pfarm.master("put", "p", str(small), "small.bin").returncode == 0


def test_commands_at_once(pfarm: Farm) -> None:
    set_policy(pfarm, "[limits]\nmax_commands = 1\n")
    slow = pfarm.run_popen("p", "sleep", "3")
    assert pfarm.wait_for(lambda: pfarm.procs.find("sleep", "3"), 30)  # it runs
    assert "the most its policy allows at once" in refused(pfarm.run("p", "true"))
    assert slow.wait(30) == 0
    assert pfarm.run("p", "true").returncode == 0


def test_environment(pfarm: Farm) -> None:
    set_policy(pfarm, "[environment]\nallow = LANG, LC_*\n")
    ok = pfarm.run("p", "sh", "-c", "echo $LC_ALL", options=("--env", "LC_ALL=C"))
    assert ok.returncode == 0 and ok.stdout == b"C\n"
    err = refused(pfarm.run("p", "true", options=("--env", "LD_PRELOAD=/tmp/x.so")))
    assert "does not let the master set LD_PRELOAD" in err and "/tmp/x.so" not in err


def test_a_broken_policy_refuses_everything_until_fixed(pfarm: Farm) -> None:
    path = set_policy(pfarm, "[commands]\nallow = echo\n")
    path.chmod(0o644)
    err = refused(pfarm.run("p", "echo", "x"))
    assert "refuses every request until its admin fixes it" in err
    st = cli("furl-worker", "status", str(pfarm.wdir("p")), "--json")
    assert "chmod 600" in json.loads(st.stdout)["policy"]["error"]
    show = cli("furl-worker", "policy", str(pfarm.wdir("p")))
    assert show.returncode == 1 and "chmod 600" in show.stderr
    path.chmod(0o600)
    assert pfarm.run("p", "echo", "x").returncode == 0
    set_policy(pfarm, "[commands]\nallow = echo\n[limits]\nmax_upload = many\n")
    assert "refuses every request" in refused(pfarm.run("p", "echo", "x"))
    assert "'many' is not a size" in (pfarm.wdir("p") / "worker.log").read_text()
    no_policy(pfarm)
    assert pfarm.run("p", "true").returncode == 0


def test_create_worker_installs_a_policy_and_status_shows_it(tmp_path: Path) -> None:
    draft = tmp_path / "draft.policy"
    draft.write_text("[commands]\nallow = make, git\n[limits]\nmax_upload = 100M\n")
    draft.chmod(0o644)
    furl_file = tmp_path / "furl"
    write_private(str(furl_file), "pb://" + "a" * 32 + "@tcp:127.0.0.1:1/" + "b" * 32 + "\n")
    wdir = tmp_path / "w"
    p = cli("furl-worker", "create-worker", str(wdir), "--furl-file", str(furl_file),
            "--policy", str(draft))
    assert p.returncode == 0, p.stderr
    installed = wdir / "furl-worker.policy"
    assert installed.stat().st_mode & 0o777 == 0o600
    show = cli("furl-worker", "policy", str(wdir), "--json")
    assert json.loads(show.stdout)["programs"] == ["make", "git"]
    text = cli("furl-worker", "policy", str(wdir)).stdout
    assert "max upload:    100M" in text
    st = cli("furl-worker", "status", str(wdir), "--json")
    assert json.loads(st.stdout)["policy"]["max_upload"] == 100 << 20
    bad = tmp_path / "bad.policy"
    bad.write_text("[limits]\nmax_commands = lots\n")
    p = cli("furl-worker", "create-worker", str(tmp_path / "w2"), "--furl-file", str(furl_file),
            "--policy", str(bad))
    assert p.returncode == 1 and "max_commands" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "w2").exists()  # nothing made for a bad policy


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("the worker's policy tests use Linux paths")
