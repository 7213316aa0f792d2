"""``furl-worker``: attach a build worker to its master with one FURL."""

from __future__ import annotations

import datetime
import json
import os
import sys

import click

from buildbot_furl import daemon
from buildbot_furl.cli.common import Failed, guarded, note, run_main
from buildbot_furl.tubs import DEFAULT_DISCONNECT_TIMEOUT, DEFAULT_KEEPALIVE
from buildbot_furl.worker import config as wconfig
from buildbot_furl.worker import launch

FURL_HELP = "The FURL (visible in 'ps'; prefer --furl-file or $FURL_WORKER_FURL)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="buildbot_furl", prog_name="furl-worker")
def cli() -> None:
    """Run a build worker that attaches to a master through one FURL.

    \b
    Once:     furl-worker create-worker DIR --furl-file FILE
              furl-worker start DIR
    Or:       FURL_WORKER_FURL=pb://... furl-worker start DIR

    The connection is encrypted, pinned to the master's key, and
    re-established by itself (backoff up to 60 s) when it drops.
    """


@cli.command("create-worker")
@click.argument("basedir", type=click.Path(file_okay=False))
@click.option("--furl", default=None, help=FURL_HELP)
@click.option("--furl-file", default=None, type=click.Path(dir_okay=False),
              help="Read the FURL from this file (mode 0600).")
@click.option("--admin", default=None, help="Who runs this worker (info/admin).")
@click.option("--host", default=None, help="A description of this host (info/host).")
@guarded()
def create_worker(basedir: str, furl: str | None, furl_file: str | None, admin: str | None,
                  host: str | None) -> None:
    """Create worker directory BASEDIR holding the FURL (DIR/master.furl, 0600)."""
    source = wconfig.resolve_furl(None, furl, furl_file)
    paths = wconfig.create(basedir, source.furl, admin, host)
    note(f"created worker in {paths.basedir}; start it with: furl-worker start {basedir}")


@cli.command()
@click.argument("basedir", default=".", type=click.Path(file_okay=False))
@click.option("--furl", default=None, help=FURL_HELP)
@click.option("--furl-file", default=None, type=click.Path(dir_okay=False),
              help="Read the FURL from this file (mode 0600).")
@click.option("--nodaemon", is_flag=True, help="Stay in the foreground, log to stderr too.")
@click.option("--wait", default=15.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for the first attach before giving up; 0 starts "
                   "without waiting and keeps trying forever (for boot scripts).")
@click.option("--keepalive", default=DEFAULT_KEEPALIVE, show_default=True,
              type=click.IntRange(min=0), help="Ping the master after this many idle seconds.")
@click.option("--disconnect-timeout", default=DEFAULT_DISCONNECT_TIMEOUT, show_default=True,
              type=click.IntRange(min=0),
              help="Drop and redial after this many seconds without traffic.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.option("--furl-fd", type=int, default=None, hidden=True)
@guarded()
def start(basedir: str, furl: str | None, furl_file: str | None, nodaemon: bool, wait: float,
          keepalive: int, disconnect_timeout: int, ready_fd: int | None,
          furl_fd: int | None) -> None:
    """Start the worker in BASEDIR (default: the current directory).

    The FURL is read from BASEDIR/master.furl (written by create-worker or
    set-furl) unless --furl-file, --furl or $FURL_WORKER_FURL gives one.
    Whichever way it comes, the running worker keeps it in memory only:
    commands it runs never see it in their environment.
    """
    paths = wconfig.WorkerPaths(os.path.abspath(basedir))
    if not os.path.isdir(paths.basedir):
        raise Failed(f"{basedir} does not exist (create it with furl-worker create-worker)")
    source = wconfig.resolve_furl(paths, furl, furl_file, furl_fd)
    options = wconfig.WorkerOptions(wait, keepalive, disconnect_timeout)
    if nodaemon or ready_fd is not None:
        sys.exit(launch.run_foreground(paths, source, options, ready_fd))
    message = launch.start_background(paths, source, options)
    note(f"furl-worker started ({message}); log: {paths.log}")


@cli.command()
@click.argument("basedir", default=".", type=click.Path(file_okay=False))
@guarded()
def stop(basedir: str) -> None:
    """Stop the worker running in BASEDIR."""
    pid = daemon.stop(daemon.PidFile(wconfig.WorkerPaths(os.path.abspath(basedir)).pidfile))
    if pid is None:
        raise Failed(f"no worker is running in {basedir}")
    note(f"furl-worker stopped (pid {pid})")


@cli.command()
@click.argument("basedir", default=".", type=click.Path(file_okay=False))
def status(basedir: str) -> None:
    """Say whether a worker runs in BASEDIR and is attached (exit 3 if it
    does not run, 4 if it runs but is not attached now)."""
    paths = wconfig.WorkerPaths(os.path.abspath(basedir))
    pid = daemon.PidFile(paths.pidfile).running_pid()
    if pid is None:
        click.echo("not running")
        sys.exit(3)
    try:
        with open(paths.state, encoding="utf-8") as f:
            st = json.load(f)
    except (OSError, ValueError):
        st = {}
    since = (datetime.datetime.fromtimestamp(st["since"]).strftime("%Y-%m-%d %H:%M:%S")
             if isinstance(st.get("since"), (int, float)) else "?")
    if st.get("pid") == pid and st.get("state") == "attached":
        click.echo(f"running (pid {pid}): attached to the master at {st.get('master')} "
                   f"since {since}")
        return
    why = st.get("last_error") if st.get("pid") == pid else None
    click.echo(f"running (pid {pid}): not attached" + (f" since {since}: {why}" if why else ""))
    sys.exit(4)


def main() -> None:
    run_main(cli, "furl-worker")


if __name__ == "__main__":
    main()
