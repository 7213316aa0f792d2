"""What each ``furl-master`` command does, given the parsed command line."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
from typing import Any

import click

from buildbot_furl import cluster, daemon, furlsfile
from buildbot_furl.cli.common import Failed, note
from buildbot_furl.cli.exits import Exit
from buildbot_furl.client.connect import (
    MasterNotRunning,
    master_pid,
    require_standalone,
    run_with_admin,
)
from buildbot_furl.display import printable
from buildbot_furl.errors import ConfigError, PathRefused
from buildbot_furl.furl import Furl, new_swissnum
from buildbot_furl.layout import MasterPaths
from buildbot_furl.master import config as mconfig
from buildbot_furl.privatefiles import reserve_private
from buildbot_furl.protocol import call
from buildbot_furl.protocol.messages import (
    PUBLIC_MAILBOX,
    DrainAnswer,
    InviteAnswer,
    InviteRequest,
    InviteRow,
    StatusAnswer,
    WorkerRow,
    invite_rows_from_wire,
    worker_rows_from_wire,
)
from buildbot_furl.tubs import make_tub, tubid_of


@dataclasses.dataclass
class MasterCli:
    """What the command line said, for every furl-master command."""

    basedir: str | None = None
    _reading: mconfig.ConfReading | None = None
    _warned: bool = False

    @property
    def dir(self) -> str:
        return self.basedir or "."

    def reading(self) -> mconfig.ConfReading:
        if self._reading is None:
            self._reading = mconfig.read(self.dir)
        return self._reading

    def config(self) -> mconfig.MasterConfig:
        """Every setting good (what start needs); else one error naming them all."""
        r = self.reading()
        if r.problems or r.config is None:
            raise ConfigError("; ".join(r.problems))
        return r.config

    def paths(self, warn: bool = True) -> MasterPaths:
        """The directory's files, for a command that talks to a running master
        or edits workers.furls: a bad setting in furl-master.conf is a warning
        here (the running master keeps what it started with), never a lock-out."""
        r = self.reading()
        if warn and not self._warned:
            self._warned = True
            for p in r.problems:
                note(f"warning: {p}{CONF_STILL}")
        return r.paths

    def lenient_config(self) -> mconfig.MasterConfig:
        """The settings, a bad optional one warned about and left at its
        default; location and port must be good (they go into FURLs)."""
        r = self.reading()
        if r.config is None:
            raise ConfigError("; ".join(r.problems))
        self.paths()
        return r.config

    def tubid(self) -> str:
        return tubid_of(self.reading().paths.tub_pem)


#: what a warning about furl-master.conf adds
CONF_STILL = " (a running master keeps the settings it started with; fix it before the next start)"


def _not_buildbot(paths: MasterPaths, what: str) -> None:
    if mconfig.is_buildbot_dir(paths):
        raise Failed(f"{paths.basedir} is a Buildbot master's directory: its FURL "
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
    qd = shlex.quote(d)  # the hints below can be pasted into a shell
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
             f"next: furl-master create-worker -d {qd} NAME -o NAME.furl, then "
             f"buildbot reconfig {qd}")
    else:
        note(f"next: furl-master create-worker -d {qd} NAME -o NAME.furl, then "
             f"furl-master start -d {qd}")


def create_worker(cfg: MasterCli, name: str, comment: str, output: str | None) -> None:
    conf = cfg.lenient_config()
    if mconfig.is_buildbot_dir(conf.paths):  # a name Buildbot refuses blocks every reconfig
        furlsfile.check_buildbot_name(name)
    else:
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
    paths = cfg.paths()
    with furlsfile.update(paths.furls, cfg.tubid()) as ff:
        ff.remove(name)
    note(f"worker {name!r} revoked")


def rotate_worker(cfg: MasterCli, name: str, output: str | None) -> None:
    conf = cfg.lenient_config()
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


def _problems(cfg: MasterCli, running_problems: list[str]) -> list[str]:
    """What is wrong with the master's files: seen here, and as the running
    master sees them (e.g. an edit it refused), each once."""
    found = mconfig.all_problems(cfg.reading())
    for p in running_problems:
        if p not in found:
            found.append(p)
    return found


def _warn(problems: list[str], running: bool, but: str | None = None) -> None:
    """One warning line per problem (``but``: the one about to be the error)."""
    for p in problems:
        if p == but:
            continue
        still = ""
        if running and mconfig.CONF_NAME in p:
            still = CONF_STILL
        elif running and "workers.furls" in p:
            still = " (the running master still uses the last good version)"
        note(f"warning: {p}{still}")


def list_workers(cfg: MasterCli, as_json: bool, show_furls: bool) -> None:
    paths = cfg.paths(warn=False)  # warned about below, with the rest
    live: dict[str, WorkerRow] = {}
    running_problems: list[str] = []
    refusals: dict[str, Any] | None = None
    invites: list[InviteRow] = []
    running = master_pid(paths) is not None
    if running:
        try:
            rows, st, invites = run_with_admin(paths, _list_and_status)
            live = {r.name: r for r in rows}
            running_problems = list(st.problems)
            refusals = st.refusals.to_wire()
        except MasterNotRunning:
            running = False
    problems = _problems(cfg, running_problems)
    try:
        entries = furlsfile.read(paths.furls).entries
    except ConfigError as e:
        if not running:
            _warn(problems, running, but=str(e))
            raise
        # the running master keeps serving its last good list: show that one
        entries = [furlsfile.Entry(r.name, Furl("", (), ""), r.comment) for r in live.values()]
        show_furls = False
    out = []
    for entry in entries:
        row: dict[str, Any] = {"name": entry.name, "comment": entry.comment}
        if running:
            r = live.get(entry.name) or WorkerRow(entry.name)
            row.update(connected=r.connected, peer=r.peer, last_seen=r.last_seen,
                       connected_since=r.connected_since, host=r.host, admin=r.admin,
                       state=r.state, draining=r.draining, grace_until=r.grace_until)
        if show_furls:
            row["furl"] = str(entry.furl)
        out.append(row)
    if as_json:
        click.echo(json.dumps({"master_running": running, "workers": out,
                               "problems": problems, "refusals": refusals,
                               "invites": [i.to_wire() for i in invites]}, indent=2))
        return
    _warn(problems, running)
    for inv in invites:
        if inv.state == "pending":
            click.echo(f"{inv.name}  invite pending until {_when(inv.expires)}"
                       + (" (a new FURL for it)" if inv.rotation else " (a new worker)"))
    claimed = [i for i in invites if i.state == "claimed"][-5:]
    for inv in claimed:
        note(f"(invite for {inv.name} claimed {_when(inv.claimed_at)} by {inv.host or '?'})")
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


def list_cluster(cfg: MasterCli, as_json: bool) -> None:
    """Which master of the cluster holds each worker of workers.furls, from
    the heartbeat records of the cluster directory (files only)."""
    r = cfg.reading()
    paths = cfg.paths()
    setting = r.config.cluster_dir if r.config is not None else None
    directory = cluster.resolve_dir(setting, paths.basedir, paths.furls)
    if directory is None:
        raise ConfigError(
            f"no cluster directory: {paths.furls} is not a link to a shared file and "
            f"{paths.conf} sets no cluster_dir; set cluster_dir = PATH there, the same "
            "directory on every master of the cluster")
    view = cluster.read_dir(directory, time.time())
    entries = furlsfile.read(paths.furls).entries
    listed = {e.name for e in entries}
    names = [e.name for e in entries] + sorted(view.held_names() - listed)
    workers = []
    for name in names:
        holders = view.holders(name)
        workers.append({
            "name": name, "listed": name in listed,
            "held_by": [{"master": m.name, "since": w.since, "peer": w.peer,
                         "state": w.state} for m, w in holders],
            "waiting_on": [m.name for m in view.waiting(name)] if not holders else []})
    if as_json:
        click.echo(json.dumps({
            "cluster_dir": directory,
            "masters": [{"name": m.name, "master_id": m.master_id, "pid": m.pid,
                         "location": list(m.location), "port": m.port, "updated": m.updated,
                         "interval": m.interval, "live": not m.stale(view.now),
                         "workers": sum(w.held for w in m.workers)} for m in view.records],
            "workers": workers, "problems": list(view.problems)}, indent=2))
        return
    for p in view.problems:
        note(f"warning: {p}")
    if not view.records:
        note(f"no master has written a heartbeat record into {directory} yet")
    for m in view.records:
        mname = printable(m.name)  # a file's text: no escapes to the terminal
        age = max(0.0, m.age(view.now))
        if m.stale(view.now):
            click.echo(f"master {mname}: no heartbeat for {age:.0f} s (stopped or dead; its "
                       f"workers are not counted as held)")
        else:
            click.echo(f"master {mname}: live (pid {m.pid}, port {m.port}, heartbeat "
                       f"{age:.0f} s ago), {sum(w.held for w in m.workers)} worker(s) attached")
    for w in workers:
        held = w["held_by"]
        if len(held) == 1:
            h = held[0]
            text = f"held by {h['master']} (from {h['peer']} since {_when(h['since'])}" + \
                (", draining)" if h["state"] == "draining" else ")")
        elif held:
            text = ("held by " + " and ".join(h["master"] for h in held) +
                    ": claimed by more than one live master, which should not happen "
                    "(do these masters share one Tub key?)")
        elif w["waiting_on"]:
            text = ("not attached to any master (" + ", ".join(w["waiting_on"]) +
                    " keeps its session while it reconnects)")
        else:
            text = "not attached to any master"
        if not w["listed"]:
            text += " (not in workers.furls)"
        click.echo(printable(f"{w['name']}  {text}"))


async def _list_and_status(admin: Any) -> tuple[list[WorkerRow], StatusAnswer,
                                                 list[InviteRow]]:
    return (worker_rows_from_wire(await call(admin, "listWorkers")),
            await _status(admin), await _invites(admin))


async def _status(admin: Any) -> StatusAnswer:
    return StatusAnswer.from_wire(await call(admin, "status"))


def status(cfg: MasterCli, as_json: bool) -> None:
    paths = cfg.paths(warn=False)  # warned about below, with the rest
    if master_pid(paths) is None:
        problems = _problems(cfg, [])
        if as_json:
            click.echo(json.dumps({"running": False, "problems": problems}))
        else:
            click.echo("not running")
            _warn(problems, False)
        sys.exit(Exit.NOT_RUNNING)
    st = run_with_admin(paths, _status)
    problems = _problems(cfg, list(st.problems))
    if as_json:
        click.echo(json.dumps({"running": True, **st.to_wire(), "problems": problems},
                              indent=2))
        return
    up = time.time() - st.started
    kind = " as part of a Buildbot master" if st.kind == "buildbot" else ""
    click.echo(f"running{kind} (pid {st.pid}, up {up:.0f} s, version {st.version}): "
               f"{st.connected} of {st.workers} worker(s) connected; "
               f"location {st.location}")
    ref = st.refusals
    if ref.total:
        cut = (f"; {ref.cut_unanswered} cut unanswered past refusal_limit"
               if ref.cut_unanswered else "")
        click.echo(f"refused {ref.total} attach attempt(s) with an unknown or revoked FURL "
                   f"since it started ({ref.this_interval} in the current minute, "
                   f"from {ref.addresses} address(es){cut})")
    conns = ref.connections
    if conns.timed_out or conns.evicted:
        click.echo(f"closed {conns.timed_out} connection(s) that did not start an "
                   f"attach within {conns.attach_timeout:.0f} s and "
                   f"{conns.evicted} before TLS past max_pending "
                   f"({conns.max_pending}) since it started; "
                   f"{conns.pending} pending now")
    _warn(problems, True)


# -- running ----------------------------------------------------------------------


def _startable(cfg: MasterCli) -> mconfig.MasterConfig:
    """The config, if nothing stops a start; else every problem at once
    (a copied directory often has several)."""
    _not_buildbot(cfg.reading().paths, "start")
    found = mconfig.all_problems(cfg.reading())
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} problems stop the master from starting:\n  "
                          + "\n  ".join(found))
    return cfg.config()


def start(cfg: MasterCli, nodaemon: bool, ready_fd: int | None) -> None:
    conf = _startable(cfg)
    if nodaemon or ready_fd is not None:
        from buildbot_furl.master.service import run_master

        sys.exit(run_master(conf, ready_fd, to_stderr=ready_fd is None))
    pid = master_pid(conf.paths)
    if pid is not None:
        raise Failed(daemon.already_running("master", conf.paths.basedir, pid))
    argv = daemon.python_argv("buildbot_furl.cli.master", "start", "-d", conf.paths.basedir)
    ok, message = daemon.spawn(argv, conf.paths.log, timeout=30)
    if not ok:
        raise Failed(message)
    note(f"furl-master started ({message}); log: {conf.paths.log}")


def stop(cfg: MasterCli) -> None:
    paths = cfg.paths()
    _not_buildbot(paths, "stop")
    pid = daemon.stop(daemon.PidFile(paths.pidfile, "master"))
    if pid is None:
        raise Failed(f"the master in {paths.basedir} is not running", Exit.NOT_RUNNING)
    note(f"furl-master stopped (pid {pid})")


def restart(cfg: MasterCli) -> None:
    _not_buildbot(cfg.reading().paths, "restart")
    conf = _startable(cfg)  # a bad file: keep the running one running
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

    furlsfile.check_name(name)  # never sent, nor echoed whole, when it cannot be one
    paths = cfg.paths()
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise Failed("no command given (furl-master run NAME -- CMD ARGS...)", Exit.USAGE)
    code, message = RunOperation(paths, name, argv, workdir, _parse_env(envs), timeout,
                                 verbose).run()
    if message:
        note(f"furl-master: {message}")
    sys.exit(code)


def parse_ttl(text: str) -> float:
    """``24h``, ``90m``, ``7d``, ``3600`` (seconds): 1 minute to 30 days."""
    t = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise Failed(f"--ttl {text[:40]!r}: not a duration (like 24h, 90m, 7d)",
                     Exit.USAGE) from None
    if not 60 <= value <= 30 * 86400:
        raise Failed(f"--ttl {text[:40]!r}: an invite is good for 1 minute to 30 days",
                     Exit.USAGE)
    return value


def _for(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 2 * 86400 else \
        f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def invite(cfg: MasterCli, name: str, ttl: str, comment: str, cancel: bool) -> None:
    furlsfile.check_name(name)
    paths = cfg.paths()
    if cancel:
        if run_with_admin(paths, lambda admin: call(admin, "cancelInvite", name)):
            note(f"the invite for worker {name!r} is cancelled: its code no longer works")
            return
        raise Failed(f"no invite for worker {name!r} is pending")
    request = InviteRequest(name, parse_ttl(ttl), comment)

    async def ask(admin: Any) -> InviteAnswer:
        return InviteAnswer.from_wire(await call(admin, "invite", request.to_wire()))

    answer = run_with_admin(paths, ask)
    click.echo(answer.code)
    until = datetime.datetime.fromtimestamp(answer.expires).strftime("%Y-%m-%d %H:%M")
    what = ("a new FURL for worker {!r} (its old one stops working once it is claimed)"
            if answer.rotation else "worker {!r}").format(name)
    mailbox = "" if answer.mailbox == PUBLIC_MAILBOX else f" --mailbox {answer.mailbox}"
    cmd = "set-furl" if answer.rotation else "create-worker"
    note(f"invite for {what}: the code above is good once, for {_for(request.ttl)} (until "
         f"{until}); the running master holds it open.\nGive the code to the worker's admin, "
         f"who runs: furl-worker {cmd} DIR --code CODE{mailbox}\n"
         f"(cancel it with: furl-master invite -d {shlex.quote(paths.basedir)} --cancel {name})")


async def _invites(admin: Any) -> list[InviteRow]:
    """The master's invites; none from a master that predates them."""
    try:
        return invite_rows_from_wire(await call(admin, "listInvites"))
    except Exception:  # noqa: BLE001 - an older master: no invites to show
        return []


