"""``furl-master``: create a master, manage its workers' FURLs, run it."""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Any

import click

from buildbot_furl import daemon, furls
from buildbot_furl.client.connect import MasterNotRunning, master_pid, run_with_admin
from buildbot_furl.cli.common import Failed, guarded, note, run_main
from buildbot_furl.cli.exits import Exit

EXIT_UNAVAILABLE = Exit.UNAVAILABLE
from buildbot_furl.errors import ConfigError
from buildbot_furl.master import config as mconfig
from buildbot_furl.protocol import call
from buildbot_furl.tubs import make_tub

ENV_DIR = "FURL_MASTER_DIR"


def basedir_option(fn: Any) -> Any:
    return click.option(
        "-d", "--basedir", "basedir", envvar=ENV_DIR, default=None,
        type=click.Path(file_okay=False),
        help=f"Master directory (default: ${ENV_DIR}, else the current directory).",
    )(fn)


def _basedir(ctx: click.Context, basedir: str | None) -> str:
    return basedir or ctx.find_root().params.get("basedir") or os.environ.get(ENV_DIR) or "."


def _tubid(cfg: mconfig.MasterConfig) -> str:
    pem = cfg.paths.tub_pem
    if not os.path.exists(pem):
        raise ConfigError(f"{pem} is missing: without the master's key no FURL can be made")
    return make_tub(pem).getTubID()


def _load(ctx: click.Context, basedir: str | None) -> mconfig.MasterConfig:
    return mconfig.load(_basedir(ctx, basedir))


def _not_buildbot(cfg: mconfig.MasterConfig, what: str) -> None:
    if any(os.path.exists(os.path.join(cfg.paths.basedir, f))
           for f in ("buildbot.tac", "master.cfg")):
        raise Failed(f"{cfg.paths.basedir} is a Buildbot master's directory: its FURL "
                     f"workers are served by Buildbot itself; use 'buildbot {what}' there")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@basedir_option
@click.version_option(package_name="buildbot_furl", prog_name="furl-master")
def cli(basedir: str | None) -> None:
    """Publish one FURL per worker and drive the workers that attach.

    \b
    Set up:   furl-master create-master -d DIR --location tcp:HOST:PORT
              furl-master create-worker -d DIR NAME     (prints the FURL)
    Run:      furl-master start -d DIR
    Use:      furl-master run -d DIR NAME -- make test

    All FURLs live in DIR/workers.furls (one 'NAME FURL' line each); a
    running master applies hand edits within 2 seconds.
    """


@cli.command("create-master")
@basedir_option
@click.option("--location", required=True, metavar="tcp:HOST:PORT[,...]",
              help="What workers dial; written into every FURL.")
@click.option("--port", default=None, metavar="ENDPOINT",
              help="What the master listens on (default: tcp:PORT from --location).")
@click.pass_context
@guarded()
def create_master(ctx: click.Context, basedir: str | None, location: str,
                  port: str | None) -> None:
    """Create a master directory: config, TLS key, empty workers.furls."""
    d = _basedir(ctx, basedir)
    cfg = mconfig.create(d, location, port)
    tubid = make_tub(cfg.paths.tub_pem).getTubID()
    note(f"created master in {cfg.paths.basedir} (tubid {tubid}, listening on {cfg.port})")
    note("next: furl-master create-worker NAME, then furl-master start")


@cli.command("create-worker")
@basedir_option
@click.argument("name")
@click.option("--comment", default="", help="A note kept after the FURL in workers.furls.")
@click.pass_context
@guarded()
def create_worker(ctx: click.Context, basedir: str | None, name: str, comment: str) -> None:
    """Add worker NAME and print its FURL (only the FURL, on stdout)."""
    cfg = _load(ctx, basedir)
    furls.check_name(name)
    tubid = _tubid(cfg)
    furl = furls.Furl(tubid, cfg.location, furls.new_swissnum())
    with furls.update(cfg.paths.furls, tubid) as ff:
        ff.add(name, furl, comment)
    click.echo(str(furl))
    note(f"worker {name!r} added to {cfg.paths.furls}; give that FURL to its admin "
         "(it is a secret)")


@cli.command("revoke-worker")
@basedir_option
@click.argument("name")
@click.pass_context
@guarded()
def revoke_worker(ctx: click.Context, basedir: str | None, name: str) -> None:
    """Remove worker NAME: its FURL stops working and a live connection drops."""
    cfg = _load(ctx, basedir)
    with furls.update(cfg.paths.furls, _tubid(cfg)) as ff:
        ff.remove(name)
    note(f"worker {name!r} revoked")


