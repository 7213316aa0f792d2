"""A master host with one worker in workers.furls, in-process, and a
consumer that writes down what the host tells it: for the unit tests of
the host (no process, no network: attaches are made with a fake bot)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

from twisted.internet.task import Clock

from buildbot_furl import furlsfile
from buildbot_furl.furl import Furl, new_swissnum
from buildbot_furl.layout import MasterPaths
from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.consumer import Workers
from buildbot_furl.master.host import HostSettings, MasterHost
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.protocol import PROTOCOL_VERSIONS
from buildbot_furl.protocol.messages import AttachInfo
from buildbot_furl.testing.fakes import FakeBot
from buildbot_furl.tubs import make_tub


class Recorder:
    """A consumer that writes down what the host tells it."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.seen: list[tuple[str, WorkerSession, FurlConnection]] = []
        self.refuse: Exception | None = None
        self.running = 0

    def attached(self, session: WorkerSession, connection: FurlConnection) -> None:
        self.seen.append(("attached", session, connection))
        if self.refuse is not None:
            raise self.refuse

    def detached(self, session: WorkerSession, connection: FurlConnection) -> None:
        self.seen.append(("detached", session, connection))

    def drain_started(self, session: WorkerSession, connection: FurlConnection) -> int:
        self.seen.append(("drain", session, connection))
        return self.running


def host_with_w1(tmp_path: pathlib.Path, clock: Clock | None = None,
                 **settings: Any) -> tuple[MasterHost, str]:
    """A started host (a Recorder its consumer) whose workers.furls lists
    ``w1``; and w1's swissnum.  ``settings``: more of HostSettings."""
    paths = MasterPaths(str(tmp_path))
    os.mkdir(paths.private, 0o700)
    tubid = make_tub(paths.tub_pem).getTubID()
    swiss = new_swissnum()
    with furlsfile.update(paths.furls, tubid) as ff:
        ff.add("w1", Furl(tubid, ("tcp:127.0.0.1:9",), swiss))
    host = MasterHost(HostSettings(paths, "tcp:0:interface=127.0.0.1", ("tcp:127.0.0.1:9",),
                                   **settings), Recorder,
                      clock=clock if clock is not None else Clock())
    host.startService()
    return host, swiss


async def attach_w1(host: MasterHost, swiss: str) -> WorkerSession:
    """w1 attaches (a fake bot at the login its FURL reaches); its session."""
    assert host.registry is not None
    login = host.registry._lookup(swiss)  # what a worker dialing its FURL reaches
    await host.registry.attach(login, FakeBot(), AttachInfo(tuple(PROTOCOL_VERSIONS), "t", {}))
    session = host.session_of("w1")
    assert session is not None
    return session
