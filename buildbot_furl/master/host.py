"""What every master runs, standalone or inside Buildbot: one place.

:class:`MasterHost` checks the master's secret files, builds its Tub from
``private/tub.pem``, listens, sets the location, starts the registry of
``workers.furls`` and publishes the admin capability at
``private/admin.furl`` (removed again at stop).

The admin capability has a Tub and a listener of its own, on loopback
(``ADMIN_PORT``), with a key made at each start: the public port's
refusal gate never stands between the admin and the master, and a leaked
``admin.furl`` is of no use from another host (see docs/admin.md).  The
standalone daemon (:mod:`buildbot_furl.master.service`) and the Buildbot
plugin (:mod:`buildbot_furl.buildbot.hub`) each add only what is theirs.

The host serves one consumer (:mod:`buildbot_furl.master.consumer`), given
at construction: it makes one :class:`FurlConnection` per worker session,
keeps the one table of them, and tells the consumer of each attach, detach
and drain.  Every hook of the Tub and the registry is given when they are
made, and the consumer asks about workers through the host's queries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from twisted.application import service
from twisted.internet import defer, reactor

from buildbot_furl import cluster, furlsfile
from buildbot_furl.errors import FurlError
from buildbot_furl.furl import new_swissnum
from buildbot_furl.layout import MasterPaths
from buildbot_furl.master.config import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_GRACE,
    DEFAULT_REFUSAL_LIMIT,
    MasterConfig,
    check_private,
    mailbox_of,
)
from buildbot_furl.master.admission import GateSettings
from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.consumer import ConsumerFactory, WorkerConsumer
from buildbot_furl.master.heartbeat import Heartbeat
from buildbot_furl.master.refusals import Refusals
from buildbot_furl.master.invites import Invites, WormholeFactory, real_wormhole
from buildbot_furl.master.mailbox import MailboxService
from buildbot_furl.master.metrics import MasterMetrics
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.metrics.serve import MetricsService
from buildbot_furl.protocol.messages import PUBLIC_MAILBOX, RefusalCounts, WorkerRow
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.privatefiles import check_private_mode, write_private
from buildbot_furl.tubs import (
    DEFAULT_DISCONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE,
    TubHooks,
    listen,
    make_tub,
)


#: where the admin capability listens: loopback only, a port the kernel picks
ADMIN_PORT = "tcp:0:interface=127.0.0.1"


class CannotListen(FurlError):
    """The port cannot be listened on (in use, no permission)."""


@dataclasses.dataclass(frozen=True)
class HostSettings:
    """Where a master's files are, where it listens, what workers dial."""

    paths: MasterPaths
    port: str
    location: tuple[str, ...]
    furls_path: str = ""  # default: paths.furls
    keepalive: int = DEFAULT_KEEPALIVE
    disconnect_timeout: int = DEFAULT_DISCONNECT_TIMEOUT
    reload_interval: float = 1.0
    #: seconds a worker's session outlives its connection; or, per worker
    #: name, a function (the Buildbot plugin's FurlWorker(session_grace=...))
    grace: float | Callable[[str], float] = DEFAULT_GRACE
    refusal_limit: int = DEFAULT_REFUSAL_LIMIT
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    #: admission of connections to the workers' port (master/admission.py)
    gate: GateSettings = GateSettings()
    #: where /metrics, /healthz and /readyz are served (None: nowhere)
    metrics_listen: str | None = None
    #: where the invites' mailbox is served (None: not here)
    mailbox_listen: str | None = None
    #: the mailbox new invites use
    mailbox_url: str = PUBLIC_MAILBOX
    #: where this master writes its heartbeat record (None: nowhere; cluster.py)
    cluster_dir: str | None = None
    cluster_heartbeat: float = cluster.DEFAULT_HEARTBEAT

    @property
    def workers_file(self) -> str:
        return self.furls_path or self.paths.furls

    @classmethod
    def from_config(cls, config: MasterConfig) -> HostSettings:
        return cls(config.paths, config.port, config.location, "", config.keepalive,
                   config.disconnect_timeout, config.reload_interval, config.session_grace,
                   config.refusal_limit, config.call_timeout, config.gate,
                   config.metrics_listen, config.mailbox_listen,
                   mailbox_of(config.mailbox_url, config.mailbox_listen, config.location),
                   cluster.resolve_dir(config.cluster_dir, config.paths.basedir,
                                       config.paths.furls),
                   config.cluster_heartbeat)


def master_name(buildbot_master: Any, basedir: str) -> str:
    """The master's name in its cluster: Buildbot's ``master.name``, else
    ``hostname:basedir`` (what Buildbot's own default is made of)."""
    name = getattr(buildbot_master, "name", None)
    if isinstance(name, str) and name:
        return name
    return f"{socket.gethostname()}:{os.path.abspath(basedir)}"


