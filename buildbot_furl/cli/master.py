"""``furl-master``: create a master, manage its workers' FURLs, run it.

This module only declares the command line; :mod:`.master_cmds` does the work.
"""

from __future__ import annotations

import click

from buildbot_furl.cli import master_cmds as cmds
from buildbot_furl.cli.common import Failed, dir_option, guarded, run_main
from buildbot_furl.cli.exits import Exit, epilog
from buildbot_furl.cli.master_cmds import MasterCli

ENV_DIR = "FURL_MASTER_DIR"
USUAL = (Exit.OK, Exit.ERROR, Exit.USAGE)


def _basedir(fn: click.decorators.FC) -> click.decorators.FC:
    return dir_option(MasterCli, "-d", "--basedir",
                      help=f"Master directory (default: ${ENV_DIR}, else the current "
                           "directory).")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=epilog(*USUAL))
@dir_option(MasterCli, "-d", "--basedir", envvar=ENV_DIR,
            help=f"Master directory (default: ${ENV_DIR}, else the current directory).")
@click.version_option(package_name="buildbot_furl", prog_name="furl-master")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Publish one FURL per worker and drive the workers that attach.

    \b
    Set up:   furl-master create-master -d DIR --location tcp:HOST:PORT
              furl-master create-worker -d DIR NAME -o NAME.furl
    Run:      furl-master start -d DIR
    Use:      furl-master run -d DIR NAME -- make test

    All FURLs live in DIR/workers.furls (one 'NAME FURL' line each); a
    running master applies hand edits within about a second (at once on
    SIGHUP).  Shell completion: eval "$(_FURL_MASTER_COMPLETE=bash_source
    furl-master)" (zsh_source, fish_source for other shells).
    """
    ctx.ensure_object(MasterCli)


@cli.command("create-master", epilog=epilog(*USUAL))
@_basedir
@click.option("--location", required=True, metavar="tcp:HOST:PORT[,...]",
              help="What workers dial; written into every FURL.")
@click.option("--port", default=None, metavar="ENDPOINT",
              help="What the master listens on (default: tcp:PORT from --location).")
@click.option("--session-grace", type=click.FloatRange(0, 86400), default=None,
              metavar="SECONDS",
              help="How long a worker's session and its running commands outlive a lost "
                   "connection (default 60; 0: they end with it).")
@click.pass_obj
@guarded()
def create_master(cfg: MasterCli, location: str, port: str | None,
                  session_grace: float | None) -> None:
    """Create a master directory: config, TLS key, empty workers.furls.

    In a Buildbot master's directory this adds what its FurlWorker plugin
    needs, and says what to put in master.cfg.
    """
    cmds.create_master(cfg, location, port, session_grace)


@cli.command("create-worker", epilog=epilog(*USUAL))
@_basedir
@click.argument("name")
@click.option("--comment", default="", help="A note kept after the FURL in workers.furls.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the FURL to this new file (mode 0600) instead of stdout.")
@click.pass_obj
@guarded()
def create_worker(cfg: MasterCli, name: str, comment: str, output: str | None) -> None:
    """Add worker NAME and print its FURL (only the FURL, on stdout), or
    write it to a new 0600 file with -o."""
    cmds.create_worker(cfg, name, comment, output)


@cli.command("revoke-worker", epilog=epilog(*USUAL))
@_basedir
@click.argument("name")
@click.pass_obj
@guarded()
def revoke_worker(cfg: MasterCli, name: str) -> None:
    """Remove worker NAME: its FURL stops working and a live connection drops."""
    cmds.revoke_worker(cfg, name)


@cli.command("rotate-worker", epilog=epilog(*USUAL))
@_basedir
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the new FURL to this new file (mode 0600) instead of stdout.")
@click.pass_obj
@guarded()
def rotate_worker(cfg: MasterCli, name: str, output: str | None) -> None:
    """Give worker NAME a new FURL (printed, or written with -o); the old one
    stops working at once.  On the worker: furl-worker set-furl DIR --furl-file F."""
    cmds.rotate_worker(cfg, name, output)


@cli.command(epilog=epilog(*USUAL))
@_basedir
@click.argument("name")
@click.option("--ttl", default="24h", show_default=True, metavar="DURATION",
              help="How long the code is good for (like 90m, 24h, 7d; at most 30 days).")
@click.option("--comment", default="", help="The new worker's comment in workers.furls.")
@click.option("--cancel", is_flag=True, help="Cancel NAME's pending invite instead.")
@click.pass_obj
@guarded()
def invite(cfg: MasterCli, name: str, ttl: str, comment: str, cancel: bool) -> None:
    """Invite worker NAME with a one-time code instead of a pasted FURL.

    Asks the running master (standalone or Buildbot) for an invite and
    returns at once: the code (like 7-guitarist-revenge) on stdout, how long
    it is good for on stderr.  The master holds the invite open until the
    worker's admin runs 'furl-worker create-worker DIR --code CODE' (for a
    listed worker: 'furl-worker set-furl DIR --code CODE', a rotation); only
    then is the FURL minted, and it travels encrypted over a magic-wormhole
    (SPAKE2: a code is good once, a wrong guess burns the invite).  The
    mailbox is furl-master.conf's mailbox_url, or the master's own
    (mailbox_listen), or the public one.  list-workers shows pending invites.
    On a Buildbot master, name a new worker in master.cfg and reconfig once
    it has claimed its invite (load_workers() reads workers.furls).
    """
    cmds.invite(cfg, name, ttl, comment, cancel)


@cli.command("list-workers", epilog=epilog(*USUAL, Exit.UNAVAILABLE))
@_basedir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--show-furls", is_flag=True, help="Include the FURLs (secrets!).")
@click.option("--cluster", is_flag=True,
              help="Say which master of the cluster holds each worker (from the cluster "
                   "directory's heartbeat records; never a FURL).")
@click.pass_obj
@guarded()
def list_workers(cfg: MasterCli, as_json: bool, show_furls: bool, cluster: bool) -> None:
    """List workers; with a running master, also who is connected.  Problems
    with the master's files are reported as warnings (as by status).

    With --cluster (a multi-master cluster sharing workers.furls): which
    master holds each worker, or that none does, read from the records every
    master writes into the cluster directory (cluster_dir in furl-master.conf;
    default: furl-cluster/ beside the file a linked workers.furls points to).
    Files only: it works whether this master runs or not.  A master without a
    heartbeat for 3 of its intervals (10 s each by default) is said to be
    gone, and its workers are not counted as held.
    """
    if cluster:
        if show_furls:
            raise Failed("--cluster shows no FURLs: leave out --show-furls", Exit.USAGE)
        cmds.list_cluster(cfg, as_json)
        return
    cmds.list_workers(cfg, as_json, show_furls)


@cli.command(epilog=epilog(*USUAL))
@_basedir
@click.option("--nodaemon", is_flag=True, help="Stay in the foreground, log to stderr too.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.pass_obj
@guarded()
def start(cfg: MasterCli, nodaemon: bool, ready_fd: int | None) -> None:
    """Start the master (in the background unless --nodaemon).

    The running master re-reads workers.furls every reload_interval seconds
    (furl-master.conf, default 1) and at once on SIGHUP, which also reopens
    master.log (rotated by size: log_size, log_keep).
    """
    cmds.start(cfg, nodaemon, ready_fd)


@cli.command(epilog=epilog(Exit.OK, Exit.ERROR, Exit.NOT_RUNNING, Exit.USAGE))
@_basedir
@click.pass_obj
@guarded()
def stop(cfg: MasterCli) -> None:
    """Stop the running master."""
    cmds.stop(cfg)


@cli.command(epilog=epilog(*USUAL))
@_basedir
@click.pass_obj
@guarded()
def restart(cfg: MasterCli) -> None:
    """Stop the master if it runs, then start it again."""
    cmds.restart(cfg)


@cli.command(epilog=epilog(Exit.OK, Exit.ERROR, Exit.UNAVAILABLE, Exit.NOT_RUNNING,
                           Exit.USAGE))
@_basedir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@guarded(Exit.UNAVAILABLE)
def status(cfg: MasterCli, as_json: bool) -> None:
    """Say whether the master runs, how many workers are connected, and what
    is wrong with its files (as list-workers does)."""
    cmds.status(cfg, as_json)


@cli.command(context_settings={"allow_interspersed_args": True},
             epilog=epilog(Exit.UNAVAILABLE, Exit.NOT_EXECUTABLE, Exit.NOT_FOUND,
                           Exit.INTERRUPTED, Exit.TIMEOUT, Exit.BROKEN_PIPE, Exit.USAGE,
                           passthrough=True))
@_basedir
@click.option("--workdir", default=None,
              help="Directory to run in, relative to the worker's directory (default: it).")
@click.option("--env", "envs", multiple=True, metavar="KEY=VALUE",
              help="Set an environment variable for the command (repeatable).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Kill the command after this many seconds.")
@click.option("-v", "--verbose", is_flag=True, help="Also show the worker's header lines.")
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@guarded(Exit.UNAVAILABLE)
def run(cfg: MasterCli, workdir: str | None, envs: tuple[str, ...], timeout: float | None,
        verbose: bool, name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND on worker NAME, streaming its output; exit with its exit code.

    \b
    Example:  furl-master run w1 -- make -j4 test
    Put '--' before COMMAND: what follows it is never read as an option.
    Ctrl-C interrupts the remote command.
    """
    cmds.run(cfg, workdir, envs, timeout, verbose, name, command)


