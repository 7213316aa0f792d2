"""``pb``, ``pbtls`` and the ``*nd`` diagnostics: Buildbot's own PB transport.

The master is Buildbot's ``PBManager``/``Dispatcher`` (cred portal, real
username/password login) handing out Buildbot's own
``buildbot.worker.protocols.pb.Connection``; the worker is buildbot-worker's
unmodified ``buildbot_worker.pb.Worker``.  Its only stand-ins are a
``MasterService`` with what the Dispatcher needs and a Worker object that
records the connection.  ``pbtls`` listens on ``ssl:`` with the bench's
self-signed certificate, which the worker pins as its only trust root.
The ``nd`` variants set TCP_NODELAY on both ends (stock PB never does;
foolscap always does), to show what is Nagle's algorithm.
"""

from __future__ import annotations

import os
from typing import Any

from buildbot.util.service import MasterService
from buildbot.worker.protocols import pb as bbpb
from buildbot.worker.protocols.manager.pb import PBManager
from twisted.internet import defer, reactor

from bench.transport.nodelay import set_nodelay
from bench.transport.sides.rpc import RpcSide


class BenchMaster(MasterService):
    """What Buildbot's PBManager/Dispatcher/Connection need of a master."""

    def __init__(self) -> None:
        super().__init__()
        self.initLock = defer.DeferredLock()
        self.reactor = reactor


class BenchWorker:
    """What pb.Connection needs of Buildbot's Worker."""

    def __init__(self, side: PbSide, name: str) -> None:
        self.side = side
        self.workername = name

    def attached(self, conn: Any) -> None:
        self.side._attached(self.workername, conn)

    def messageReceivedFromWorker(self) -> None:
        pass

    def shutdownRequested(self) -> None:
        pass


class PbSide(RpcSide):
    key = "pb"
    label = "PB"
    tls = False
    nodelay = False

    async def setup(self, n: int) -> None:
        self.master = BenchMaster()
        self.pbmanager = PBManager()
        await self.pbmanager.setServiceParent(self.master)
        await self.master.startService()
        self.password = "bench-" + os.urandom(8).hex()
        for i in range(n):
            reg = await self.pbmanager.register(self._port_string(), f"w{i}", self.password,
                                                self._make_connection)
        self.port = reg.getPort()

    def _port_string(self) -> str:
        if not self.tls:
            return "tcp:0:interface=127.0.0.1"
        assert self.cert is not None
        return f"ssl:0:interface=127.0.0.1:privateKey={self.cert.key}:certKey={self.cert.cert}"

    def _make_connection(self, mind: Any, username: str) -> Any:
        if self.nodelay:
            set_nodelay(mind.broker.transport)
        return bbpb.Connection(self.master, BenchWorker(self, username), mind)

    def child_config(self, name: str, basedir: str) -> tuple[dict[str, Any], dict[str, str]]:
        if self.tls:
            assert self.cert is not None
            cs = f"tls:host=127.0.0.1:port={self.port}:trustRoots={self.cert.trust_roots}"
        else:
            cs = f"tcp:host=127.0.0.1:port={self.port}"
        cfg = {"kind": "pb", "basedir": basedir, "name": name, "connection_string": cs,
               "nodelay": self.nodelay}
        return cfg, {"BENCH_PASSWORD": self.password}

    async def prepare(self) -> None:
        self.conn = self.handle
        await super().prepare()

    async def teardown(self) -> None:
        await self.master.stopService()


class PbTlsSide(PbSide):
    key = "pbtls"
    label = "PB+TLS"
    tls = True
    needs_cert = True


class PbNoDelaySide(PbSide):
    """Diagnostic: PB with TCP_NODELAY set on both ends (stock PB never does)."""

    key = "pbnd"
    label = "PB nodelay"
    nodelay = True


class PbTlsNoDelaySide(PbTlsSide):
    key = "pbtlsnd"
    label = "PB+TLS nodelay"
    nodelay = True