def drain(cfg: MasterCli, name: str, wait: float | None) -> None:
    furlsfile.check_name(name)
    paths = cfg.paths()

    async def ask(admin: Any) -> bool:
        from twisted.internet import reactor, task

        require_standalone(admin, "drain is not available on a Buildbot master: use "
                                  "Buildbot's own graceful shutdown of the worker (its web "
                                  "page's button, or the data API's 'stop' action)")
        running = DrainAnswer.from_wire(await call(admin, "drain", name)).running
        note(f"worker {name!r} is draining: it takes no new commands"
             + (f"; {running} still run, and it stops once they end" if running
                else "; nothing runs on it, so it stops now"))
        deadline = time.monotonic() + (wait or 0)
        while wait is not None and time.monotonic() < deadline:
            rows = worker_rows_from_wire(await call(admin, "listWorkers"))
            if not any(r.name == name and r.state != "not connected" for r in rows):
                return True
            await task.deferLater(reactor, 0.5, lambda: None)
        return wait is None

    if run_with_admin(paths, ask):
        if wait is not None:
            note(f"worker {name!r} has stopped")
        return
    raise Failed(f"worker {name!r} is still draining after {wait:g} s", Exit.UNAVAILABLE)


def _copy_paths(remote: str, local: str, into: str) -> None:
    """put and get alike: REMOTE and LOCAL are the copy's own paths; the
    worker's directory itself is not one, nor is an existing directory on
    the receiving side (``into``: "local" for get; the worker checks put's)."""
    if not remote.strip("/."):
        raise PathRefused(f"{remote!r} names the worker's directory itself: name a file "
                          "or directory in it")
    if into == "local" and os.path.isdir(local):
        base = os.path.basename(remote.rstrip("/"))
        raise Failed(f"{local} is a directory: give the copy's own path, e.g. "
                     f"{shlex.quote(os.path.join(local, base))} (get, like put, never copies "
                     "into a directory)", Exit.UNAVAILABLE)


def put(cfg: MasterCli, name: str, local: str, remote: str) -> None:
    from buildbot_furl.client.files import PutOperation

    furlsfile.check_name(name)
    _copy_paths(remote, local, "remote")
    r = PutOperation(cfg.paths(), name, local, remote, progress=sys.stderr.isatty()).run()
    what = "directory" if r["kind"] == "dir" else f"{r['size']} bytes"
    note(f"{local} -> {name}:{r['remote']} ({what}, verified)")


def get(cfg: MasterCli, name: str, remote: str, local: str) -> None:
    from buildbot_furl.client.files import GetOperation

    furlsfile.check_name(name)
    _copy_paths(remote, local, "local")
    r = GetOperation(cfg.paths(), name, remote, local, progress=sys.stderr.isatty()).run()
    what = "directory" if r["kind"] == "dir" else f"{r['size']} bytes"
    note(f"{name}:{remote} -> {r['local']} ({what}, verified)")
