"""A worker's base directory and where its FURL comes from.

Layout::

    DIR/master.furl        the FURL (0600), written by create-worker
    DIR/info/admin, host   shown to the master, like buildbot-worker's info/
    DIR/worker.log, DIR/furl-worker.pid, DIR/furl-worker.state
    DIR/<builddirs>        created by the master's setBuilderList
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket

from buildbot_furl import furls
from buildbot_furl.errors import ConfigError

ENV_FURL = "FURL_WORKER_FURL"


@dataclasses.dataclass(frozen=True)
class WorkerPaths:
    basedir: str

    @property
    def furl(self) -> str:
        return os.path.join(self.basedir, "master.furl")

    @property
    def info(self) -> str:
        return os.path.join(self.basedir, "info")

    @property
    def log(self) -> str:
        return os.path.join(self.basedir, "worker.log")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.basedir, "furl-worker.pid")

    @property
    def state(self) -> str:
        """Connection state the running worker keeps up to date (JSON)."""
        return os.path.join(self.basedir, "furl-worker.state")


def read_furl_file(path: str) -> furls.Furl:
    """Read a FURL from a file that must not be readable by group or others."""
    furls.check_private_mode(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return furls.parse_furl(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def resolve_furl(paths: WorkerPaths | None, furl: str | None, furl_file: str | None) -> furls.Furl:
    """--furl, else --furl-file, else $FURL_WORKER_FURL, else DIR/master.furl."""
    if furl and furl_file:
        raise ConfigError("give --furl or --furl-file, not both")
    if furl:
        try:
            return furls.parse_furl(furl)
        except ConfigError as e:
            raise ConfigError(f"--furl: {e}") from None
    if furl_file:
        return read_furl_file(furl_file)
    env = os.environ.get(ENV_FURL)
    if env:
        try:
            return furls.parse_furl(env)
        except ConfigError as e:
            raise ConfigError(f"${ENV_FURL}: {e}") from None
    if paths is not None and os.path.exists(paths.furl):
        return read_furl_file(paths.furl)
    raise ConfigError(
        "no FURL: give --furl, --furl-file or $FURL_WORKER_FURL, "
        "or run furl-worker create-worker DIR --furl ... first"
    )


def create(basedir: str, furl: furls.Furl, admin: str | None, host: str | None) -> WorkerPaths:
    """Make a worker directory holding the FURL and info files."""
    paths = WorkerPaths(os.path.abspath(basedir))
    if os.path.exists(paths.furl):
        raise ConfigError(f"{paths.furl} already exists: {basedir} is already a worker")
    os.makedirs(paths.basedir, exist_ok=True)
    os.makedirs(paths.info, exist_ok=True)
    furls.write_private(paths.furl, f"{furl}\n")
    defaults = {
        "admin": admin or f"{getpass.getuser()} <{getpass.getuser()}@{socket.gethostname()}>",
        "host": host or socket.gethostname(),
    }
    for key, value in defaults.items():
        p = os.path.join(paths.info, key)
        if not os.path.exists(p):
            with open(p, "w", encoding="utf-8") as f:
                f.write(value + "\n")
    return paths
