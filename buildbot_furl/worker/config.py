"""A worker's base directory and where its FURL comes from.

Layout::

    DIR/master.furl        the FURL (0600), written by create-worker
    DIR/info/admin, host, access_uri   shown to the master, like buildbot-worker's info/
    DIR/furl-worker.conf   umask, numcpus, maxretries, metrics_listen (see settings.py)
    DIR/worker.log, DIR/furl-worker.pid, DIR/furl-worker.state
    DIR/<builddirs>        created by the master's setBuilderList
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import socket

from buildbot_furl import logs
from buildbot_furl.errors import ConfigError
from buildbot_furl.furl import Furl, parse_furl, secret_digest
from buildbot_furl.layout import WorkerPaths
from buildbot_furl.privatefiles import check_private_mode, write_private
from buildbot_furl.tubs import DEFAULT_DISCONNECT_TIMEOUT, DEFAULT_KEEPALIVE
from buildbot_furl.worker.settings import Settings, write_settings

ENV_FURL = "FURL_WORKER_FURL"


def furl_id(furl: Furl) -> str:
    """A short stand-in for a FURL in the state file (a digest, never the
    secret), of the whole FURL: a new address or TUBID is a new FURL."""
    return secret_digest(str(furl))[:16]


def read_furl_file(path: str) -> Furl:
    """Read a FURL from a file that must not be readable by group or others."""
    check_private_mode(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return parse_furl(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


@dataclasses.dataclass(frozen=True)
class FurlSource:
    """A FURL and where it came from.  ``transient`` sources (the command
    line, the environment) must not stay in a long-running worker's argv
    or environment: every command it runs would inherit them."""

    furl: Furl
    origin: str
    transient: bool = False


def read_furl_fd(fd: int) -> Furl:
    """Read the FURL a parent process wrote into pipe ``fd``, then close it."""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
            if sum(map(len, chunks)) > 8192:
                raise ConfigError("--furl-fd: more data than a FURL")
    except OSError as e:
        raise ConfigError(f"--furl-fd: cannot read the FURL: {e.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        return parse_furl(b"".join(chunks).decode("utf-8", "replace"))
    except ConfigError as e:
        raise ConfigError(f"--furl-fd: {e}") from None


def resolve_furl(paths: WorkerPaths | None, furl: str | None, furl_file: str | None,
                 furl_fd: int | None = None) -> FurlSource:
    """--furl, else --furl-file, else the pipe --furl-fd, else $FURL_WORKER_FURL,
    else DIR/master.furl.

    $FURL_WORKER_FURL is removed from this process's environment whether it
    is used or not, so no command the worker runs can inherit it.
    """
    env = os.environ.pop(ENV_FURL, None)
    if furl and furl_file:
        raise ConfigError("give --furl or --furl-file, not both")
    if furl:
        try:
            return FurlSource(parse_furl(furl), "--furl", transient=True)
        except ConfigError as e:
            raise ConfigError(f"--furl: {e}") from None
    if furl_file:
        return FurlSource(read_furl_file(furl_file), f"--furl-file {furl_file}")
    if furl_fd is not None:
        return FurlSource(read_furl_fd(furl_fd), "its parent process")
    if env:
        try:
            return FurlSource(parse_furl(env), f"${ENV_FURL}", transient=True)
        except ConfigError as e:
            raise ConfigError(f"${ENV_FURL}: {e}") from None
    if paths is not None and os.path.exists(paths.furl):
        return FurlSource(read_furl_file(paths.furl), paths.furl)
    where = paths.furl if paths is not None else "DIR/master.furl"
    raise ConfigError(
        f"no FURL: {where} does not exist; store one with "
        "'furl-worker create-worker DIR --furl-file FILE' (or give --furl-file FILE "
        f"or ${ENV_FURL})"
    )


def clean_environ() -> dict[str, str]:
    """This process's environment less anything that may hold the FURL."""
    return {k: v for k, v in os.environ.items() if k != ENV_FURL}


def create(basedir: str, furl: Furl, admin: str | None, host: str | None,
           access_uri: str | None = None, stored: Settings | None = None) -> WorkerPaths:
    """Make a worker directory holding the FURL, info files and settings.

    info/admin and info/host get a default unless they exist (a reused
    buildbot-worker directory keeps its own); a value given is written.
    """
    paths = WorkerPaths(os.path.abspath(basedir))
    if os.path.exists(paths.furl):
        raise ConfigError(f"{paths.furl} already exists: {basedir} is already a worker")
    os.makedirs(paths.basedir, exist_ok=True)
    os.makedirs(paths.info, exist_ok=True)
    write_private(paths.furl, f"{furl}\n")
    user = getpass.getuser()
    defaults = {"admin": f"{user} <{user}@{socket.gethostname()}>",
                "host": socket.gethostname()}
    given = {"admin": admin, "host": host, "access_uri": access_uri}
    for key, value in given.items():
        p = os.path.join(paths.info, key)
        if value is None and (key not in defaults or os.path.exists(p)):
            continue
        with open(p, "w", encoding="utf-8") as f:
            f.write((value if value is not None else defaults[key]) + "\n")
    if stored is not None and stored != Settings():
        write_settings(paths.settings, stored)
    return paths


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How a worker process runs (the options of ``furl-worker start``)."""

    wait: float = 15.0
    keepalive: int = DEFAULT_KEEPALIVE
    disconnect_timeout: int = DEFAULT_DISCONNECT_TIMEOUT
    log_size: int = logs.DEFAULT_MAX_BYTES
    log_keep: int = logs.DEFAULT_KEEP
    #: buildbot.tac's umask, numcpus, maxretries, and metrics_listen (furl-worker.conf,
    #: then start's options)
    settings: Settings = Settings()

    def to_argv(self) -> list[str]:
        """The same options as command-line arguments, for a child process."""
        argv = ["--wait", str(self.wait), "--keepalive", str(self.keepalive),
                "--disconnect-timeout", str(self.disconnect_timeout),
                "--log-size", str(self.log_size), "--log-keep", str(self.log_keep)]
        st = self.settings
        if st.umask is not None:
            argv += ["--umask", f"{st.umask:03o}"]
        if st.numcpus is not None:
            argv += ["--numcpus", str(st.numcpus)]
        if st.maxretries is not None:
            argv += ["--maxretries", str(st.maxretries)]
        if st.metrics_listen is not None:
            argv += ["--metrics", st.metrics_listen]
        return argv