@cli.command("rotate-worker")
@basedir_option
@click.argument("name")
@click.pass_context
@guarded()
def rotate_worker(ctx: click.Context, basedir: str | None, name: str) -> None:
    """Give worker NAME a new FURL (printed); the old one stops working."""
    cfg = _load(ctx, basedir)
    tubid = _tubid(cfg)
    furl = furls.Furl(tubid, cfg.location, furls.new_swissnum())
    with furls.update(cfg.paths.furls, tubid) as ff:
        ff.replace_furl(name, furl)
    click.echo(str(furl))
    note(f"worker {name!r} has a new FURL; the old one no longer works")


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@cli.command("list-workers")
@basedir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--show-furls", is_flag=True, help="Include the FURLs (secrets!).")
@click.pass_context
@guarded()
def list_workers(ctx: click.Context, basedir: str | None, as_json: bool,
                 show_furls: bool) -> None:
    """List workers; with a running master, also who is connected."""
    cfg = _load(ctx, basedir)
    live: dict[str, dict[str, Any]] = {}
    running = master_pid(cfg.paths) is not None
    if running:
        try:
            rows = run_with_admin(cfg.paths, lambda ref: call(ref, "listWorkers"))
            live = {r["name"]: r for r in rows}
        except MasterNotRunning:
            running = False
    try:
        entries = furls.read(cfg.paths.furls).entries
    except ConfigError as e:
        if not running:
            raise
        # the running master keeps serving its last good list: show that one
        note(f"warning: {e} (the running master still uses the previous version)")
        entries = [furls.Entry(r["name"], furls.Furl("", (), ""), r.get("comment", ""))
                   for r in live.values()]
        show_furls = False
    out = []
    for entry in entries:
        row: dict[str, Any] = {"name": entry.name, "comment": entry.comment}
        if running:
            r = live.get(entry.name, {})
            row.update(connected=bool(r.get("connected")), peer=r.get("peer"),
                       last_seen=r.get("last_seen"), connected_since=r.get("connected_since"),
                       host=r.get("host"), admin=r.get("admin"))
        if show_furls:
            row["furl"] = str(entry.furl)
        out.append(row)
    if as_json:
        click.echo(json.dumps({"master_running": running, "workers": out}, indent=2))
        return
    if not out:
        note("no workers yet: add one with furl-master create-worker NAME")
        return
    for row in out:
        parts = [row["name"]]
        if running:
            if row["connected"]:
                parts.append(f"connected from {row['peer']} since {_when(row['connected_since'])}")
                if row.get("host"):
                    parts.append(f"({row['host']})")
            else:
                parts.append(f"not connected (last seen {_when(row['last_seen'])})")
        if row["comment"]:
            parts.append(f"# {row['comment']}")
        if show_furls:
            parts.append(row["furl"])
        click.echo("  ".join(parts))
    if not running:
        note("(the master is not running: connection state unknown)")