class MasterHost(service.MultiService):
    """The Tub, the listener, the worker registry, the live connections
    and the admin capability; implements :class:`~.consumer.Workers`."""

    def __init__(self, settings: HostSettings, consumer: ConsumerFactory,
                 buildbot_master: Any = None, clock: IReactorTime | None = None,
                 metrics: MasterMetrics | None = None,
                 wormholes: WormholeFactory | None = None) -> None:
        """``consumer`` makes the host's consumer from the host (its queries);
        ``buildbot_master``: the Buildbot master the connections serve (None:
        standalone)."""
        super().__init__()
        self.settings = settings
        self.buildbot_master = buildbot_master
        self.clock = clock
        self.tub: Any = None
        self.registry: WorkerRegistry | None = None
        #: the one connection per live session (gone once the session ends)
        self.connections: dict[WorkerSession, FurlConnection] = {}
        self.consumer: WorkerConsumer = consumer(self)
        self.listener: Any = None
        #: the admin capability's own Tub, on loopback (made by publish_admin)
        self.admin_tub: Any = None
        self._admin_written = False
        #: the counters (fed by the registry, sessions, connections), and
        #: the gauges read from here at each scrape
        self.metrics = metrics if metrics is not None else MasterMetrics(
            "buildbot" if buildbot_master is not None else "master")
        self.metrics.watch(self)
        self.metrics_service: MetricsService | None = None
        #: how invites make their wormholes (tests give fakes)
        self._wormholes = wormholes
        self.invites: Invites | None = None
        self.mailbox: MailboxService | None = None
        #: this master's name in its cluster (heartbeat record, master_info metric)
        self.name = master_name(buildbot_master, settings.paths.basedir)
        self.heartbeat: Heartbeat | None = None

    def startService(self) -> None:
        """Check the files, make the Tub and load workers.furls; raises
        ConfigError (and starts nothing) when any of that is wrong."""
        s = self.settings
        check_private(s.paths)
        check_private_mode(s.workers_file)
        kwargs: dict[str, Any] = {} if self.clock is None else {"clock": self.clock}
        refusals = Refusals(s.refusal_limit, gate=s.gate, **kwargs)
        tub = make_tub(s.paths.tub_pem, s.keepalive, s.disconnect_timeout,
                       TubHooks(self._refused_name, self._violation, refusals, **kwargs))
        tub.setLocation(*s.location)
        registry = WorkerRegistry(tub, s.workers_file, on_attach=self._attached,
                                  on_detach=self._detached, on_drain=self._drain,
                                  reload_interval=s.reload_interval, grace=s.grace,
                                  call_timeout=s.call_timeout, refusals=refusals,
                                  clock=self.clock, metrics=self.metrics,
                                  on_retire=self._retired)
        registry.start()  # reads workers.furls: a bad file stops us here
        self.tub, self.registry = tub, registry
        tub.setServiceParent(self)
        clock = self.clock if self.clock is not None else reactor
        self.invites = Invites(
            s.paths.invites, s.workers_file, tub.getTubID(), s.location, s.mailbox_url,
            registry, clock,  # type: ignore[arg-type]
            self._wormholes or real_wormhole(reactor),
            furlsfile.check_buildbot_name if self.buildbot_master is not None
            else furlsfile.check_name, self.metrics)
        self.invites.setServiceParent(self)  # reads private/invites.json: ConfigError
        if s.cluster_dir is not None:
            self.heartbeat = Heartbeat(s.cluster_dir, self._record, clock,  # type: ignore[arg-type]
                                       s.cluster_heartbeat)
            self.heartbeat.setServiceParent(self)
        super().startService()

    def _record(self, now: float) -> cluster.MasterRecord:
        """What the heartbeat writes: this master and the workers it holds."""
        s = self.settings
        held = tuple(cluster.HeldWorker(r.name, r.connected_since or 0.0, r.peer or "?",
                                        r.state)
                     for r in self.worker_rows()
                     if r.state in (*cluster.HELD_STATES, cluster.WAITING_STATE))
        return cluster.MasterRecord(cluster.master_id(self.name), self.name, os.getpid(),
                                    s.location, s.port, now, s.cluster_heartbeat, held)

    def _changed(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.changed()

    async def open_invites(self) -> None:
        """Serve the invites' mailbox (if the settings say so) and open the
        invites still pending from before a restart; CannotServeMailbox."""
        s = self.settings
        if s.mailbox_listen is not None and self.mailbox is None:
            mailbox = MailboxService(s.mailbox_listen, self.clock)
            await mailbox.start()
            mailbox.setServiceParent(self)
            self.mailbox = mailbox
        if self.invites is not None:
            self.invites.resume()

    def _retired(self, name: str, why: str) -> None:
        if self.invites is not None:
            self.invites.worker_gone(name, why)

    async def listen(self, port: str | None = None) -> None:
        """Listen on ``port`` (default: the settings'), then stop listening
        on the previous port, if any.  CannotListen leaves things as they were."""
        port = port or self.settings.port
        listener, listening = listen(self.tub, port)
        try:
            await listening
        except Exception as e:
            await defer.maybeDeferred(self.tub.stopListeningOn, listener)
            why = getattr(e, "socketError", None) or e
            raise CannotListen(f"cannot listen on {port}: {why}") from None
        old, self.listener = self.listener, listener
        if old is not None:
            await defer.maybeDeferred(self.tub.stopListeningOn, old)
        if port != self.settings.port:
            self.settings = dataclasses.replace(self.settings, port=port)

    async def serve_metrics(self) -> None:
        """Serve /metrics, /healthz and /readyz where the settings say (if
        they do); CannotServeMetrics when that cannot be listened on."""
        if self.settings.metrics_listen is None or self.metrics_service is not None:
            return
        svc = MetricsService(self.settings.metrics_listen, self.metrics.registry, self._unready)
        await svc.start()
        svc.setServiceParent(self)
        self.metrics_service = svc

    def _unready(self) -> str | None:
        """Why the master is not ready for workers (None: it is)."""
        if not self.running or self.registry is None:
            return "not started"
        if self.listener is None:
            return f"not listening on {self.settings.port}"
        return None

    async def publish_admin(self, admin: Any) -> None:
        """Serve ``admin`` on a Tub of its own listening on loopback (never
        behind the public port's gate) under a fresh secret, and write its
        FURL to ``private/admin.furl`` (0600).  CannotListen if loopback
        cannot be listened on."""
        s = self.settings
        if self.admin_tub is None:
            tub = make_tub(None, s.keepalive, s.disconnect_timeout)
            _, listening = listen(tub, ADMIN_PORT)
            tub.setServiceParent(self)
            try:
                lp = await listening
            except Exception as e:
                await defer.maybeDeferred(tub.disownServiceParent)
                why = getattr(e, "socketError", None) or e
                raise CannotListen(f"cannot listen on {ADMIN_PORT} for the admin: {why}") \
                    from None
            tub.setLocation(f"tcp:127.0.0.1:{lp.getHost().port}")
            self.admin_tub = tub
        furl = self.admin_tub.registerReference(admin, name=new_swissnum())
        write_private(s.paths.admin_furl, furl + "\n")
        self._admin_written = True

    def unpublish_admin(self) -> None:
        if self._admin_written:
            with contextlib.suppress(OSError):
                os.unlink(self.settings.paths.admin_furl)
            self._admin_written = False

    def stopService(self) -> defer.Deferred[None]:
        self.unpublish_admin()
        if self.registry is not None:
            self.registry.stop()
        self._serving = False
        return defer.maybeDeferred(super().stopService)

    def reload(self) -> None:
        """Re-read workers.furls now (SIGHUP, a Buildbot reconfig)."""
        if self.registry is not None:
            self.registry.reload()

    # -- what the Tub tells (its TubHooks) ------------------------------------------
    _serving = True  # until stopService: then the Tub's reports go unheard

    def _refused_name(self, name: str, host: str, tubid: str = "", key: Any = None) -> bool:
        if self.registry is None or not self._serving:
            return True
        return self.registry.refused(name, host, tubid, key)

    def _violation(self, broker: Any, what: str) -> None:
        if self.registry is not None and self._serving:
            self.registry.violation(broker, what)

    # -- the consumer's connections (the registry's hooks) --------------------------
    async def _attached(self, session: WorkerSession) -> None:
        conn = FurlConnection(session, master=self.buildbot_master, metrics=self.metrics)
        self.connections[session] = conn

        def gone() -> None:
            if self.connections.get(session) is conn:
                del self.connections[session]

        conn.notifyOnDisconnect(gone)
        self._changed()
        await defer.maybeDeferred(self.consumer.attached, session, conn)

    def _detached(self, session: WorkerSession) -> None:
        self._changed()
        conn = self.connections.pop(session, None)
        if conn is None:
            return
        # the registry has dropped (or is dropping) the session itself; the
        # connection's subscribers (Buildbot) hear of it now rather than when
        # TCP closes, so that a replacing connection finds the worker free
        conn.notifyDisconnected()  # (idempotent)
        self.consumer.detached(session, conn)

    def _drain(self, session: WorkerSession) -> int:
        self._changed()
        conn = self.connections.get(session)
        return self.consumer.drain_started(session, conn) if conn is not None else 0

    # -- queries (consumer.Workers) -------------------------------------------------
    def knows(self, name: str) -> bool:
        return self.registry is not None and self.registry.knows(name)

    def session_of(self, name: str) -> WorkerSession | None:
        return self.registry.session_of(name) if self.registry is not None else None

    def connection_of(self, session: WorkerSession) -> FurlConnection | None:
        return self.connections.get(session)

    def drain(self, session: WorkerSession, who: str) -> int:
        assert self.registry is not None
        return self.registry.drain(session, who)

    def listed(self) -> int:
        """How many workers workers.furls lists."""
        return self.registry.listed() if self.registry is not None else 0

    # -- what the metrics read at each scrape (metrics.HostView) --------------------
    def worker_rows(self) -> list[WorkerRow]:
        return self.registry.rows() if self.registry is not None else []

    def refusal_counts(self) -> RefusalCounts:
        return self.registry.refusal_counts() if self.registry is not None else RefusalCounts()

    def commands_running(self) -> int:
        return sum(c.commands_running for c in self.connections.values())

    def master_name(self) -> str:
        return self.name

    def invites_pending(self) -> int:
        return self.invites.pending_count() if self.invites is not None else 0
