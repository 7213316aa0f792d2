"""What each ``furl-worker`` command does, given the parsed command line."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from buildbot_furl import daemon, logs
from buildbot_furl.cli.common import Failed, note
from buildbot_furl.cli.exits import Exit
from buildbot_furl.errors import ConfigError
from buildbot_furl.layout import WorkerPaths
from buildbot_furl.privatefiles import write_private
from buildbot_furl.sizes import show_bytes
from buildbot_furl.worker import config as wconfig
from buildbot_furl.worker import launch
from buildbot_furl.worker import policy as wpolicy
from buildbot_furl.worker import settings as wsettings
from buildbot_furl.worker import statefile
from buildbot_furl.worker.statefile import Drain, StateFileError, Switch, SwitchResult, WorkerStatus


def q(path: str) -> str:
    """A path as it can be pasted into a shell."""
    return shlex.quote(path)


def _paths(basedir: str, must_exist: bool = True) -> WorkerPaths:
    paths = WorkerPaths(os.path.abspath(basedir))
    if must_exist and not os.path.isdir(paths.basedir):
        raise Failed(f"{basedir} does not exist (create it with: furl-worker create-worker "
                     f"{q(basedir)} --furl-file FILE)")
    return paths


def _pidfile(paths: WorkerPaths) -> daemon.PidFile:
    return daemon.PidFile(paths.pidfile, "worker")


def _state(paths: WorkerPaths, pid: int) -> WorkerStatus | None:
    """What the running worker ``pid`` last wrote in its state file; None
    without one, or a file that is another process's or damaged (the polls
    that use it wait for the worker's next write)."""
    try:
        st = statefile.read(paths.state)
    except StateFileError:
        return None
    return st if st is not None and st.pid == pid else None


