"""``furl``: buildbot_furl's master, as standalone and Buildbot masters run it.

The master is the project's one master host (``MasterHost``: the Tub made
from ``private/tub.pem``, the ``WorkerRegistry`` fed by ``workers.furls``,
the listener) on a master directory made by ``master.config.create``.  This
side is the host's consumer (master/consumer.py): the host hands it each
session with the ``FurlConnection`` it made for it, the object the Buildbot
plugin hands to Buildbot.  The worker is buildbot_furl's
``WorkerService`` (see child.py).
"""

from __future__ import annotations

from typing import Any

from foolscap.util import allocate_tcp_port

from bench.transport.sides.rpc import RpcSide
from buildbot_furl import furlsfile
from buildbot_furl.furl import Furl, new_swissnum
from buildbot_furl.master import config
from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.host import HostSettings, MasterHost
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.tubs import make_tub

#: how often the host checks workers.furls: the file does not change here
RELOAD_INTERVAL = 3600.0


class FurlSide(RpcSide):
    key = "furl"
    label = "FURL"

    async def setup(self, n: int) -> None:
        port = allocate_tcp_port()
        location, listen_on = f"tcp:127.0.0.1:{port}", f"tcp:{port}:interface=127.0.0.1"
        paths = config.create(str(self.tmp / "master"), location, listen_on).paths
        tubid = make_tub(paths.tub_pem).getTubID()  # creates the key (0600)
        self.furls: dict[str, str] = {}
        with furlsfile.update(paths.furls, tubid) as ff:
            for i in range(n):
                furl = Furl(tubid, (location,), new_swissnum())
                ff.add(f"w{i}", furl)
                self.furls[f"w{i}"] = str(furl)
        settings = HostSettings(paths, listen_on, (location,), reload_interval=RELOAD_INTERVAL)
        self.host = MasterHost(settings, lambda workers: self)
        self.host.startService()
        await self.host.listen()

    # -- the host's consumer ---------------------------------------------------------
    def attached(self, session: WorkerSession, connection: FurlConnection) -> None:
        self._attached(session.name, session)

    def detached(self, session: WorkerSession, connection: FurlConnection) -> None:
        pass

    def drain_started(self, session: WorkerSession, connection: FurlConnection) -> int:
        return 0

    def child_config(self, name: str, basedir: str) -> tuple[dict[str, Any], dict[str, str]]:
        return {"kind": "furl", "basedir": basedir}, {"BENCH_FURL": self.furls[name]}

    async def prepare(self) -> None:
        conn = self.host.connection_of(self.handle)
        assert conn is not None, "the worker is not attached"
        self.conn = conn
        await super().prepare()

    async def teardown(self) -> None:
        await self.host.stopService()
