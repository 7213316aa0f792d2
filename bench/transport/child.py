"""Worker side of bench_transport.py: one process, one transport, its own reactor.

Started by bench/transport/run.py (through children.py), never by hand.
The parent passes a JSON config in the environment variable ``BENCH_CHILD``::

    {"kind": "furl" | "pb" | "tls", "basedir": DIR, ...}

* ``furl``: buildbot_furl's WorkerService (the furl-worker daemon's
  service: FurlBot + foolscap Reconnector + attach) dialing ``BENCH_FURL``.
* ``pb``: buildbot-worker's own ``buildbot_worker.pb.Worker`` (BotPb,
  AutoLoginPBFactory, ClientService) dialing ``connection_string``
  (``tcp:...`` or ``tls:...``), with ``name``/``BENCH_PASSWORD``.
* ``tls``: a bare Twisted TLS client speaking the tiny framing protocol of
  raw_worker.py (no RPC at all): the baseline.

Control is by lines on stdin/stdout, so that the expensive part of start-up
(imports, key generation) is over before the parent starts its clock:

    child  -> parent   ``ready``   set up, not connected yet
    parent -> child    ``go``      connect now (the parent times go -> attach)
    parent -> child    ``quit``    stop the service and exit (EOF does the same)

The child asks the kernel to SIGTERM it when the parent dies, so a crashed
benchmark leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from buildbot_furl.testing.procs import die_with_parent

Starter = tuple[Callable[[], Any], Callable[[], Any]]  # (connect, disconnect)


def build_furl(cfg: dict[str, Any]) -> Starter:
    from buildbot_furl.furl import parse_furl
    from buildbot_furl.layout import WorkerPaths
    from buildbot_furl.tubs import DEFAULT_DISCONNECT_TIMEOUT, DEFAULT_KEEPALIVE
    from buildbot_furl.worker.service import WorkerService

    os.chdir(cfg["basedir"])
    svc = WorkerService(WorkerPaths(cfg["basedir"]), parse_furl(os.environ["BENCH_FURL"]),
                        DEFAULT_KEEPALIVE, DEFAULT_DISCONNECT_TIMEOUT)
    return svc.startService, svc.stopService


def build_pb(cfg: dict[str, Any]) -> Starter:
    from buildbot_worker.pb import Worker

    if cfg.get("nodelay"):
        _pb_nodelay()
    os.chdir(cfg["basedir"])
    worker = Worker(None, None, cfg["name"], os.environ["BENCH_PASSWORD"], cfg["basedir"],
                    keepalive=0, connection_string=cfg["connection_string"])
    return worker.startService, worker.stopService


def _pb_nodelay() -> None:
    """The diagnostic variant: Twisted PB never sets TCP_NODELAY (foolscap does)."""
    from twisted.spread import pb

    from bench.transport.nodelay import set_nodelay

    made = pb.Broker.connectionMade

    def connectionMade(self: Any) -> None:
        made(self)
        set_nodelay(self.transport)

    pb.Broker.connectionMade = connectionMade


def build_tls(cfg: dict[str, Any]) -> Starter:
    from bench.transport.raw_worker import build

    return build(cfg)


BUILDERS: dict[str, Callable[[dict[str, Any]], Starter]] = {
    "furl": build_furl, "pb": build_pb, "tls": build_tls}


def control(start: Callable[[], Any], stop: Callable[[], Any]) -> Any:
    """The stdin/stdout line protocol: ``ready``; ``go``, ``quit``, EOF."""
    from twisted.internet import defer, reactor
    from twisted.protocols.basic import LineOnlyReceiver

    stopping = []

    def shutdown() -> None:
        if stopping:
            return
        stopping.append(True)
        d = defer.maybeDeferred(stop)
        d.addTimeout(5, reactor)
        d.addBoth(lambda _: reactor.stop())

    class Control(LineOnlyReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.sendLine(b"ready")

        def lineReceived(self, line: bytes) -> None:
            if line == b"go":
                start()
            elif line == b"quit":
                shutdown()

        def connectionLost(self, reason: Any) -> None:
            shutdown()

    return Control()


def run_reactor() -> None:
    """reactor.run(), under cProfile when the parent asks (``--profile-workers``)."""
    from twisted.internet import reactor

    profile = os.environ.get("BENCH_PROFILE")
    if not profile:
        reactor.run()
        return
    import cProfile

    prof = cProfile.Profile()
    prof.runcall(reactor.run)
    prof.dump_stats(profile)


def main() -> None:
    die_with_parent()
    cfg = json.loads(os.environ["BENCH_CHILD"])
    from twisted.internet import reactor, stdio

    start, stop = BUILDERS[cfg["kind"]](cfg)
    reactor.callWhenRunning(stdio.StandardIO, control(start, stop))
    run_reactor()


if __name__ == "__main__":
    main()
