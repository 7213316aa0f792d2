"""``furl-worker``: attach a build worker to its master with one FURL.

This module only declares the command line; :mod:`.worker_cmds` does the work.
"""

from __future__ import annotations

import click

from buildbot_furl import logs
from buildbot_furl.cli import worker_cmds as cmds
from buildbot_furl.cli.common import guarded, run_main
from buildbot_furl.cli.exits import Exit, epilog
from buildbot_furl.tubs import DEFAULT_DISCONNECT_TIMEOUT, DEFAULT_KEEPALIVE

USUAL = (Exit.OK, Exit.ERROR, Exit.USAGE)
FURL_HELP = "The FURL itself (shown by 'ps' for a moment: prefer --furl-file)."
FURL_FILE_HELP = "Read the FURL from this file (mode 0600)."


def _basedir(fn: click.decorators.FC) -> click.decorators.FC:
    return click.argument("basedir", default=".", type=click.Path(file_okay=False))(fn)


def _furl_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--furl-file", default=None, type=click.Path(dir_okay=False),
                      help=FURL_FILE_HELP)(fn)
    return click.option("--furl", default=None, help=FURL_HELP)(fn)


CODE_HELP = ("The one-time invite code 'furl-master invite' printed (like "
             "7-guitarist-revenge): the FURL comes through an encrypted magic-wormhole, "
             "minted for this worker; nothing secret is printed.  '-' reads it from "
             "stdin (asked for on a terminal): a code given here is visible to this "
             "machine's other users ('ps') until the claim ends.")
MAILBOX_HELP = ("The magic-wormhole mailbox the master's invite uses, as 'furl-master "
                "invite' printed it (default: the public ws://relay.magic-wormhole.io:4000/v1).")


def _code_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--claim-wait", default=60.0, show_default=True,
                      type=click.FloatRange(min=1), metavar="SECONDS",
                      help="With --code: how long to wait for the master's answer.")(fn)
    fn = click.option("--mailbox", default=None, metavar="URL", help=MAILBOX_HELP)(fn)
    return click.option("--code", default=None, metavar="CODE", help=CODE_HELP)(fn)


UMASK_HELP = ("Mode mask of the files builds create, in octal (022: readable by all, "
              "as Buildbot admins usually want); buildbot.tac's umask.  Default: the "
              "umask furl-worker is started with.")
NUMCPUS_HELP = ("CPUs reported to the master (builds see it as %(worker:numcpus)s); "
                "buildbot.tac's numcpus.  Default: detected.")
MAXRETRIES_HELP = ("Give up after N failed connection attempts in a row (the daemon exits "
                   "2), for ephemeral or cloud workers; buildbot.tac's maxRetries.  "
                   "0 (default): retry forever.")
METRICS_HELP = ("Serve Prometheus metrics (/metrics) and health checks (/healthz; /readyz: "
                "200 while attached to the master, else 503) on this Twisted endpoint, e.g. "
                "tcp:9102:interface=127.0.0.1; furl-worker.conf's metrics_listen.  Off by "
                "default.  It shows the link's state, reconnects, command counts by Buildbot "
                "command name, byte counts and policy refusals by rule; no FURL, secret, path "
                "or command line.  Anyone who reaches it reads them: keep it on loopback "
                "unless a scraper elsewhere needs it.")


def _settings_options(fn: click.decorators.FC) -> click.decorators.FC:
    """buildbot.tac's umask, numcpus, maxretries, and --metrics (see worker/settings.py)."""
    for opt in reversed([
        click.option("--umask", default=None, metavar="OCTAL", help=UMASK_HELP),
        click.option("--numcpus", default=None, metavar="N", help=NUMCPUS_HELP),
        click.option("--maxretries", default=None, metavar="N", help=MAXRETRIES_HELP),
        click.option("--metrics", "metrics_listen", default=None, metavar="ENDPOINT",
                     help=METRICS_HELP),
    ]):
        fn = opt(fn)
    return fn


