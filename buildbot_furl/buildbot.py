"""Buildbot plugin: FURL workers on a real, unpatched Buildbot master.

In ``master.cfg``::

    from buildbot.plugins import worker
    from buildbot_furl.buildbot import load_workers

    c['workers'] = load_workers(os.path.join(basedir, 'workers.furls'))
    # or one by one: worker.FurlWorker('linux1')
    c['protocols'] = {'furl': {'port': 9990}}

The master's directory holds what ``furl-master create-master -d
BASEDIR --location tcp:HOST:PORT`` made there: ``private/tub.pem`` (the
key every FURL's TUBID pins), ``furl-master.conf`` and ``workers.furls``.

The first :class:`FurlWorker` to start creates one :class:`FurlHub` per
master (a shared service parented to the master, stopped last).  The hub
owns the foolscap Tub and a :class:`~buildbot_furl.master.registry.WorkerRegistry`
that watches ``workers.furls``.  When a worker process attaches, the hub
hands a :class:`~buildbot_furl.master.connection.FurlConnection` to
Buildbot exactly as Buildbot's own transports do: ``newConnection`` on the
worker manager, then ``attached`` on the worker.  Nothing of Buildbot is
patched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

from buildbot.config.errors import ConfigErrors
from buildbot.config.errors import error as config_error
from buildbot.util import service as bbservice
from buildbot.worker import Worker
from twisted.internet import defer, endpoints, reactor
from twisted.logger import Logger

from buildbot_furl import furlsfile
from buildbot_furl.daemon import PidFile
from buildbot_furl.errors import (
    ConfigError,
    DuplicateWorker,
    RemoteError,
    UnknownWorker,
    WireError,
)
from buildbot_furl.furl import Furl, new_swissnum, parse_furl, secret_digest
from buildbot_furl.master import config as mconfig
from buildbot_furl.master.admin import Admin
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.privatefiles import check_private_mode, write_private
from buildbot_furl.tubs import listen, local_furl, make_tub

log = Logger()

PROTOCOL_KEY = "furl"
LISTEN_RETRY = 10.0  # seconds between tries of a port that could not be had
PROTOCOL_OPTIONS = frozenset({"port", "location", "furls"})

__all__ = ["FurlHub", "FurlWorker", "HubSettings", "furl_protocol", "hub_settings",
           "load_workers"]


class CannotListen(Exception):
    """The FURL port cannot be listened on (in use, no permission)."""


# -- configuration ---------------------------------------------------------------


def _fingerprint(furl: Furl) -> tuple[str, str]:
    """What a worker object keeps of its FURL: never the secret itself."""
    return (furl.tubid, secret_digest(furl.swissnum))


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


@dataclasses.dataclass(frozen=True)
class HubSettings:
    """Where the hub listens and which files it uses."""

    port: str
    location: tuple[str, ...]
    furls_path: str
    paths: mconfig.MasterPaths
    keepalive: int
    disconnect_timeout: int


def hub_settings(basedir: str, protocols: dict[str, Any]) -> HubSettings:
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
    paths = mconfig.MasterPaths(os.path.abspath(basedir))
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
            f"{paths.basedir} has no {mconfig.CONF_NAME}: run "
            f"'furl-master create-master -d {paths.basedir} --location tcp:HOST:PORT' "
            "there first (it makes the master's key and workers.furls)"
        )
    furls_path = opts.get("furls") or paths.furls
    if not isinstance(furls_path, str):
        raise ConfigError("c['protocols']['furl']['furls'] must be a path")
    furls_path = os.path.join(paths.basedir, os.path.expanduser(furls_path))
    if not os.path.exists(paths.tub_pem):
        raise ConfigError(
            f"{paths.tub_pem} is missing: the master's key is made by "
            f"'furl-master create-master -d {paths.basedir} --location tcp:HOST:PORT'"
        )
    return HubSettings(
        port=port,
        location=location,
        furls_path=os.path.abspath(furls_path),
        paths=paths,
        keepalive=conf.keepalive if conf else 30,
        disconnect_timeout=conf.disconnect_timeout if conf else 90,
    )


def furl_protocol(basedir: str, **options: Any) -> dict[str, Any]:
    """``c['protocols']['furl']`` with the port of ``BASEDIR/furl-master.conf``,
    so that the port is written down in one place only."""
    try:
        conf = mconfig.load(basedir)
    except ConfigError as e:
        config_error(str(e))
        return {}
    return {"port": conf.port, **options}


def load_workers(path: str, **worker_kwargs: Any) -> list[FurlWorker]:
    """One :class:`FurlWorker` per line of a ``workers.furls`` file.

    ``path`` may also be the directory holding it.  ``worker_kwargs``
    (``max_builds``, ``properties``, ...) go to every worker.  Errors in
    the file become Buildbot configuration errors naming file and line.
    """
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        path = os.path.join(path, furlsfile.FILENAME)
    if not os.path.exists(path):
        config_error(f"{path} does not exist (make it with: furl-master create-master -d DIR)")
        return []
    try:
        ff = furlsfile.read(path)
    except ConfigError as e:
        config_error(str(e))
        return []
    return [FurlWorker(e.name, furl=e.furl, **worker_kwargs) for e in ff.entries]


# -- the worker ------------------------------------------------------------------


class FurlWorker(Worker):
    """A Buildbot worker that attaches through its FURL instead of PB.

    ``FurlWorker(name, furl=None, **kwargs)``: ``kwargs`` are those of
    Buildbot's ``Worker`` less ``password`` (a FURL worker has none and
    so can never log in over PB).  ``furl``, if given, must belong to this
    master; whether a worker may attach is decided by ``workers.furls``
    alone (``furl`` only lets the master warn when the two disagree).
    """

    def __init__(self, name: str, furl: str | Furl | None = None, **kwargs: Any) -> None:
        if kwargs.pop("password", None) is not None:
            config_error(f"FurlWorker {name!r}: takes no password (its FURL is its credential)")
        self.furl_fingerprint: tuple[str, str] | None = None
        if furl is not None:
            try:
                parsed = furl if isinstance(furl, Furl) else parse_furl(str(furl))
            except ConfigError as e:
                config_error(f"FurlWorker {name!r}: {e}")
            else:
                self.furl_fingerprint = _fingerprint(parsed)
        self.hub: FurlHub | None = None
        super().__init__(name, None, **kwargs)

    def checkConfig(self, name: str, password: Any = None, **kwargs: Any) -> None:
        super().checkConfig(name, None, **kwargs)

    @defer.inlineCallbacks
    def reconfigServiceWithSibling(self, sibling: Any) -> Any:
        self.furl_fingerprint = sibling.furl_fingerprint
        yield super().reconfigServiceWithSibling(sibling)
        if self.hub is not None:
            self.hub.check_worker(self)

    @defer.inlineCallbacks
    def reconfigService(self, name: str, password: Any = None, **kwargs: Any) -> Any:
        # password None: the base class then registers nothing with PB
        yield super().reconfigService(name, None, **kwargs)
        try:
            self.hub = yield FurlHub.getService(self.master)
        except Exception as e:
            if isinstance(e, ConfigErrors):
                for msg in e.errors:
                    log.error("FURL workers cannot start: {msg}", msg=msg)
            # a hub that failed to start must not be found by the next worker
            broken = self.master.namedServices.get(FurlHub.getName())
            if broken is not None:
                yield broken.disownServiceParent()
            raise


# -- the hub ---------------------------------------------------------------------


class FurlHub(bbservice.ReconfigurableServiceMixin, bbservice.SharedService):
    """One per Buildbot master: the Tub, the registry, the live connections.

    Get it with ``yield FurlHub.getService(master)``.  Its key is the
    master's ``private/tub.pem``.  It deliberately sets no location on the
    Tub: it publishes nothing, and without a location foolscap gives the
    objects it passes to workers no global name.
    """

    # reconfigured before the workers (WorkerManager is 127), so edits to
    # workers.furls are applied before new FurlWorkers look at them
    reconfig_priority = 200

    def __init__(self) -> None:
        super().__init__()
        self.settings: HubSettings | None = None
        self.tub: Any = None
        self.listener: Any = None
        self.registry: WorkerRegistry | None = None
        self.connections: dict[WorkerSession, Any] = {}  # session -> its FurlConnection
        self.pidfile: PidFile | None = None
        self.admin_furl: str | None = None
        self._listen_retry: Any = None  # a delayed call while the port cannot be had
        self._listen_failed = False

    # -- lifecycle --------------------------------------------------------------
    def startService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        # running first (no children yet): if what follows fails, the
        # worker that created us can still stop and disown us cleanly
        await super().startService()
        try:
            settings = hub_settings(self.master.basedir, self.master.config.protocols)
            mconfig.check_private(settings.paths)
            check_private_mode(settings.furls_path)
            tub = make_tub(settings.paths.tub_pem, settings.keepalive,
                           settings.disconnect_timeout)
            registry = WorkerRegistry(tub, settings.furls_path, on_attach=self._on_attach,
                                      on_detach=self._on_detach)
            registry.start()  # reads workers.furls: a bad file stops us here
        except ConfigError as e:
            raise ConfigErrors([str(e)]) from None
        self.settings = settings
        self.tub = tub
        self.registry = registry
        tub.setServiceParent(self)  # starts it: we are running
        await self._try_listen()

    async def _try_listen(self, announce: bool = False) -> None:
        """Listen on the configured port.  A port that cannot be had (in use,
        no permission) does not stop the Buildbot master: it is logged once,
        tried again every LISTEN_RETRY seconds and at every reconfig, and the
        FURL workers stay disconnected meanwhile."""
        self._listen_retry = None
        settings = self.settings
        if settings is None or self.listener is not None or not self.running:
            return
        try:
            self.listener = await self._listen(settings.port)
        except CannotListen as e:
            if announce or not self._listen_failed:
                log.error("FURL workers: {err}; they stay disconnected until the port is "
                          "free (tried again every {n:.0f} s and at every reconfig)",
                          err=str(e), n=LISTEN_RETRY)
            self._listen_failed = True
            self._listen_retry = reactor.callLater(
                LISTEN_RETRY, lambda: defer.Deferred.fromCoroutine(self._try_listen()))
            return
        if self._listen_failed:
            log.info("FURL workers: the port {port} is free now", port=settings.port)
        self._listen_failed = False
        self._publish_admin(settings)
        assert self.registry is not None and self.tub is not None
        log.info("FURL workers: listening on {port} (workers dial {loc}), tubid {tubid}, "
                 "{n} worker(s) in {path}", port=settings.port, loc=",".join(settings.location),
                 tubid=self.tub.getTubID(), n=len(self.registry.entries),
                 path=settings.furls_path)

    def _cancel_listen_retry(self) -> None:
        if self._listen_retry is not None and self._listen_retry.active():
            self._listen_retry.cancel()
        self._listen_retry = None

    def _publish_admin(self, settings: HubSettings) -> None:
        """Let ``furl-master status/list-workers -d BASEDIR`` see live state:
        the same admin FURL and pid-file lock a standalone master has."""
        pidfile = PidFile(settings.paths.pidfile, "master")
        try:
            pidfile.acquire()
        except ConfigError as e:
            log.warn("FURL workers: not publishing the admin FURL: {err}", err=str(e))
            return
        self.pidfile = pidfile
        self.tub.setLocation(*settings.location)
        admin = Admin(self.registry, settings.location, standalone=False)
        self.admin_furl = self.tub.registerReference(admin, name=new_swissnum())
        write_private(settings.paths.admin_furl,
                            local_furl(self.admin_furl, settings.port) + "\n")

    def _unpublish_admin(self) -> None:
        if self.pidfile is None or self.settings is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.settings.paths.admin_furl)
        self.pidfile.release()
        self.pidfile = None

    async def _listen(self, port: str) -> Any:
        try:
            listener, listening = listen(self.tub, port)
        except ConfigError as e:
            raise ConfigErrors([str(e)]) from None
        try:
            await listening
        except Exception as e:
            await defer.maybeDeferred(self.tub.stopListeningOn, listener)
            why = getattr(e, "socketError", None) or e
            raise CannotListen(f"cannot listen on {port}: {why}") from None
        return listener

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._cancel_listen_retry()
        self._unpublish_admin()
        if self.registry is not None:
            self.registry.stop()
        for conn in list(self.connections.values()):
            conn.loseConnection()
        self.connections.clear()
        await super().stopService()

    def reconfigServiceWithBuildbotConfig(self, new_config: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._reconfig(new_config))

    async def _reconfig(self, new_config: Any) -> None:
        if self.settings is None or self.registry is None:
            return
        if PROTOCOL_KEY not in new_config.protocols:
            log.warn("c['protocols']['furl'] was removed: FURL workers keep being served on "
                     "{port} until the master restarts", port=self.settings.port)
            self.registry.reload()
            return
        try:
            new = hub_settings(self.master.basedir, new_config.protocols)
        except ConfigError as e:
            raise ConfigErrors([str(e)]) from None
        old = self.settings
        if self.listener is None:
            self._cancel_listen_retry()
            self.settings = new
            await self._try_listen(announce=True)
        elif new.port != old.port:
            try:
                listener = await self._listen(new.port)
            except CannotListen as e:
                raise ConfigErrors([f"FURL workers: {e}; still listening on {old.port}"]) \
                    from None
            await defer.maybeDeferred(self.tub.stopListeningOn, self.listener)
            self.listener = listener
            log.info("FURL workers: now listening on {port}", port=new.port)
        if new.furls_path != old.furls_path:
            log.warn("FURL workers: a new workers.furls path applies after a restart; "
                     "still watching {path}", path=old.furls_path)
            new = dataclasses.replace(new, furls_path=old.furls_path)
        self.settings = new
        self.registry.reload()

    # -- checks -----------------------------------------------------------------
    def check_worker(self, worker: FurlWorker) -> None:
        """Tell the admin about a worker that cannot attach as configured."""
        assert self.registry is not None and self.tub is not None
        fp = worker.furl_fingerprint
        if fp is not None and fp[0] != self.tub.getTubID():
            raise ConfigErrors([
                f"FurlWorker {worker.name!r}: its FURL belongs to another master (tubid "
                f"{fp[0][:8]}..., this master is {self.tub.getTubID()[:8]}...)"
            ])
        entry = self.registry.entries.get(worker.name)
        if entry is None:
            log.warn("FurlWorker {name} has no line in {path}: it cannot attach until one is "
                     "added (furl-master create-worker -d {basedir} {name})",
                     name=worker.name, path=self.registry.furls_path,
                     basedir=self.master.basedir)
        elif fp is not None and _fingerprint(entry.furl) != fp:
            log.warn("FurlWorker {name}: the FURL given in master.cfg is not the one in "
                     "{path}; the file wins", name=worker.name, path=self.registry.furls_path)

    # -- attach / detach --------------------------------------------------------
    async def _on_attach(self, session: WorkerSession) -> None:
        """The registry's hook: hand the session to Buildbot, or refuse it
        with a WireError (the registry then drops it and calls _on_detach)."""
        try:
            await self._attach(session)
        except WireError:
            raise
        except Exception as e:
            log.failure("attaching worker {name} to Buildbot failed", name=session.name)
            raise RemoteError(
                f"the Buildbot master could not set up worker {session.name!r}: "
                f"{type(e).__name__}"
            ) from None

    async def _attach(self, session: WorkerSession) -> None:
        from buildbot_furl.master.connection import FurlConnection

        master = self.master
        name = session.name
        try:
            worker = master.workers.getWorkerByName(name)
        except KeyError:
            worker = None
        if not isinstance(worker, FurlWorker) or not worker.running:
            log.info("refused worker {name}: master.cfg configures no FurlWorker by that name",
                     name=name)
            raise UnknownWorker(
                f"this Buildbot master configures no FurlWorker named {name!r} "
                "(add it to master.cfg and run 'buildbot reconfig')"
            )
        conn = FurlConnection(session, master=master, worker=worker)
        self.connections[session] = conn
        conn.notifyOnDisconnect(lambda: self.connections.pop(session, None))
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

    def _on_detach(self, session: WorkerSession) -> None:
        conn = self.connections.pop(session, None)
        if conn is not None:
            # The registry has dropped (or is dropping) the session itself.
            # Tell Buildbot now rather than when TCP closes, so that a
            # replacing connection finds the worker free (notifying is
            # idempotent).
            conn.notifyDisconnected()