@cli.command(epilog=epilog(Exit.OK, Exit.ERROR, Exit.UNAVAILABLE, Exit.INTERRUPTED, Exit.USAGE))
@_basedir
@click.argument("name")
@click.argument("local", type=click.Path(exists=True))
@click.argument("remote")
@click.pass_obj
@guarded(Exit.UNAVAILABLE)
def put(cfg: MasterCli, name: str, local: str, remote: str) -> None:
    """Copy file or directory LOCAL to REMOTE on worker NAME.

    REMOTE is relative to the worker's directory; the worker refuses a path
    that leads outside it (through '..' or a symlink) and its own files.
    REMOTE is the copy's own path: a file there is replaced, a directory
    there is refused (put never copies into a directory; get neither).
    The copy is checked by sha256 on the worker and only then renamed to
    REMOTE, so a failed copy never leaves a partial file there.
    """
    cmds.put(cfg, name, local, remote)


@cli.command(epilog=epilog(Exit.OK, Exit.ERROR, Exit.UNAVAILABLE, Exit.INTERRUPTED, Exit.USAGE))
@_basedir
@click.argument("name")
@click.argument("remote")
@click.argument("local", type=click.Path())
@click.pass_obj
@guarded(Exit.UNAVAILABLE)
def get(cfg: MasterCli, name: str, remote: str, local: str) -> None:
    """Copy file or directory REMOTE from worker NAME to LOCAL.

    REMOTE is relative to the worker's directory and may not lead outside
    it.  LOCAL is the copy's own path: a file there is replaced, a
    directory there is refused (as put does with REMOTE).  The copy is
    checked by sha256 against what the worker sent and only then renamed to
    LOCAL, so a failed copy never leaves a partial file there.
    """
    cmds.get(cfg, name, remote, local)


@cli.command(epilog=epilog(Exit.OK, Exit.ERROR, Exit.UNAVAILABLE, Exit.USAGE))
@_basedir
@click.option("--wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Wait up to SECONDS for the worker to stop (exit 2 if it has not).")
@click.argument("name")
@click.pass_obj
@guarded(Exit.UNAVAILABLE)
def drain(cfg: MasterCli, name: str, wait: float | None) -> None:
    """Stop worker NAME gracefully: start no new command on it, let the
    running ones finish, then tell it to stop (its process exits 0 and does
    not reconnect; start it again with furl-worker start).

    Meanwhile run, put and get on it are refused with one line, and
    list-workers shows it as draining.  The worker's own admin can ask the
    same with 'furl-worker stop --graceful'.  On a Buildbot master use
    Buildbot's graceful shutdown of the worker instead.
    """
    cmds.drain(cfg, name, wait)


def main() -> None:
    run_main(cli, "furl-master")


if __name__ == "__main__":
    main()
