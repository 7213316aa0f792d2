"""What each ``furl-master`` command does, given the parsed command line."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any

import click

from buildbot_furl import daemon, furlsfile
from buildbot_furl.cli.common import Failed, note
from buildbot_furl.cli.exits import Exit
from buildbot_furl.client.connect import (
    MasterNotRunning,
    master_pid,
    require_standalone,
    run_with_admin,
)
from buildbot_furl.errors import ConfigError
from buildbot_furl.furl import Furl, new_swissnum
from buildbot_furl.master import config as mconfig
from buildbot_furl.privatefiles import reserve_private
from buildbot_furl.protocol import call
from buildbot_furl.tubs import make_tub, tubid_of


@dataclasses.dataclass
class MasterCli:
    """What the command line said, for every furl-master command."""

    basedir: str | None = None
    _config: mconfig.MasterConfig | None = None

    @property
    def dir(self) -> str:
        return self.basedir or "."

    def config(self) -> mconfig.MasterConfig:
        if self._config is None:
            self._config = mconfig.load(self.dir)
        return self._config

    def tubid(self) -> str:
        return tubid_of(self.config().paths.tub_pem)


def _not_buildbot(cfg: mconfig.MasterConfig, what: str) -> None:
    if mconfig.is_buildbot_dir(cfg.paths):
        raise Failed(f"{cfg.paths.basedir} is a Buildbot master's directory: its FURL "
                     f"workers are served by Buildbot itself; use 'buildbot {what}' there")


@contextlib.contextmanager
def _reserved(output: str | None) -> Any:
    """A new 0600 file for a FURL (None: stdout); removed if what follows fails."""
    if output is None:
        yield None
        return
    fd = reserve_private(output)
    try:
        yield fd
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(output)
        raise
    os.close(fd)


def _emit(furl: Furl, fd: int | None, output: str | None) -> None:
    if fd is None:
        click.echo(str(furl))
    else:
        os.write(fd, f"{furl}\n".encode())
        os.fsync(fd)
        note(f"the FURL is in {output} (mode 0600)")


# -- creating -------------------------------------------------------------------


def create_master(cfg: MasterCli, location: str, port: str | None,
                  session_grace: float | None = None) -> None:
    conf = mconfig.create(cfg.dir, location, port, session_grace)
    tubid = make_tub(conf.paths.tub_pem).getTubID()
    d = conf.paths.basedir
    note(f"created master in {d} (tubid {tubid}, listening on {conf.port})")
    if mconfig.is_buildbot_dir(conf.paths):
        note("this is a Buildbot master's directory: Buildbot serves the FURL workers. "
             "In master.cfg:\n"
             "    import os\n"
             "    from buildbot_furl.buildbot import furl_protocol, load_workers\n"
             "    furl_workers = load_workers(os.path.join(basedir, 'workers.furls'))\n"
             "    c['workers'] += furl_workers\n"
             "    c['protocols']['furl'] = furl_protocol(basedir)\n"
             "    # and name each worker in a builder: workernames=[w.name for w in "
             "furl_workers]\n"
             f"next: furl-master create-worker -d {d} NAME -o NAME.furl, then "
             f"buildbot reconfig {d}")
    else:
        note(f"next: furl-master create-worker -d {d} NAME -o NAME.furl, then "
             f"furl-master start -d {d}")


def create_worker(cfg: MasterCli, name: str, comment: str, output: str | None) -> None:
    conf = cfg.config()
    furlsfile.check_name(name)
    tubid = cfg.tubid()
    furl = Furl(tubid, conf.location, new_swissnum())
    with _reserved(output) as fd:
        with furlsfile.update(conf.paths.furls, tubid) as ff:
            ff.add(name, furl, comment)
        _emit(furl, fd, output)
    note(f"worker {name!r} added to {conf.paths.furls}; give that FURL to its admin "
         "(it is a secret: whoever holds it can attach as this worker)")


def revoke_worker(cfg: MasterCli, name: str) -> None:
    conf = cfg.config()
    with furlsfile.update(conf.paths.furls, cfg.tubid()) as ff:
        ff.remove(name)
    note(f"worker {name!r} revoked")


def rotate_worker(cfg: MasterCli, name: str, output: str | None) -> None:
    conf = cfg.config()
    tubid = cfg.tubid()
    furl = Furl(tubid, conf.location, new_swissnum())
    with _reserved(output) as fd:
        with furlsfile.update(conf.paths.furls, tubid) as ff:
            ff.replace_furl(name, furl)
        _emit(furl, fd, output)
    note(f"worker {name!r} has a new FURL; the old one no longer works. On the worker: "
         "furl-worker set-furl DIR --furl-file FILE")


# -- looking ----------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _problems(conf: mconfig.MasterConfig, running_problems: list[str]) -> list[str]:
    """What is wrong with the master's files: seen here, and as the running
    master sees them (e.g. an edit it refused), each once."""
    try:
        tubid: str | None = tubid_of(conf.paths.tub_pem)
    except ConfigError as e:
        tubid = None
        found = [str(e)]
    else:
        found = []
    found += mconfig.problems(conf.paths, tubid)
    for p in running_problems:
        if p not in found:
            found.append(p)
    return found


def _warn(problems: list[str], running: bool) -> None:
    for p in problems:
        still = " (the running master still uses the last good version)" if running and \
            "workers.furls" in p else ""
        note(f"warning: {p}{still}")


def list_workers(cfg: MasterCli, as_json: bool, show_furls: bool) -> None:
    conf = cfg.config()
    live: dict[str, dict[str, Any]] = {}
    running_problems: list[str] = []
    refusals: dict[str, Any] | None = None
    running = master_pid(conf.paths) is not None
    if running:
        try:
            rows, st = run_with_admin(conf.paths, _list_and_status)
            live = {r["name"]: r for r in rows}
            running_problems = list(st.get("problems") or [])
            refusals = st.get("refusals")
        except MasterNotRunning:
            running = False
    problems = _problems(conf, running_problems)
    try:
        entries = furlsfile.read(conf.paths.furls).entries
    except ConfigError:
        if not running:
            _warn(problems, running)
            raise
        # the running master keeps serving its last good list: show that one
        entries = [furlsfile.Entry(r["name"], Furl("", (), ""), r.get("comment", ""))
                   for r in live.values()]
        show_furls = False
    out = []
    for entry in entries:
        row: dict[str, Any] = {"name": entry.name, "comment": entry.comment}
        if running:
            r = live.get(entry.name, {})
            row.update(connected=bool(r.get("connected")), peer=r.get("peer"),
                       last_seen=r.get("last_seen"), connected_since=r.get("connected_since"),
                       host=r.get("host"), admin=r.get("admin"),
                       state=r.get("state") or "not connected",
                       draining=bool(r.get("draining")), grace_until=r.get("grace_until"))
        if show_furls:
            row["furl"] = str(entry.furl)
        out.append(row)
    if as_json:
        click.echo(json.dumps({"master_running": running, "workers": out,
                               "problems": problems, "refusals": refusals}, indent=2))
        return
    _warn(problems, running)
    if not out:
        note("no workers yet: add one with furl-master create-worker NAME -o NAME.furl")
        return
    for row in out:
        parts = [row["name"]]
        if running:
            if row["connected"]:
                parts.append(f"connected from {row['peer']} since {_when(row['connected_since'])}")
                if row.get("host"):
                    parts.append(f"({row['host']})")
                if row.get("draining"):
                    parts.append("draining: no new work; it stops once what runs has ended")
            elif row["state"] == "reconnecting":
                parts.append(f"reconnecting: link lost, its session and commands kept until "
                             f"{_when(row['grace_until'])}")
            else:
                parts.append(f"not connected (last seen {_when(row['last_seen'])})")
        if row["comment"]:
            parts.append(f"# {row['comment']}")
        if show_furls:
            parts.append(row["furl"])
        click.echo("  ".join(parts))
    if not running:
        note("(the master is not running: connection state unknown)")


async def _list_and_status(admin: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return await call(admin, "listWorkers"), await call(admin, "status")


def status(cfg: MasterCli, as_json: bool) -> None:
    conf = cfg.config()
    if master_pid(conf.paths) is None:
        problems = _problems(conf, [])
        if as_json:
            click.echo(json.dumps({"running": False, "problems": problems}))
        else:
            click.echo("not running")
            _warn(problems, False)
        sys.exit(Exit.NOT_RUNNING)
    st = run_with_admin(conf.paths, lambda ref: call(ref, "status"))
    problems = _problems(conf, list(st.get("problems") or []))
    if as_json:
        click.echo(json.dumps({"running": True, **st, "problems": problems}, indent=2))
        return
    up = time.time() - st["started"]
    kind = " as part of a Buildbot master" if st.get("kind") == "buildbot" else ""
    click.echo(f"running{kind} (pid {st['pid']}, up {up:.0f} s, version {st['version']}): "
               f"{st['connected']} of {st['workers']} worker(s) connected; "
               f"location {st['location']}")
    ref = st.get("refusals") or {}
    if ref.get("total"):
        cut = (f"; {ref['cut_unanswered']} cut unanswered past refusal_limit"
               if ref.get("cut_unanswered") else "")
        click.echo(f"refused {ref['total']} attach attempt(s) with an unknown or revoked FURL "
                   f"since it started ({ref.get('this_interval', 0)} in the current minute, "
                   f"from {ref.get('addresses', 0)} address(es){cut})")
    _warn(problems, True)


# -- running ----------------------------------------------------------------------


def start(cfg: MasterCli, nodaemon: bool, ready_fd: int | None) -> None:
    conf = cfg.config()
    _not_buildbot(conf, "start")
    mconfig.check_private(conf.paths)
    furlsfile.read(conf.paths.furls, cfg.tubid())  # refuse a bad file before going away
    if nodaemon or ready_fd is not None:
        from buildbot_furl.master.service import run_master

        sys.exit(run_master(conf, ready_fd, to_stderr=ready_fd is None))
    pid = master_pid(conf.paths)
    if pid is not None:
        raise Failed(daemon.already_running("master", conf.paths.basedir, pid))
    argv = [sys.executable, "-m", "buildbot_furl.cli.master", "start", "-d", conf.paths.basedir]
    ok, message = daemon.spawn(argv, conf.paths.log, timeout=30)
    if not ok:
        raise Failed(message)
    note(f"furl-master started ({message}); log: {conf.paths.log}")


def stop(cfg: MasterCli) -> None:
    conf = cfg.config()
    _not_buildbot(conf, "stop")
    pid = daemon.stop(daemon.PidFile(conf.paths.pidfile, "master"))
    if pid is None:
        raise Failed(f"the master in {conf.paths.basedir} is not running", Exit.NOT_RUNNING)
    note(f"furl-master stopped (pid {pid})")


def restart(cfg: MasterCli) -> None:
    conf = cfg.config()
    _not_buildbot(conf, "restart")
    mconfig.check_private(conf.paths)
    furlsfile.read(conf.paths.furls, cfg.tubid())  # a bad file: keep the running one running
    pid = daemon.stop(daemon.PidFile(conf.paths.pidfile, "master"))
    if pid is not None:
        note(f"furl-master stopped (pid {pid})")
    start(cfg, False, None)


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Failed(f"--env wants KEY=VALUE, got {pair!r}", Exit.USAGE)
        env[key] = value
    return env


def run(cfg: MasterCli, workdir: str | None, envs: tuple[str, ...], timeout: float | None,
        verbose: bool, name: str, command: tuple[str, ...]) -> None:
    from buildbot_furl.client.run import RunOperation

    conf = cfg.config()
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise Failed("no command given (furl-master run NAME -- CMD ARGS...)", Exit.USAGE)
    code, message = RunOperation(conf.paths, name, argv, workdir, _parse_env(envs), timeout,
                                 verbose).run()
    if message:
        note(f"furl-master: {message}")
    sys.exit(code)


def drain(cfg: MasterCli, name: str, wait: float | None) -> None:
    conf = cfg.config()

    async def ask(admin: Any) -> bool:
        from twisted.internet import reactor, task

        require_standalone(admin, "drain is not available on a Buildbot master: use "
                                  "Buildbot's own graceful shutdown of the worker (its web "
                                  "page's button, or the data API's 'stop' action)")
        answer = await call(admin, "drain", name)
        running = int(answer.get("running") or 0)
        note(f"worker {name!r} is draining: it takes no new commands"
             + (f"; {running} still run, and it stops once they end" if running
                else "; nothing runs on it, so it stops now"))
        deadline = time.monotonic() + (wait or 0)
        while wait is not None and time.monotonic() < deadline:
            rows = await call(admin, "listWorkers")
            if not any(r.get("name") == name and r.get("state") != "not connected"
                       for r in rows):
                return True
            await task.deferLater(reactor, 0.5, lambda: None)
        return wait is None

    if run_with_admin(conf.paths, ask):
        if wait is not None:
            note(f"worker {name!r} has stopped")
        return
    raise Failed(f"worker {name!r} is still draining after {wait:g} s", Exit.UNAVAILABLE)


def put(cfg: MasterCli, name: str, local: str, remote: str) -> None:
    from buildbot_furl.client.files import PutOperation

    conf = cfg.config()
    r = PutOperation(conf.paths, name, local, remote, progress=sys.stderr.isatty()).run()
    what = "directory" if r["kind"] == "dir" else f"{r['size']} bytes"
    note(f"{local} -> {name}:{r['remote']} ({what}, verified)")


def get(cfg: MasterCli, name: str, remote: str, local: str) -> None:
    from buildbot_furl.client.files import GetOperation

    conf = cfg.config()
    r = GetOperation(conf.paths, name, remote, local, progress=sys.stderr.isatty()).run()
    what = "directory" if r["kind"] == "dir" else f"{r['size']} bytes"
    note(f"{name}:{remote} -> {r['local']} ({what}, verified)")
