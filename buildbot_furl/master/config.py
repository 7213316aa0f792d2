"""A master's base directory: where each file lives, and furl-master.conf.

Layout::

    DIR/furl-master.conf     [master] location = tcp:HOST:PORT, port = tcp:PORT
    DIR/workers.furls        NAME FURL lines (0600)
    DIR/private/             (0700)
    DIR/private/tub.pem      the Tub key the FURLs' TUBID pins (0600)
    DIR/private/admin.furl   the CLI's capability, written at start (0600)
    DIR/master.log, DIR/furl-master.pid

The same files can live in a Buildbot master's basedir (the FurlWorker
plugin reads them there).
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any

from buildbot_furl import cluster, furlsfile, logs
from buildbot_furl.errors import ConfigError
from buildbot_furl.layout import CONF_NAME, MasterPaths
from buildbot_furl.master.admission import GateSettings
from buildbot_furl.master.session import DEFAULT_CALL_TIMEOUT
from buildbot_furl.metrics.serve import check_listen
from buildbot_furl.protocol.messages import PUBLIC_MAILBOX, check_mailbox_url
from buildbot_furl.privatefiles import check_private_mode
from buildbot_furl.tubs import DEFAULT_DISCONNECT_TIMEOUT, DEFAULT_KEEPALIVE, tubid_of

DEFAULT_GRACE = 60.0  # seconds a session outlives its connection
#: refused attach attempts per address per minute before its unknown names are
#: cut unanswered for the rest of the minute (0: never; see master/refusals.py)
DEFAULT_REFUSAL_LIMIT = 100

HINT_RE = re.compile(r"^(?:tcp:)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})$")


@dataclasses.dataclass(frozen=True)
class MasterConfig:
    paths: MasterPaths
    location: tuple[str, ...]
    port: str
    keepalive: int = DEFAULT_KEEPALIVE
    disconnect_timeout: int = DEFAULT_DISCONNECT_TIMEOUT
    reload_interval: float = 1.0
    log_size: int = logs.DEFAULT_MAX_BYTES
    log_keep: int = logs.DEFAULT_KEEP
    session_grace: float = DEFAULT_GRACE
    refusal_limit: int = DEFAULT_REFUSAL_LIMIT
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    #: max_pending, pending_per_address, attach_timeout (master/admission.py)
    gate: GateSettings = GateSettings()
    #: where /metrics, /healthz and /readyz are served (None: nowhere)
    metrics_listen: str | None = None
    #: where the master serves its own invites' mailbox (None: it does not)
    mailbox_listen: str | None = None
    #: the mailbox of new invites (None: ours if we serve one, else the public one)
    mailbox_url: str | None = None
    #: the cluster directory as written (None: the default, beside a linked
    #: workers.furls; "off": none); cluster.resolve_dir says where it is
    cluster_dir: str | None = None
    #: seconds between two heartbeat records in it
    cluster_heartbeat: float = cluster.DEFAULT_HEARTBEAT


def parse_location(location: str) -> tuple[str, ...]:
    """Split and check ``tcp:HOST:PORT[,tcp:HOST2:PORT2]``."""
    hints = tuple(h.strip() for h in location.split(",") if h.strip())
    if not hints:
        raise ConfigError("--location is empty: give tcp:HOST:PORT, the address workers dial")
    for h in hints:
        m = HINT_RE.match(h)
        if not m or not 0 < int(m.group("port")) < 65536:
            raise ConfigError(
                f"bad location hint {h!r}: expected tcp:HOST:PORT (e.g. tcp:build.example.org:9990)"
            )
    return hints


def default_port(hints: tuple[str, ...]) -> str:
    m = HINT_RE.match(hints[0])
    assert m
    return f"tcp:{m.group('port')}"


def check_port(port: str) -> str:
    if not re.match(r"^tcp:\d{1,5}(:[A-Za-z]+=[^:\s]+)*$", port):
        raise ConfigError(
            f"bad --port {port!r}: expected a Twisted endpoint like tcp:9990 "
            "or tcp:9990:interface=127.0.0.1"
        )
    return port


def mailbox_of(config_url: str | None, listen: str | None,
               location: tuple[str, ...]) -> str:
    """The mailbox new invites use: the one configured; else, when the master
    serves one, that one as workers reach it (the host of the first location
    hint, the port listened on); else the public one."""
    if config_url:
        return config_url
    if listen:
        port = re.match(r"(?:tcp6?:)?(?:port=)?(\d+)", listen)
        hint = HINT_RE.match(location[0]) if location else None
        if port and hint:
            return f"ws://{hint.group('host')}:{port.group(1)}/v1"
        raise ConfigError(f"mailbox_listen {listen!r}: set mailbox_url too (the URL workers "
                          "reach it by, e.g. ws://HOST:4000/v1)")
    return PUBLIC_MAILBOX


def check_grace(grace: float) -> float:
    """A session grace period: 0 (sessions end with their connection) to a day."""
    if not 0 <= grace <= 86400:
        raise ValueError("session_grace must be between 0 and 86400 seconds")
    return float(grace)


def create(basedir: str, location: str, port: str | None,
           session_grace: float | None = None) -> MasterConfig:
    """Write the config and an empty workers.furls; the key comes from tubs."""
    hints = parse_location(location)
    try:
        grace = check_grace(session_grace) if session_grace is not None else None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    port = check_port(port) if port else default_port(hints)
    paths = MasterPaths(os.path.abspath(basedir))
    if os.path.exists(paths.conf):
        raise ConfigError(f"{paths.conf} already exists: {basedir} is already a master")
    os.makedirs(paths.basedir, exist_ok=True)
    os.makedirs(paths.private, mode=0o700, exist_ok=True)
    os.chmod(paths.private, 0o700)
    cp = configparser.ConfigParser()
    cp["master"] = {"location": ",".join(hints), "port": port}
    if grace is not None:
        cp["master"]["session_grace"] = f"{grace:g}"
    with open(paths.conf, "w", encoding="utf-8") as f:
        f.write(
            "# furl-master settings. location: what workers dial (goes into every FURL);\n"
            "# port: what this master listens on. Changing location needs rotate-worker\n"
            "# for every worker, since their FURLs carry it.\n"
            "# Optional, with their defaults: keepalive = 10, disconnect_timeout = 25\n"
            "# (seconds), reload_interval = 1 (how often workers.furls is checked, in\n"
            "# seconds), log_size = 10M (0: never rotate master.log), log_keep = 5,\n"
            "# session_grace = 60 (seconds a worker's session and its running commands\n"
            "# outlive a lost connection; 0: they end with it), refusal_limit = 100\n"
            "# (refused attach attempts per address per minute before its unknown names\n"
            "# are cut unanswered until the minute ends; 0: never), call_timeout = 120\n"
            "# (seconds a worker has to answer a call before it is cut off),\n"
            "# attach_timeout = 15 (seconds a new connection has to start an attach),\n"
            "# pending_per_address = 256 (connections of one address on their way to an\n"
            "# attach at once; more wait), max_pending = 0 (connections not yet attached,\n"
            "# in all; 0: derived from the open-files limit, 4096 at 65536),\n"
            "# metrics_listen = tcp:9102:interface=127.0.0.1 (serve Prometheus /metrics,\n"
            "# /healthz and /readyz there; off when left out), mailbox_listen = tcp:4000\n"
            "# (serve the invites' magic-wormhole mailbox; off when left out), mailbox_url\n"
            "# = ws://HOST:4000/v1 (the mailbox of invites; default: ours if served, else\n"
            "# the public ws://relay.magic-wormhole.io:4000/v1), cluster_dir = PATH (where\n"
            "# the masters of a cluster say which workers they hold; default: furl-cluster/\n"
            "# beside the file workers.furls links to, none if it is no link; off: none),\n"
            "# cluster_heartbeat = 10 (seconds between two of this master's records there).\n"
        )
        cp.write(f)
    furlsfile.ensure_exists(paths.furls)
    return MasterConfig(paths, hints, port, session_grace=grace if grace is not None else
                        DEFAULT_GRACE)


@dataclasses.dataclass(frozen=True)
class ConfReading:
    """``furl-master.conf`` as far as it is good: ``config`` has the default
    for each bad setting (None when location or port cannot be read), and
    ``problems`` one sentence per bad setting."""

    paths: MasterPaths
    config: MasterConfig | None
    problems: tuple[str, ...]


def _cut(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def _why(e: Exception) -> str:
    text = str(e)
    if text.startswith(("invalid literal", "could not convert")):
        return "not a number"
    return text


def _checked(value: float, low: float, high: float, what: str, unit: str = "") -> float:
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low:g} and {high:g}{unit}")
    return value


def read(basedir: str) -> ConfReading:
    """Read ``furl-master.conf``, collecting every bad setting (ConfigError
    only when DIR is not a master directory at all)."""
    paths = MasterPaths(os.path.abspath(basedir))
    if not os.path.isdir(paths.basedir):
        raise ConfigError(f"{basedir} does not exist (create it with: furl-master create-master)")
    if not os.path.exists(paths.conf):
        raise ConfigError(
            f"{basedir} is not a furl master directory (no {CONF_NAME}); "
            "create one with: furl-master create-master -d DIR --location tcp:HOST:PORT"
        )
    cp = configparser.ConfigParser()
    problems: list[str] = []
    try:
        cp.read(paths.conf, encoding="utf-8")
        sect = cp["master"]
    except (configparser.Error, KeyError, UnicodeDecodeError, OSError) as e:
        if isinstance(e, KeyError):
            e = ConfigError("no [master] section")
        return ConfReading(paths, None, (f"{paths.conf}: {e}",))

    def setting(key: str, default: Any, parse: Callable[[str], Any]) -> Any:
        if key not in sect:
            return default
        try:
            return parse(sect[key])
        except (ValueError, ConfigError) as e:
            problems.append(f"{paths.conf}: {key} = {_cut(sect[key])}: {_why(e)}")
            return default

    location = setting("location", None, parse_location)
    if "location" not in sect:
        problems.append(f"{paths.conf}: no location (tcp:HOST:PORT, what workers dial)")
    port = setting("port", None, check_port)
    if port is None and location is not None and "port" not in sect:
        port = default_port(location)
    values = dict(
        keepalive=setting("keepalive", DEFAULT_KEEPALIVE, _seconds),
        disconnect_timeout=setting("disconnect_timeout", DEFAULT_DISCONNECT_TIMEOUT, _seconds),
        reload_interval=setting("reload_interval", 1.0, lambda v: _checked(
            float(v), 0.1, 86400, "reload_interval", " seconds")),
        log_size=setting("log_size", logs.DEFAULT_MAX_BYTES, logs.parse_size),
        log_keep=setting("log_keep", logs.DEFAULT_KEEP, logs.check_keep),
        session_grace=setting("session_grace", DEFAULT_GRACE,
                              lambda v: check_grace(float(v))),
        refusal_limit=setting("refusal_limit", DEFAULT_REFUSAL_LIMIT, _refusal_limit),
        call_timeout=setting("call_timeout", DEFAULT_CALL_TIMEOUT, lambda v: _checked(
            float(v), 1, 86400, "call_timeout", " seconds")),
        gate=GateSettings(
            max_pending=setting("max_pending", 0, lambda v: int(_checked(
                int(v), 0, 1_000_000, "max_pending"))),
            per_address=setting("pending_per_address", GateSettings.per_address,
                                lambda v: int(_checked(int(v), 1, 1_000_000,
                                                       "pending_per_address"))),
            attach_timeout=setting("attach_timeout", GateSettings.attach_timeout,
                                   lambda v: _checked(float(v), 1, 3600, "attach_timeout",
                                                      " seconds"))),
        metrics_listen=setting("metrics_listen", None, check_listen),
        mailbox_listen=setting("mailbox_listen", None, lambda v: check_listen(
            v, "tcp:4000")),
        mailbox_url=setting("mailbox_url", None, check_mailbox_url),
        cluster_dir=setting("cluster_dir", None, _cluster_dir),
        cluster_heartbeat=setting("cluster_heartbeat", cluster.DEFAULT_HEARTBEAT,
                                  lambda v: cluster.check_heartbeat(float(v))),
    )
    config = None
    if location is not None and port is not None:
        config = MasterConfig(paths, location, port, **values)
    return ConfReading(paths, config, tuple(problems))


def _cluster_dir(text: str) -> str:
    if not text.strip():
        raise ValueError("empty: give a directory, or off")
    return text.strip()


def _seconds(text: str) -> int:
    n = int(text)
    if n < 0:
        raise ValueError("must be 0 (off) or more seconds")
    return n


def _refusal_limit(text: str) -> int:
    n = int(text)
    if n < 0:
        raise ValueError("refusal_limit must be 0 (no limit) or more")
    return n


def load(basedir: str) -> MasterConfig:
    """Read ``furl-master.conf``; a ConfigError naming every bad setting."""
    reading = read(basedir)
    if reading.problems or reading.config is None:
        raise ConfigError("; ".join(reading.problems))
    return reading.config


def is_buildbot_dir(paths: MasterPaths) -> bool:
    """A Buildbot master's directory (its FURL workers are Buildbot's)."""
    return any(os.path.exists(os.path.join(paths.basedir, f))
               for f in ("buildbot.tac", "master.cfg"))


def problems(paths: MasterPaths, tubid: str | None) -> list[str]:
    """What is wrong with a master directory's secret files, in sentences
    (what ``status`` and ``list-workers`` warn about)."""
    found = []
    for path in (paths.private, paths.tub_pem):
        try:
            check_private_mode(path)
        except ConfigError as e:
            found.append(str(e))
    try:
        furlsfile.read(paths.furls, tubid)
    except ConfigError as e:
        found.append(str(e))
    return found


def all_problems(reading: ConfReading) -> list[str]:
    """Everything wrong with a master directory that a start would refuse:
    its settings, then its key and secret files."""
    found = list(reading.problems)
    try:
        tubid: str | None = tubid_of(reading.paths.tub_pem)
    except ConfigError as e:
        tubid = None
        found.append(str(e))
    # a key file others can read fails tubid_of and the mode check alike: say it once
    found += [p for p in problems(reading.paths, tubid) if p not in found]
    return found


def check_private(paths: MasterPaths) -> None:
    """Refuse to run when secrets are readable by group or others."""
    check_private_mode(paths.private)
    check_private_mode(paths.tub_pem)
    check_private_mode(paths.furls)