@cli.command()
@basedir_option
@click.option("--nodaemon", is_flag=True, help="Stay in the foreground, log to stderr too.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.pass_context
@guarded()
def start(ctx: click.Context, basedir: str | None, nodaemon: bool, ready_fd: int | None) -> None:
    """Start the master (in the background unless --nodaemon)."""
    cfg = _load(ctx, basedir)
    _not_buildbot(cfg, "start")
    mconfig.check_private(cfg.paths)
    furls.read(cfg.paths.furls, _tubid(cfg))  # refuse a bad file before going away
    if nodaemon or ready_fd is not None:
        from buildbot_furl.master.service import run_master

        sys.exit(run_master(cfg, ready_fd, to_stderr=ready_fd is None))
    pid = master_pid(cfg.paths)
    if pid is not None:
        raise Failed(daemon.already_running("master", cfg.paths.basedir, pid))
    argv = [sys.executable, "-m", "buildbot_furl.cli.master", "start", "-d", cfg.paths.basedir]
    ok, message = daemon.spawn(argv, cfg.paths.log, timeout=30)
    if not ok:
        raise Failed(message)
    note(f"furl-master started ({message}); log: {cfg.paths.log}")


@cli.command()
@basedir_option
@click.pass_context
@guarded()
def stop(ctx: click.Context, basedir: str | None) -> None:
    """Stop the running master."""
    cfg = _load(ctx, basedir)
    _not_buildbot(cfg, "stop")
    pid = daemon.stop(daemon.PidFile(cfg.paths.pidfile))
    if pid is None:
        raise Failed(f"the master in {cfg.paths.basedir} is not running")
    note(f"furl-master stopped (pid {pid})")


@cli.command()
@basedir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded(EXIT_UNAVAILABLE)
def status(ctx: click.Context, basedir: str | None, as_json: bool) -> None:
    """Say whether the master runs, and how many workers are connected."""
    cfg = _load(ctx, basedir)
    if master_pid(cfg.paths) is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("not running")
        sys.exit(3)
    st = run_with_admin(cfg.paths, lambda ref: call(ref, "status"))
    if as_json:
        click.echo(json.dumps({"running": True, **st}, indent=2))
        return
    up = time.time() - st["started"]
    kind = " as part of a Buildbot master" if st.get("kind") == "buildbot" else ""
    click.echo(f"running{kind} (pid {st['pid']}, up {up:.0f} s, version {st['version']}): "
               f"{st['connected']} of {st['workers']} worker(s) connected; "
               f"location {st['location']}")


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Failed(f"--env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


@cli.command(context_settings={"allow_interspersed_args": True})
@basedir_option
@click.option("--workdir", default=None,
              help="Directory to run in, relative to the worker's directory (default: it).")
@click.option("--env", "envs", multiple=True, metavar="KEY=VALUE",
              help="Set an environment variable for the command (repeatable).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Kill the command after this many seconds.")
@click.option("-v", "--verbose", is_flag=True, help="Also show the worker's header lines.")
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
@guarded(EXIT_UNAVAILABLE)
def run(ctx: click.Context, basedir: str | None, workdir: str | None, envs: tuple[str, ...],
        timeout: float | None, verbose: bool, name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND on worker NAME, streaming its output; exit with its exit code.

    \b
    Example:  furl-master run w1 -- make -j4 test
    Put '--' before COMMAND: what follows it is never read as an option.
    A remote signal N gives exit code 128+N; Ctrl-C interrupts the command.
    """
    from buildbot_furl.client.run import RunOperation

    cfg = _load(ctx, basedir)
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise Failed("no command given (furl-master run NAME -- CMD ARGS...)")
    code, message = RunOperation(cfg.paths, name, argv, workdir, _parse_env(envs), timeout,
                                 verbose).run()
    if message:
        note(f"furl-master: {message}")
    sys.exit(code)


@cli.command()
@basedir_option
@click.argument("name")
@click.argument("local", type=click.Path(exists=True))
@click.argument("remote")
@click.pass_context
@guarded(EXIT_UNAVAILABLE)
def put(ctx: click.Context, basedir: str | None, name: str, local: str, remote: str) -> None:
    """Copy file or directory LOCAL to REMOTE on worker NAME.

    REMOTE is relative to the worker's directory and may not leave it.
    The copy is checked by sha256 on the worker and only then renamed to
    REMOTE, so a failed copy never leaves a partial file there.
    """
    from buildbot_furl.client.files import PutOperation

    cfg = _load(ctx, basedir)
    r = PutOperation(cfg.paths, name, local, remote, progress=sys.stderr.isatty()).run()
    what = "directory" if r["kind"] == "dir" else f"{r['size']} bytes"
    note(f"{local} -> {name}:{r['remote']} ({what}, verified)")


@cli.command()
@basedir_option
@click.argument("name")
@click.argument("remote")
@click.argument("local", type=click.Path())
@click.pass_context
@guarded(EXIT_UNAVAILABLE)
def get(ctx: click.Context, basedir: str | None, name: str, remote: str, local: str) -> None:
    """Copy file or directory REMOTE from worker NAME to LOCAL.

    REMOTE is relative to the worker's directory; LOCAL may be an existing
    directory to copy into.  The copy is checked by sha256 against the
    worker's file (or tree) and only then renamed to LOCAL, so a failed
    copy never leaves a partial file there.
    """
    from buildbot_furl.client.files import GetOperation

    cfg = _load(ctx, basedir)
    r = GetOperation(cfg.paths, name, remote, local, progress=sys.stderr.isatty()).run()
    what = "directory" if r["kind"] == "dir" else f"{r['size']} bytes"
    note(f"{name}:{remote} -> {r['local']} ({what}, verified)")


def main() -> None:
    run_main(cli, "furl-master")


if __name__ == "__main__":
    main()
