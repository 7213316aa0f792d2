"""The standalone furl-master daemon: Tub, worker registry, admin FURL."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from buildbot_furl import __version__
from buildbot_furl.daemon import claim, report_ready, run_reactor
from buildbot_furl.errors import ConfigError
from buildbot_furl.furl import new_swissnum
from buildbot_furl.logs import start_logging
from buildbot_furl.master.admin import Admin
from buildbot_furl.master.config import MasterConfig, check_private
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.privatefiles import write_private
from buildbot_furl.tubs import listen, local_furl, make_tub

log = Logger()


class MasterService(service.MultiService):
    """Listens on the configured port and serves every FURL in workers.furls."""

    def __init__(self, config: MasterConfig) -> None:
        super().__init__()
        self.config = config
        self.tub: Any = None
        self.registry: WorkerRegistry | None = None
        self.admin: Admin | None = None
        #: fires once the port listens, or fails (port in use, no permission)
        self.listening: defer.Deferred[Any] | None = None

    def startService(self) -> None:
        paths = self.config.paths
        check_private(paths)
        self.tub = make_tub(paths.tub_pem, self.config.keepalive, self.config.disconnect_timeout)
        self.tub.setServiceParent(self)
        super().startService()
        _, self.listening = listen(self.tub, self.config.port)
        self.tub.setLocation(*self.config.location)
        self.registry = WorkerRegistry(self.tub, paths.furls,
                                       reload_interval=self.config.reload_interval)
        self.registry.start()
        self.admin = self.make_admin()
        admin_furl = self.tub.registerReference(self.admin, name=new_swissnum())
        admin_furl = local_furl(admin_furl, self.config.port)
        write_private(paths.admin_furl, admin_furl + "\n")
        log.info("furl-master {version} serving {n} worker(s) on {port}, location {loc}",
                 version=__version__, n=len(self.registry.entries), port=self.config.port,
                 loc=",".join(self.config.location))

    def make_admin(self) -> Admin:
        assert self.registry is not None
        return Admin(self.registry, self.config.location)

    def stopService(self) -> defer.Deferred[None]:
        with contextlib.suppress(OSError):
            os.unlink(self.config.paths.admin_furl)
        if self.registry is not None:
            self.registry.stop()
        return defer.maybeDeferred(super().stopService)

    def reload(self) -> None:
        if self.registry is not None:
            self.registry.reload()


def run_master(config: MasterConfig, ready_fd: int | None, to_stderr: bool) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; the exit code."""
    pidfile = claim(config.paths.pidfile, ready_fd, "master")
    if pidfile is None:
        return 1
    logfile = start_logging(config.paths.log, to_stderr, config.log_size, config.log_keep)
    svc = MasterService(config)
    exit_code = [0]

    async def start() -> None:
        try:
            svc.startService()
            await svc.listening
        except (ConfigError, CannotListenError) as e:
            msg = str(e) if isinstance(e, ConfigError) else (
                f"cannot listen on {config.port}: {e.socketError}")
            log.error("cannot start: {msg}", msg=msg)
            report_ready(ready_fd, False, msg)
            exit_code[0] = 1
            reactor.stop()
            return
        report_ready(ready_fd, True, f"pid {os.getpid()}")

    def hup(signum: int, frame: Any) -> None:
        def both() -> None:
            logfile.reopen()
            log.info("SIGHUP: log reopened, re-reading workers.furls")
            svc.reload()

        reactor.callFromThread(both)

    signal.signal(signal.SIGHUP, hup)
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(start()))
    run_reactor(pidfile, svc)
    return exit_code[0]
