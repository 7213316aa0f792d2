"""The standalone ``furl-master`` daemon: a master host plus what only it has.

On top of :class:`~buildbot_furl.master.host.MasterHost`: the pid file, the
daemon's log and signals (SIGHUP: reopen the log and re-read
workers.furls), and the admin object that can run commands and move files
(:class:`~buildbot_furl.master.admin.StandaloneAdmin`).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.logger import Logger

from buildbot_furl import __version__
from buildbot_furl.daemon import claim, report_ready, run_reactor
from buildbot_furl.errors import ConfigError
from buildbot_furl.logs import start_logging
from buildbot_furl.master.admin import StandaloneAdmin
from buildbot_furl.master.config import MasterConfig
from buildbot_furl.master.host import CannotListen, HostSettings, MasterHost
from buildbot_furl.master.mailbox import CannotServeMailbox
from buildbot_furl.master.standalone import Standalone
from buildbot_furl.metrics.serve import CannotServeMetrics

log = Logger()


class MasterService(service.MultiService):
    """A standalone master: serves every FURL in workers.furls, and the CLI."""

    def __init__(self, config: MasterConfig) -> None:
        super().__init__()
        self.config = config
        self.host = MasterHost(HostSettings.from_config(config), Standalone)
        self.host.setServiceParent(self)

    async def start(self) -> None:
        """Start, listen, serve the metrics (if asked) and publish the admin
        FURL; ConfigError, CannotListen or CannotServeMetrics if that cannot be done."""
        self.startService()
        await self.host.listen()
        await self.host.serve_metrics()
        await self.host.open_invites()
        registry = self.host.registry
        assert registry is not None and isinstance(self.host.consumer, Standalone)
        assert self.host.invites is not None
        await self.host.publish_admin(StandaloneAdmin(registry, self.config.location,
                                                      self.host.invites, self.host.consumer))
        log.info("furl-master {version} serving {n} worker(s) on {port}, location {loc}",
                 version=__version__, n=self.host.listed(), port=self.config.port,
                 loc=",".join(self.config.location))

    def reload(self) -> None:
        self.host.reload()


class _DaemonStartup:
    """Start-up of the daemon: report the verdict through the readiness pipe."""

    def __init__(self, svc: MasterService, ready_fd: int | None) -> None:
        self.svc = svc
        self.ready_fd = ready_fd
        self.exit_code = 0

    async def run(self) -> None:
        try:
            await self.svc.start()
        except (ConfigError, CannotListen, CannotServeMetrics, CannotServeMailbox) as e:
            log.error("cannot start: {msg}", msg=str(e))
            report_ready(self.ready_fd, False, str(e))
            self.exit_code = 1
            reactor.stop()
            return
        report_ready(self.ready_fd, True, f"pid {os.getpid()}")


def run_master(config: MasterConfig, ready_fd: int | None, to_stderr: bool) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; the exit code."""
    pidfile = claim(config.paths.pidfile, ready_fd, "master")
    if pidfile is None:
        return 1
    logfile = start_logging(config.paths.log, to_stderr, config.log_size, config.log_keep)
    svc = MasterService(config)
    startup = _DaemonStartup(svc, ready_fd)

    def on_hup() -> None:
        logfile.reopen()
        log.info("SIGHUP: log reopened, re-reading workers.furls")
        svc.reload()

    def hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(on_hup)

    signal.signal(signal.SIGHUP, hup)
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(startup.run()))
    run_reactor(pidfile, svc)
    return startup.exit_code