def _run_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = _settings_options(fn)
    for opt in reversed([
        click.option("--nodaemon", is_flag=True,
                     help="Stay in the foreground, log to stderr too (for systemd)."),
        click.option("--wait", default=15.0, show_default=True, type=click.FloatRange(min=0),
                     help="Seconds to wait for the first attach before giving up; 0 starts "
                          "without waiting and keeps trying forever (for boot scripts)."),
        click.option("--keepalive", default=DEFAULT_KEEPALIVE, show_default=True,
                     type=click.IntRange(min=0),
                     help="Ping the master after this many idle seconds."),
        click.option("--disconnect-timeout", default=DEFAULT_DISCONNECT_TIMEOUT,
                     show_default=True, type=click.IntRange(min=0),
                     help="Drop and redial after this many seconds without traffic."),
        click.option("--log-size", default="10M", show_default=True, metavar="SIZE",
                     help="Rotate worker.log at this size (k, M, G; 0: never)."),
        click.option("--log-keep", default=logs.DEFAULT_KEEP, show_default=True,
                     metavar="1-1000", help="Rotated logs to keep."),
        click.option("--ready-fd", type=int, default=None, hidden=True),
        click.option("--furl-fd", type=int, default=None, hidden=True),
    ]):
        fn = opt(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=epilog(*USUAL))
@click.version_option(package_name="buildbot_furl", prog_name="furl-worker")
def cli() -> None:
    """Run a build worker that attaches to a master through one FURL.

    \b
    Once:     furl-worker create-worker DIR --code CODE [--mailbox URL]
              (or --furl-file FILE)
              furl-worker start DIR
    New FURL: furl-worker set-furl DIR --code CODE (or --furl-file FILE)

    The connection is encrypted, pinned to the master's key, and
    re-established by itself (backoff up to 60 s) when it drops.  Shell
    completion: eval "$(_FURL_WORKER_COMPLETE=bash_source furl-worker)".
    """


@cli.command("create-worker", epilog=epilog(*USUAL))
@click.argument("basedir", type=click.Path(file_okay=False))
@_furl_options
@click.option("--admin", default=None, help="Who runs this worker (info/admin).")
@click.option("--host", default=None, help="A description of this host (info/host).")
@click.option("--access-uri", default=None, metavar="URI",
              help="How to reach this host, e.g. ssh://build1.example.org (info/access_uri; "
                   "Buildbot's worker page links to it).")
@_settings_options
@click.option("--policy", "policy_file", default=None, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="Install FILE as BASEDIR/furl-worker.policy: what the worker allows "
                   "its master (see 'furl-worker policy --help').")
@_code_options
@guarded()
def create_worker(basedir: str, furl: str | None, furl_file: str | None,
                  admin: str | None, host: str | None, access_uri: str | None,
                  policy_file: str | None, code: str | None, mailbox: str | None,
                  claim_wait: float, **settings: str | None) -> None:
    """Create worker directory BASEDIR holding the FURL (BASEDIR/master.furl, 0600).

    The FURL comes from an invite (--code, as 'furl-master invite' printed
    it; --mailbox if the master's admin named one), or from --furl-file,
    --furl or $FURL_WORKER_FURL.  --umask, --numcpus, --maxretries and
    --metrics are stored in BASEDIR/furl-worker.conf, read by every start
    (change them with 'furl-worker settings').
    """
    cmds.create_worker(basedir, furl, furl_file, admin, host, policy_file, access_uri,
                       settings, code, mailbox, claim_wait)