def _policy_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read((1 << 20) + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > 1 << 20:
        raise ConfigError(f"{path} is larger than a policy file can be (1 MiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None


def _given_settings(given: dict[str, Any]) -> wsettings.Settings:
    """The --umask, --numcpus, --maxretries, --metrics given (popped from ``given``),
    checked."""
    values = {}
    for key in wsettings.KEYS:
        raw = given.pop(key, None)
        if raw is None:
            continue
        try:
            values[key] = wsettings.PARSERS[key](raw)
        except ConfigError as e:
            # exit 1, as the same value in furl-worker.conf does: same mistake, same code
            raise Failed(f"{wsettings.option(key)}: {e}") from None
    return wsettings.Settings(**values)


def _show_settings(st: wsettings.Settings) -> list[str]:
    return [f"  umask:       {f'{st.umask:03o}' if st.umask is not None else 'inherited'}",
            f"  numcpus:     {st.numcpus if st.numcpus is not None else 'detected'}",
            f"  maxretries:  {st.maxretries or 'none (retry forever)'}",
            f"  metrics:     {st.metrics_listen or 'off'}"]


def create_worker(basedir: str, furl: str | None, furl_file: str | None, admin: str | None,
                  host: str | None, policy_file: str | None = None,
                  access_uri: str | None = None,
                  settings: dict[str, Any] | None = None,
                  code: str | None = None, mailbox: str | None = None,
                  claim_wait: float = 60.0) -> None:
    stored = _given_settings(dict(settings or {}))  # checked before anything is created
    text = None
    if policy_file is not None:
        text = _policy_text(policy_file)
        wpolicy.parse_policy(text, os.path.abspath(basedir), policy_file)
    if code is not None:
        # everything that can be checked is, before the one-time code is used
        _code_alone(furl, furl_file)
        existing = WorkerPaths(os.path.abspath(basedir)).furl
        if os.path.exists(existing):
            raise Failed(f"{existing} already exists: {basedir} is already a worker (for a "
                         f"new FURL: furl-worker set-furl {q(basedir)} --code CODE)")
        made: list[WorkerPaths] = []
        name = _claim(code, mailbox, admin, host, lambda f, n: made.append(
            wconfig.create(basedir, f, admin, host, access_uri, stored)), claim_wait)
        paths = made[0]
        note(f"worker {name!r}: received its FURL through the invite and stored it in "
             f"{paths.furl} (mode 0600)")
    else:
        source = wconfig.resolve_furl(None, furl, furl_file)
        paths = wconfig.create(basedir, source.furl, admin, host, access_uri, stored)
    if text is not None:
        write_private(paths.policy, text)
        note(f"installed the policy from {policy_file} as {paths.policy} (mode 0600)")
    if stored != wsettings.Settings():
        note(f"stored in {paths.settings}:")
        for line in _show_settings(stored):
            note(line)
    note(f"created worker in {paths.basedir}; start it with: furl-worker start {q(basedir)}")


def settings(basedir: str, given: dict[str, Any], unset: tuple[str, ...]) -> None:
    paths = _paths(basedir)
    change = _given_settings(dict(given))
    clash = [k for k in unset if getattr(change, k) is not None]
    if clash:
        raise Failed(f"{wsettings.option(clash[0])} and --unset {clash[0]}: give one",
                     Exit.USAGE)
    old = wsettings.read_settings(paths.settings)
    if change == wsettings.Settings() and not unset:
        click.echo(f"{paths.settings}:" if os.path.exists(paths.settings)
                   else f"no {paths.settings}: the defaults")
        for line in _show_settings(old):
            click.echo(line)
        return
    new = dataclasses.replace(change.over(old), **{k: None for k in unset})
    wsettings.write_settings(paths.settings, new)
    note(f"stored in {paths.settings}:")
    for line in _show_settings(new):
        note(line)
    if _pidfile(paths).running_pid() is not None:
        note(f"the running worker uses them from its next start: furl-worker restart {q(basedir)}")


def _policy_lines(p: wpolicy.Policy) -> list[str]:
    summary = p.summary()

    def shown(value: Any, unit: bool = False) -> str:
        if value is None or value == "any":
            return "any"
        if isinstance(value, list):
            return ", ".join(value)
        return show_bytes(value) if unit else str(value)

    return [f"  programs:      {shown(summary['programs'])}",
            f"  paths:         {shown(summary['paths'])}",
            f"  max upload:    {shown(summary['max_upload'], True)}",
            f"  max download:  {shown(summary['max_download'], True)}",
            f"  max commands:  {shown(summary['max_commands'])}",
            f"  environment:   {shown(summary['environment'])}"]


def show_policy(basedir: str, draft: str | None, as_json: bool) -> None:
    paths = _paths(basedir, must_exist=draft is None)
    if draft is not None:
        where = draft
        p = wpolicy.parse_policy(_policy_text(draft), paths.basedir, draft)
    elif not os.path.exists(paths.policy):
        if as_json:
            click.echo(json.dumps({"policy": None}, indent=2))
        else:
            click.echo(f"no policy file ({paths.policy}): the worker does what its master "
                       "asks")
        return
    else:
        where = paths.policy
        p = wpolicy.read_policy(paths.policy, paths.basedir)
    if as_json:
        click.echo(json.dumps({"policy": where, **p.summary()}, indent=2))
        return
    click.echo(f"{where}: valid" if draft else f"policy in force: {where}")
    for line in _policy_lines(p):
        click.echo(line)


def _code_alone(furl: str | None, furl_file: str | None) -> None:
    if furl or furl_file:
        raise Failed("give --code, or --furl/--furl-file, not both", Exit.USAGE)
    os.environ.pop(wconfig.ENV_FURL, None)  # never inherited by what the worker runs


def _claim(code: str, mailbox: str | None, admin: str | None, host: str | None,
           store: Callable[[Any, str], None], wait: float = 60.0) -> str:
    """Claim an invite (a one-time code); ``store(furl, name)`` keeps the FURL."""
    import getpass
    import socket

    from buildbot_furl import __version__
    from buildbot_furl.oneshot import run_once
    from buildbot_furl.protocol.messages import PUBLIC_MAILBOX, InviteClaim, check_mailbox_url
    from buildbot_furl.worker import join

    if code == "-":  # kept off the command line, which other users see (ps)
        if sys.stdin.isatty():
            code = click.prompt("invite code", hide_input=True, err=True)
        else:
            code = sys.stdin.readline()
    code = join.check_code(code)
    url = check_mailbox_url(mailbox) if mailbox else PUBLIC_MAILBOX
    user = getpass.getuser()
    me = InviteClaim(host or socket.gethostname(),
                     admin or f"{user} <{user}@{socket.gethostname()}>", __version__)
    note(f"claiming the invite on the mailbox {url} ...")
    try:
        return run_once(lambda reactor: join.claim(reactor, code, url, me, store, wait))
    except join.JoinError as e:
        raise Failed(str(e)) from None


def set_furl(basedir: str, furl: str | None, furl_file: str | None, wait: float,
             code: str | None = None, mailbox: str | None = None,
             claim_wait: float = 60.0) -> None:
    """Store a new FURL; a running worker first tries it, and keeps the
    previous one (in use and in master.furl) unless it attaches."""
    paths = _paths(basedir)
    if code is not None:
        _code_alone(furl, furl_file)
        got: list[Any] = []

        def keep(new: Any, name: str) -> None:
            # durable before the master hears it is stored: where the worker
            # (running or not) takes it from
            if _pidfile(paths).running_pid() is None:
                write_private(paths.furl, f"{new}\n")
            else:
                write_private(paths.furl_new, f"{new}\n")
            got.append(new)

        name = _claim(code, mailbox, None, None, keep, claim_wait)
        note(f"worker {name!r}: received its new FURL through the invite")
        new = got[0]
    else:
        if not (furl or furl_file or os.environ.get(wconfig.ENV_FURL)):
            raise Failed("give the new FURL with --code CODE, --furl-file FILE (or --furl, "
                         f"or ${wconfig.ENV_FURL})", Exit.USAGE)
        new = wconfig.resolve_furl(None, furl, furl_file).furl
    where = ",".join(new.hints)
    pid = _pidfile(paths).running_pid()
    if pid is None:
        write_private(paths.furl, f"{new}\n")
        note(f"stored the new FURL in {paths.furl} (mode 0600); no worker runs in "
             f"{paths.basedir}: it will use it when started (furl-worker start {q(basedir)})")
        return
    want = wconfig.furl_id(new)
    st = _state(paths, pid)
    if st is not None and st.furl_id == want and st.attached:
        note(f"the worker (pid {pid}) already uses this FURL and is attached to the master "
             f"at {where}")
        return
    write_private(paths.furl_new, f"{new}\n")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + wait
    switch: Switch | None = None
    while time.monotonic() < deadline:
        st = _state(paths, pid)
        switch = st.switch if st is not None else None
        if switch is not None and switch.furl_id == want and switch.result.final:
            break
        time.sleep(0.1)
    result = switch.result if switch is not None and switch.furl_id == want else None
    last_error = (st.last_error if st is not None else None) or "connecting"
    if result is SwitchResult.ATTACHED:
        note(f"the worker (pid {pid}) switched to the new FURL and is attached to the "
             f"master at {where}; stored in {paths.furl}")
        return
    if result is SwitchResult.SAME:  # the FURL in use, not attached now: nothing changed
        raise Failed(f"the worker (pid {pid}) already uses this FURL, but is not attached: "
                     f"{last_error} (see {paths.log})", Exit.NOT_ATTACHED)
    now = (f"attached to the master at {st.master}" if st is not None and st.attached
           else f"not attached: {last_error}")
    if result is SwitchResult.FAILED:
        assert switch is not None
        raise Failed(f"the worker (pid {pid}) could not use the new FURL: "
                     f"{switch.error}; it keeps the previous one ({now}), and "
                     f"{paths.furl} is unchanged", Exit.NOT_ATTACHED)
    raise Failed(f"the worker (pid {pid}) is not attached with the new FURL after {wait:g} s "
                 f"(still trying; unless it attaches within {_switch_limit()} it goes back to the "
                 f"previous one, and {paths.furl} stays unchanged; see {paths.log})",
                 Exit.NOT_ATTACHED)


def _switch_limit() -> str:
    from buildbot_furl.worker.service import PROBE_TIMEOUT, SWITCH_TIMEOUT

    return f"{PROBE_TIMEOUT + SWITCH_TIMEOUT:g} s of the request"


def _option(name: str, check: Callable[[Any], int], value: Any) -> int:
    try:
        return check(value)
    except ConfigError as e:
        raise Failed(f"{name}: {e}") from None


def _options(paths: WorkerPaths, options: dict[str, Any]
             ) -> tuple[wconfig.WorkerOptions, dict[str, Any]]:
    """(WorkerOptions, the FURL and pipe options) from start's keywords and
    BASEDIR/furl-worker.conf (which the command line overrides)."""
    # a bad value exits 1, as the same value in furl-master.conf does
    size = _option("--log-size", logs.parse_size, options.pop("log_size"))
    keep = _option("--log-keep", logs.check_keep, options.pop("log_keep"))
    given = _given_settings(options)
    opts = wconfig.WorkerOptions(options.pop("wait"), options.pop("keepalive"),
                                 options.pop("disconnect_timeout"), size,
                                 keep,
                                 given.over(wsettings.read_settings(paths.settings)))
    return opts, options


def start(basedir: str, **kw: Any) -> None:
    paths = _paths(basedir)
    options, rest = _options(paths, kw)
    source = wconfig.resolve_furl(paths, rest["furl"], rest["furl_file"], rest["furl_fd"])
    _mention_stored_furl(paths, source)
    if rest["nodaemon"] or rest["ready_fd"] is not None:
        sys.exit(launch.run_foreground(paths, source, options, rest["ready_fd"]))
    message = launch.start_background(paths, source, options)
    note(f"furl-worker started ({message}); log: {paths.log}")


def _mention_stored_furl(paths: WorkerPaths, source: wconfig.FurlSource) -> None:
    """A FURL given to start that is not the stored one: say how to keep it
    (else the next start without it uses the old one)."""
    if source.origin in (paths.furl, "its parent process") or not os.path.exists(paths.furl):
        return
    try:
        stored = wconfig.read_furl_file(paths.furl)
    except ConfigError:
        return
    if str(stored) != str(source.furl):
        note(f"note: {paths.furl} holds another FURL; this start uses the one from "
             f"{source.origin}. To keep it: furl-worker set-furl {q(paths.basedir)} "
             "--furl-file FILE")


def stop(basedir: str, graceful: bool = False, timeout: float | None = None) -> None:
    paths = _paths(basedir, must_exist=False)
    if graceful:
        _stop_gracefully(basedir, paths, timeout)
        return
    pid = daemon.stop(_pidfile(paths))
    if pid is None:
        raise Failed(f"no worker is running in {basedir}", Exit.NOT_RUNNING)
    note(f"furl-worker stopped (pid {pid})")


def _stop_gracefully(basedir: str, paths: WorkerPaths, timeout: float | None) -> None:
    """SIGUSR2, then wait for the worker to exit once the master has drained it."""
    pidfile = _pidfile(paths)
    pid = pidfile.running_pid()
    if pid is None:
        raise Failed(f"no worker is running in {basedir}", Exit.NOT_RUNNING)
    os.kill(pid, signal.SIGUSR2)
    st = _state(paths, pid)
    name = st.name if st is not None else ""
    who = f"worker {name!r} (in {basedir})" if name else f"the worker in {basedir}"
    note(f"asked the master to give {who} no new work; it stops once its running "
         "commands or builds end" + (f" (at most {timeout:g} s)" if timeout is not None
                                     else " (Ctrl-C stops waiting; the worker stays draining)"))
    deadline = None if timeout is None else time.monotonic() + timeout
    told = Drain.NONE
    while pidfile.running_pid() is not None:
        st = _state(paths, pid)
        drain = st.drain if st is not None else Drain.NONE
        if drain != told and drain in (Drain.ACCEPTED, Drain.UNSUPPORTED):
            told = drain
            if drain is Drain.ACCEPTED:
                note("the master has stopped giving it work; waiting for what runs to end")
            else:
                note("the master cannot stop it gracefully (an older furl-master, or one that "
                     "does not know this worker's session)")
                if deadline is None:
                    raise Failed("not stopped: the worker keeps running ('furl-worker stop "
                                 f"{q(basedir)}' stops it now, or give --timeout)")
        unsupported = told is Drain.UNSUPPORTED
        if deadline is not None and (unsupported or time.monotonic() >= deadline):
            note("stopping it now (--timeout)" if unsupported else
                 f"not drained within {timeout:g} s: stopping it now")
            daemon.stop(pidfile)
            note(f"furl-worker stopped (pid {pid})")
            return
        time.sleep(0.2)
    note(f"furl-worker stopped gracefully (pid {pid})")


def restart(basedir: str, **kw: Any) -> None:
    paths = _paths(basedir)
    options, rest = _options(paths, dict(kw))
    wconfig.resolve_furl(paths, rest["furl"], rest["furl_file"], None)  # check it first
    pid = daemon.stop(_pidfile(paths))
    if pid is not None:
        note(f"furl-worker stopped (pid {pid})")
    start(basedir, **kw)


def _policy_state(paths: WorkerPaths) -> dict[str, Any] | None:
    """The policy file's summary, ``{"error": ...}``, or None without one."""
    if not os.path.exists(paths.policy):
        return None
    try:
        return wpolicy.read_policy(paths.policy, paths.basedir).summary()
    except ConfigError as e:
        return {"error": str(e)}


def status(basedir: str, as_json: bool) -> None:
    paths = _paths(basedir, must_exist=False)
    pid = _pidfile(paths).running_pid()
    problem = None
    try:
        st = statefile.read(paths.state)
    except StateFileError as e:
        st, problem = None, str(e)
    mine = st if st is not None and pid is not None and st.pid == pid else None
    attached = mine is not None and mine.attached
    record = {"running": pid is not None, "pid": pid, "attached": attached,
              "master": mine.master if mine else None, "since": mine.since if mine else None,
              "name": (mine.name or None) if mine else None,
              "last_error": mine.last_error if mine and not attached else None,
              "policy": _policy_state(paths),
              "graceful_stop": mine.drain.value if mine else None,
              # a running worker whose state file cannot be read (a not running one's
              # file does not matter)
              "state_error": problem if pid is not None else None}
    if as_json:
        click.echo(json.dumps(record, indent=2))
    elif pid is None:
        click.echo("not running")
    elif problem is not None:
        click.echo(f"running (pid {pid}): attached or not, unknown: {problem}")
    else:
        since = record["since"]
        when = datetime.datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S") \
            if since else "?"
        if attached:
            named = f" as {record['name']!r}" if record["name"] else ""
            click.echo(f"running (pid {pid}): attached to the master at {record['master']}"
                       f"{named} since {when}")
        else:
            why = record["last_error"]
            click.echo(f"running (pid {pid}): not attached"
                       + (f" since {when}: {why}" if why else ""))
        drain = record["graceful_stop"]
        if drain:
            click.echo("graceful stop: " + {
                Drain.ASKED.value: "asked; the master has not answered yet",
                Drain.ACCEPTED.value: "the master gives it no new work; it stops once what "
                                      "runs ends",
                Drain.UNSUPPORTED.value: "its master cannot do it (stop it with furl-worker "
                                         "stop)",
            }.get(str(drain), str(drain)))
    policy = record["policy"]
    if as_json:
        pass
    elif isinstance(policy, dict) and "error" in policy:
        click.echo(f"policy: refuses every request until fixed: {policy['error']}")
    elif policy is not None:
        click.echo(f"policy: {paths.policy} (see: furl-worker policy {q(basedir)})")
    if pid is None:
        sys.exit(Exit.NOT_RUNNING)
    if record["state_error"] is not None:
        sys.exit(Exit.ERROR)
    if not attached:
        sys.exit(Exit.NOT_ATTACHED)
