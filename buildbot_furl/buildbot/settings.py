"""``c['protocols']['furl']`` in master.cfg, and ``furl-master.conf`` beside it."""

from __future__ import annotations

import os
import shlex
from typing import Any

from buildbot.config.errors import error as config_error
from twisted.internet import endpoints, reactor

from buildbot_furl import cluster
from buildbot_furl.errors import ConfigError
from buildbot_furl.layout import CONF_NAME, MasterPaths
from buildbot_furl.master import config as mconfig
from buildbot_furl.master.host import HostSettings
from buildbot_furl.metrics.serve import check_listen
from buildbot_furl.protocol.messages import check_mailbox_url

PROTOCOL_KEY = "furl"
PROTOCOL_OPTIONS = frozenset({"port", "location", "furls", "metrics_listen",
                              "mailbox_listen", "mailbox_url", "cluster_dir"})


def normalize_port(port: Any) -> str:
    """``c['protocols']['furl']['port']`` (int or endpoint string) -> endpoint."""
    if isinstance(port, bool) or port is None:
        raise ConfigError("c['protocols']['furl'] needs a 'port' (e.g. 9990 or 'tcp:9990')")
    if isinstance(port, int):
        if not 0 < port < 65536:
            raise ConfigError(f"c['protocols']['furl']['port']: {port} is not a TCP port")
        return f"tcp:{port}"
    if isinstance(port, str) and port.strip():
        port = port.strip()
        if port.isdigit():
            return normalize_port(int(port))
        try:
            endpoints.serverFromString(reactor, port)  # parse only: nothing listens yet
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(
                f"c['protocols']['furl']['port']: {port!r} is not a Twisted endpoint ({e})"
            ) from None
        return port
    raise ConfigError(
        f"c['protocols']['furl']['port'] must be an int or an endpoint string, not {port!r}"
    )


def hub_settings(basedir: str, protocols: dict[str, Any]) -> HostSettings:
    """Read ``c['protocols']['furl']`` and ``BASEDIR/furl-master.conf``.

    Raises ConfigError with a sentence for the admin.
    """
    opts = protocols.get(PROTOCOL_KEY)
    if not isinstance(opts, dict):
        raise ConfigError(
            "FurlWorker needs c['protocols']['furl'] = {'port': PORT} in master.cfg"
        )
    unknown = sorted(set(opts) - PROTOCOL_OPTIONS)
    if unknown:
        raise ConfigError(
            f"c['protocols']['furl']: unknown option(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(PROTOCOL_OPTIONS))})"
        )
    port = normalize_port(opts.get("port"))
    paths = MasterPaths(os.path.abspath(basedir))
    conf: mconfig.MasterConfig | None = None
    if os.path.exists(paths.conf):
        conf = mconfig.load(paths.basedir)
    if opts.get("location"):
        if not isinstance(opts["location"], str):
            raise ConfigError("c['protocols']['furl']['location'] must be a string")
        location = mconfig.parse_location(opts["location"])
    elif conf is not None:
        location = conf.location
    else:
        raise ConfigError(
            f"{paths.basedir} has no {CONF_NAME}: run furl-master create-master -d "
            f"{shlex.quote(paths.basedir)} --location tcp:HOST:PORT first (it makes the "
            "master's key and workers.furls)"
        )
    furls_path = opts.get("furls") or paths.furls
    if not isinstance(furls_path, str):
        raise ConfigError("c['protocols']['furl']['furls'] must be a path")
    furls_path = os.path.join(paths.basedir, os.path.expanduser(furls_path))
    if not os.path.exists(paths.tub_pem):
        raise ConfigError(
            f"{paths.tub_pem} is missing: the master's key is made by furl-master "
            f"create-master -d {shlex.quote(paths.basedir)} --location tcp:HOST:PORT"
        )
    # master.cfg's metrics_listen wins over furl-master.conf's
    metrics_listen = conf.metrics_listen if conf is not None else None
    if opts.get("metrics_listen") is not None:
        if not isinstance(opts["metrics_listen"], str):
            raise ConfigError("c['protocols']['furl']['metrics_listen'] must be an endpoint "
                              "string (e.g. 'tcp:9102:interface=127.0.0.1')")
        try:
            metrics_listen = check_listen(opts["metrics_listen"])
        except ConfigError as e:
            raise ConfigError(f"c['protocols']['furl']['metrics_listen']: {e}") from None
    mailbox_listen = conf.mailbox_listen if conf is not None else None
    mailbox_url = conf.mailbox_url if conf is not None else None
    try:
        if opts.get("mailbox_listen") is not None:
            mailbox_listen = check_listen(str(opts["mailbox_listen"]), "tcp:4000")
        if opts.get("mailbox_url") is not None:
            mailbox_url = check_mailbox_url(str(opts["mailbox_url"]))
    except ConfigError as e:
        raise ConfigError(f"c['protocols']['furl'] mailbox: {e}") from None
    mailbox = mconfig.mailbox_of(mailbox_url, mailbox_listen, location)
    # master.cfg's cluster_dir wins over furl-master.conf's (which list-workers
    # --cluster reads: docs/cluster.md says to set it there)
    cluster_dir = conf.cluster_dir if conf is not None else None
    if opts.get("cluster_dir") is not None:
        if not isinstance(opts["cluster_dir"], str) or not opts["cluster_dir"].strip():
            raise ConfigError("c['protocols']['furl']['cluster_dir'] must be a directory "
                              "(or 'off')")
        cluster_dir = opts["cluster_dir"]
    cluster_path = cluster.resolve_dir(cluster_dir, paths.basedir, os.path.abspath(furls_path))
    if conf is not None:
        return HostSettings(paths, port, location, os.path.abspath(furls_path), conf.keepalive,
                            conf.disconnect_timeout, conf.reload_interval, conf.session_grace,
                            conf.refusal_limit, conf.call_timeout, conf.gate, metrics_listen,
                            mailbox_listen, mailbox, cluster_dir=cluster_path,
                            cluster_heartbeat=conf.cluster_heartbeat)
    return HostSettings(paths, port, location, os.path.abspath(furls_path),
                        metrics_listen=metrics_listen, mailbox_listen=mailbox_listen,
                        mailbox_url=mailbox, cluster_dir=cluster_path)


def furl_protocol(basedir: str, **options: Any) -> dict[str, Any]:
    """``c['protocols']['furl']`` with the port of ``BASEDIR/furl-master.conf``,
    so that the port is written down in one place only."""
    try:
        conf = mconfig.load(basedir)
    except ConfigError as e:
        config_error(str(e))
        return {}
    return {"port": conf.port, **options}