@cli.command("set-furl", epilog=epilog(Exit.OK, Exit.ERROR, Exit.NOT_ATTACHED, Exit.USAGE))
@_basedir
@_furl_options
@_code_options
@click.option("--wait", default=15.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for a running worker to attach with the new FURL.")
@guarded()
def set_furl(basedir: str, furl: str | None, furl_file: str | None,
             code: str | None, mailbox: str | None, claim_wait: float, wait: float) -> None:
    """Store a new FURL in BASEDIR/master.furl (from an invite: --code; or
    after the master's admin ran rotate-worker: --furl-file), and make a
    running worker switch to it at once.

    Exits 0 once the running worker is attached with the new FURL (or at
    once if no worker runs), 4 if it is not attached within --wait seconds.
    """
    cmds.set_furl(basedir, furl, furl_file, wait, code, mailbox, claim_wait)


@cli.command(epilog=epilog(*USUAL))
@_basedir
@_furl_options
@_run_options
@guarded()
def start(basedir: str, **options: object) -> None:
    """Start the worker in BASEDIR (default: the current directory).

    The FURL is read from BASEDIR/master.furl (written by create-worker or
    set-furl) unless --furl-file, --furl or $FURL_WORKER_FURL gives one.
    Whichever way it comes, the running worker keeps it in memory only: no
    command it runs sees it in its environment.  --umask, --numcpus,
    --maxretries and --metrics override BASEDIR/furl-worker.conf for this
    run.  SIGHUP reopens worker.log; SIGUSR1 switches to the FURL in
    BASEDIR/master.furl.  No metrics endpoint unless --metrics or
    metrics_listen asks for one; one that cannot listen fails the start.
    """
    cmds.start(basedir, **options)  # type: ignore[arg-type]


@cli.command(epilog=epilog(*USUAL))
@_basedir
@_settings_options
@click.option("--unset", multiple=True,
              type=click.Choice(["umask", "numcpus", "maxretries", "metrics_listen"]),
              help="Back to the default (repeatable).")
@guarded()
def settings(basedir: str, unset: tuple[str, ...], **given: str | None) -> None:
    """Show or change the settings in BASEDIR/furl-worker.conf (what
    buildbot.tac's umask, numcpus and maxRetries were, and the metrics
    endpoint); a running worker uses them from its next start
    (furl-worker restart BASEDIR).

    \b
    BASEDIR/furl-worker.conf (optional; edit it by hand if you like):
      [worker]
      umask = 022
      numcpus = 8
      maxretries = 10
      metrics_listen = tcp:9102:interface=127.0.0.1
    """
    cmds.settings(basedir, given, unset)


@cli.command(epilog=epilog(Exit.OK, Exit.ERROR, Exit.NOT_RUNNING, Exit.USAGE))
@_basedir
@click.option("--graceful", is_flag=True,
              help="Let the running commands or builds finish first: the master gives the "
                   "worker no new work and tells it to stop once they end (buildbot-worker's "
                   "allow_shutdown; the same as SIGUSR2 to the worker).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --graceful: stop the worker normally (interrupting what still runs) "
                   "if it has not stopped after SECONDS, or at once if its master cannot "
                   "stop it gracefully. Default: wait as long as it takes.")
@guarded()
def stop(basedir: str, graceful: bool, timeout: float | None) -> None:
    """Stop the worker running in BASEDIR.

    Without --graceful it stops now: running commands are interrupted (a
    Buildbot build on it ends as RETRY or EXCEPTION).  With --graceful the
    worker exits 0 once drained and does not reconnect; Ctrl-C stops waiting
    but leaves the worker draining.
    """
    if timeout is not None and not graceful:
        raise click.UsageError("--timeout goes with --graceful")
    cmds.stop(basedir, graceful, timeout)


@cli.command(epilog=epilog(*USUAL))
@_basedir
@_furl_options
@_run_options
@guarded()
def restart(basedir: str, **options: object) -> None:
    """Stop the worker in BASEDIR if it runs, then start it (same options as start)."""
    cmds.restart(basedir, **options)  # type: ignore[arg-type]


@cli.command(epilog=epilog(Exit.OK, Exit.ERROR, Exit.NOT_RUNNING, Exit.NOT_ATTACHED,
                           Exit.USAGE))
@_basedir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guarded()
def status(basedir: str, as_json: bool) -> None:
    """Say whether a worker runs in BASEDIR and is attached to its master."""
    cmds.status(basedir, as_json)


@cli.command(epilog=epilog(*USUAL))
@_basedir
@click.option("--file", "draft", default=None, metavar="FILE", type=click.Path(dir_okay=False),
              help="Check FILE (a draft) instead of BASEDIR/furl-worker.policy.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guarded()
def policy(basedir: str, draft: str | None, as_json: bool) -> None:
    """Show what the worker in BASEDIR allows its master, or what is wrong
    with its policy file (then the worker refuses every request).

    \b
    BASEDIR/furl-worker.policy (optional; mode 0600, read again on change):
      [commands]     allow = make, git, /usr/bin/python3   (or any / none)
      [paths]        allow = ., /srv/cache     (default: the worker's dir)
      [limits]       max_upload = 100M, max_download = 1G, max_commands = 2
      [environment]  allow = CC, CFLAGS, LC_*               (or any / none)

    A refused request never starts; the master is told why (furl-master
    run: one line, exit 2; Buildbot: the step fails with the reason).
    """
    cmds.show_policy(basedir, draft, as_json)


def main() -> None:
    run_main(cli, "furl-worker")


if __name__ == "__main__":
    main()
