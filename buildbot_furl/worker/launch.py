"""Starting a worker process: in the background, or in this process.

Wherever the FURL came from, the process that serves it holds it only in
memory: it is handed over through a pipe (``--furl-fd``), never through
argv (which ``ps`` shows to every user) or the environment (which every
command the worker runs inherits, and ``/proc/PID/environ`` keeps).  A
foreground worker given the FURL on its command line or in
``$FURL_WORKER_FURL`` therefore re-executes itself once without it.
"""

from __future__ import annotations

import os
import sys

from buildbot_furl import daemon
from buildbot_furl.errors import ConfigError
from buildbot_furl.layout import WorkerPaths
from buildbot_furl.worker.config import FurlSource, WorkerOptions, clean_environ

FURL_FD_OPTION = "--furl-fd"


def _argv(paths: WorkerPaths, options: WorkerOptions, *extra: str) -> list[str]:
    return daemon.python_argv("buildbot_furl.cli.worker", "start", paths.basedir,
                              *options.to_argv(), *extra)


def start_background(paths: WorkerPaths, source: FurlSource, options: WorkerOptions) -> str:
    """Spawn the worker daemon and wait for its verdict; its message, or
    ConfigError with the reason it gave up."""
    pid = daemon.PidFile(paths.pidfile).running_pid()
    if pid is not None:
        raise ConfigError(daemon.already_running("worker", paths.basedir, pid))
    ok, message = daemon.spawn(
        _argv(paths, options), paths.log, timeout=options.wait + 30,
        secret=(FURL_FD_OPTION, str(source.furl).encode()), env=clean_environ())
    if not ok:
        raise ConfigError(message)
    return message


def run_foreground(paths: WorkerPaths, source: FurlSource, options: WorkerOptions,
                   ready_fd: int | None) -> int:
    """Serve in this process until stopped; the exit code.  A FURL from argv
    or the environment makes this process re-execute itself without it."""
    if source.transient:
        fd = daemon.secret_pipe(str(source.furl).encode())
        argv = _argv(paths, options, "--nodaemon", FURL_FD_OPTION, str(fd))
        if ready_fd is not None:
            argv += ["--ready-fd", str(ready_fd)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, daemon.daemon_environ(clean_environ()))
    from buildbot_furl.worker.service import run_worker

    return run_worker(paths, source.furl, ready_fd, ready_fd is None, options)
