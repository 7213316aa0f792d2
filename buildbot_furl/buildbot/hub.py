"""``FurlHub``: one per Buildbot master, serving its FURL workers.

The first :class:`~buildbot_furl.buildbot.worker.FurlWorker` to start
creates it (a Buildbot shared service parented to the master, stopped
last).  It runs a :class:`~buildbot_furl.master.host.MasterHost` (the
Tub keyed by ``BASEDIR/private/tub.pem``, the registry of
``workers.furls``) and adds what only Buildbot has: ``reconfig``, and
handing each attached worker to Buildbot exactly as Buildbot's own
transports do (``newConnection`` on the worker manager, then
``attached``): it is the host's consumer (master/consumer.py), handed
each session with the connection the host made for it.  Nothing of
Buildbot is patched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from buildbot.config.errors import ConfigErrors
from buildbot.util import service as bbservice
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from buildbot_furl.buildbot.settings import PROTOCOL_KEY, hub_settings
from buildbot_furl.daemon import PidFile
from buildbot_furl.errors import (
    ConfigError,
    DuplicateWorker,
    RemoteError,
    UnknownWorker,
    WireError,
)
from buildbot_furl.master.admin import AdminStatus
from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.host import CannotListen, MasterHost
from buildbot_furl.master.mailbox import CannotServeMailbox
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.metrics.serve import CannotServeMetrics

log = Logger()

LISTEN_RETRY = 10.0  # seconds between tries of a port that could not be had


class FurlHub(bbservice.ReconfigurableServiceMixin, bbservice.SharedService):
    """The master host, the live connections; get it with
    ``yield FurlHub.getService(master)``."""

    # reconfigured before the workers (WorkerManager is 127), so edits to
    # workers.furls are applied before new FurlWorkers look at them
    reconfig_priority = 200

    def __init__(self) -> None:
        super().__init__()
        self.host: MasterHost | None = None
        self.pidfile: PidFile | None = None
        self._listen_retry: Any = None  # a delayed call while the port cannot be had
        self._listen_failed = False
        self._default_grace = 0.0

    @property
    def clock(self) -> IReactorTime:
        """The Buildbot master's reactor: every timer of the hub and its host
        runs on it (Buildbot's own tests give a fake one)."""
        return getattr(self.master, "reactor", None) or reactor

    @property
    def settings(self) -> Any:
        return self.host.settings if self.host is not None else None

    @property
    def connections(self) -> dict[WorkerSession, FurlConnection]:
        """The live connections (the host's table)."""
        return self.host.connections if self.host is not None else {}

    # -- lifecycle --------------------------------------------------------------
    def startService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        # running first (no children yet): if what follows fails, the
        # worker that created us can still stop and disown us cleanly
        await super().startService()
        try:
            settings = hub_settings(self.master.basedir, self.master.config.protocols)
        except ConfigError as e:
            raise ConfigErrors([str(e)]) from None
        self._default_grace = float(settings.grace)  # type: ignore[arg-type]
        settings = dataclasses.replace(settings, grace=self._grace_for)
        host = MasterHost(settings, lambda workers: self, buildbot_master=self.master,
                          clock=self.clock)
        try:
            host.setServiceParent(self)  # starts it: checks the files, loads workers.furls
        except ConfigError as e:
            await defer.maybeDeferred(self.removeService, host)  # it did not start
            raise ConfigErrors([str(e)]) from None
        self.host = host
        await self._try_listen()

    async def _try_listen(self, announce: bool = False) -> None:
        """Listen on the configured port.  A port that cannot be had (in use,
        no permission) does not stop the Buildbot master: it is logged once,
        tried again every LISTEN_RETRY seconds and at every reconfig, and the
        FURL workers stay disconnected meanwhile."""
        self._listen_retry = None
        host = self.host
        if host is None or host.listener is not None or not self.running:
            return
        try:
            await host.listen()
        except CannotListen as e:
            if announce or not self._listen_failed:
                log.error("FURL workers: {err}; they stay disconnected until the port is "
                          "free (tried again every {n:.0f} s and at every reconfig)",
                          err=str(e), n=LISTEN_RETRY)
            self._listen_failed = True
            self._listen_retry = self.clock.callLater(
                LISTEN_RETRY, lambda: defer.Deferred.fromCoroutine(self._try_listen()))
            return
        if self._listen_failed:
            log.info("FURL workers: the port {port} is free now", port=host.settings.port)
        self._listen_failed = False
        await self._publish_admin()
        try:
            await host.serve_metrics()
        except CannotServeMetrics as e:
            # like the admin FURL: the builds go on without it
            log.error("FURL workers: no metrics: {err}", err=str(e))
        try:
            await host.open_invites()
        except CannotServeMailbox as e:
            log.error("FURL workers: no invites: {err}", err=str(e))
        log.info("FURL workers: listening on {port} (workers dial {loc}), tubid {tubid}, "
                 "{n} worker(s) in {path}", port=host.settings.port,
                 loc=",".join(host.settings.location), tubid=host.tub.getTubID(),
                 n=host.listed(), path=host.settings.workers_file)

    def _cancel_listen_retry(self) -> None:
        if self._listen_retry is not None and self._listen_retry.active():
            self._listen_retry.cancel()
        self._listen_retry = None

    async def _publish_admin(self) -> None:
        """Let ``furl-master status/list-workers -d BASEDIR`` see live state:
        status and the worker list, with the pid-file lock a standalone
        master holds (nothing more: the builders own the workers)."""
        assert self.host is not None and self.host.registry is not None
        pidfile = PidFile(self.host.settings.paths.pidfile, "master")
        try:
            pidfile.acquire()
        except ConfigError as e:
            log.warn("FURL workers: not publishing the admin FURL: {err}", err=str(e))
            return
        self.pidfile = pidfile
        try:
            assert self.host.invites is not None
            await self.host.publish_admin(AdminStatus(self.host.registry,
                                                      self.host.settings.location,
                                                      self.host.invites))
        except CannotListen as e:
            log.warn("FURL workers: not publishing the admin FURL: {err}", err=str(e))

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._cancel_listen_retry()
        if self.host is not None:
            self.host.unpublish_admin()
        if self.pidfile is not None:
            self.pidfile.release()
            self.pidfile = None
        for conn in list(self.connections.values()):
            conn.loseConnection()  # (it leaves the host's table)
        await super().stopService()

    def reconfigServiceWithBuildbotConfig(self, new_config: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._reconfig(new_config))

    async def _reconfig(self, new_config: Any) -> None:
        host = self.host
        if host is None or host.registry is None:
            return
        if PROTOCOL_KEY not in new_config.protocols:
            log.warn("c['protocols']['furl'] was removed: FURL workers keep being served on "
                     "{port} until the master restarts", port=host.settings.port)
            host.reload()
            return
        try:
            new = hub_settings(self.master.basedir, new_config.protocols)
        except ConfigError as e:
            raise ConfigErrors([str(e)]) from None
        old = host.settings
        self._default_grace = float(new.grace)  # type: ignore[arg-type]
        if new.workers_file != old.workers_file:
            log.warn("FURL workers: a new workers.furls path applies after a restart; "
                     "still watching {path}", path=old.workers_file)
        host.settings = dataclasses.replace(old, location=new.location)
        if host.listener is None:
            self._cancel_listen_retry()
            host.settings = dataclasses.replace(host.settings, port=new.port)
            await self._try_listen(announce=True)
        elif new.port != old.port:
            try:
                await host.listen(new.port)
            except CannotListen as e:
                raise ConfigErrors([f"FURL workers: {e}; still listening on {old.port}"]) \
                    from None
            log.info("FURL workers: now listening on {port}", port=new.port)
        host.reload()

    def _grace_for(self, name: str) -> float:
        """The worker's own session_grace (FurlWorker(...)), or the master's."""
        try:
            worker = self.master.workers.getWorkerByName(name)
        except KeyError:
            worker = None
        grace = getattr(worker, "session_grace", None)
        return self._default_grace if grace is None else float(grace)

    # -- checks -----------------------------------------------------------------
    def check_worker(self, worker: Any) -> None:
        """Tell the admin about a FurlWorker that cannot attach as configured."""
        assert self.host is not None and self.host.registry is not None
        registry, tubid = self.host.registry, self.host.tub.getTubID()
        path = self.host.settings.workers_file
        fp = worker.furl_fingerprint
        if fp is not None and fp[0] != tubid:
            raise ConfigErrors([
                f"FurlWorker {worker.name!r}: its FURL belongs to another master (tubid "
                f"{fp[0][:8]}..., this master is {tubid[:8]}...)"
            ])
        furl = registry.furl_of(worker.name)
        if furl is None:
            log.warn("FurlWorker {name} has no line in {path}: it cannot attach until one is "
                     "added (furl-master create-worker -d {basedir} {name})",
                     name=worker.name, path=path, basedir=self.master.basedir)
        elif fp is not None and furl.fingerprint() != fp:
            log.warn("FurlWorker {name}: the FURL given in master.cfg is not the one in "
                     "{path}; the file wins", name=worker.name, path=path)

    # -- the host's consumer (WorkerConsumer) ---------------------------------------
    async def attached(self, session: WorkerSession, connection: FurlConnection) -> None:
        """Hand the session to Buildbot, or refuse it with a WireError (the
        host then forgets it and tells the connection's subscribers)."""
        try:
            await self._attach(session, connection)
        except WireError:
            raise
        except Exception as e:
            # Buildbot refusing a worker (a latent one not substantiating, an
            # attached() that raises) is an answer, not a crash: one line and
            # one typed refusal per attempt, never a traceback
            why = f"{type(e).__name__}: {str(e)[:300]}"
            log.warn("refused worker {name}: Buildbot did not take it ({why})",
                     name=session.name, why=why)
            raise RemoteError(
                f"the Buildbot master refused worker {session.name!r} ({why})"
            ) from None

    async def _attach(self, session: WorkerSession, conn: FurlConnection) -> None:
        master = self.master
        name = session.name
        try:
            worker = master.workers.getWorkerByName(name)
        except KeyError:
            worker = None
        if not getattr(worker, "is_furl_worker", False) or not worker.running:
            log.info("refused worker {name}: master.cfg configures no FurlWorker by that name",
                     name=name)
            raise UnknownWorker(
                f"this Buildbot master configures no FurlWorker named {name!r} "
                "(add it to master.cfg and run 'buildbot reconfig')"
            )
        conn.worker = worker  # whom the connection serves (Buildbot's Connection.worker)
        try:
            await master.workers.newConnection(conn, name)
        except WireError:
            raise
        except RuntimeError as e:
            if "duplicate" not in str(e):
                raise RemoteError(f"the Buildbot master refused worker {name!r}: {e}") from None
            log.info("Buildbot refused a duplicate connection of worker {name}", name=name)
            raise DuplicateWorker(
                f"worker {name!r} is already connected to this Buildbot master"
            ) from None
        except Exception as e:
            raise RemoteError(
                f"the Buildbot master could not set up worker {name!r}: "
                f"{type(e).__name__}: {e}"
            ) from None
        await worker.attached(conn)  # Buildbot logs and swallows its own errors here
        if worker.conn is not conn:
            conn.notifyDisconnected()  # the registry drops the session when we raise
            raise RemoteError(
                f"the Buildbot master could not attach worker {name!r} (see its twistd.log)"
            )
        log.info("FurlWorker {name} attached to Buildbot from {peer}", name=name,
                 peer=session.peer)

    def drain_started(self, session: WorkerSession, connection: FurlConnection) -> int:
        """A graceful stop asked by the worker's admin (furl-worker stop
        --graceful): what a PB worker's ``shutdown`` request does, Buildbot's
        ``shutdownRequested`` (no new builds; once idle, Buildbot calls the
        connection's remoteShutdown).  How many builds still run."""
        worker = connection.worker
        if worker is None:
            return 0
        worker.shutdownRequested()  # idempotent
        return sum(1 for wfb in worker.workerforbuilders.values() if wfb.isBusy())

    def detached(self, session: WorkerSession, connection: FurlConnection) -> None:
        """Nothing more to do: the host has told the connection's subscribers
        (Buildbot) already."""
