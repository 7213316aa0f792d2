"""The admin capability: what the CLI may ask of a running master.

Published at ``private/admin.furl`` (0600) with a fresh swissnum at every
start; holding that file is the permission, there is no password.  Each
kind of master publishes the object that fits it:

* :class:`AdminStatus` (``RIAdminStatus``): status and the worker list.
  A Buildbot master publishes this only: its builders own the workers.
* :class:`StandaloneAdmin` (``RIAdmin``): the same, plus run, interrupt,
  put and get, carried out by :class:`~buildbot_furl.master.standalone.Standalone`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from foolscap.api import Referenceable
from zope.interface import implementer

from buildbot_furl import __version__
from buildbot_furl.master.invites import Invites
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.master.standalone import Standalone
from buildbot_furl.protocol import RIAdmin, RIAdminStatus, remote_method
from buildbot_furl.protocol.messages import (
    DrainAnswer,
    GetRequest,
    InviteRequest,
    PutRequest,
    RunRequest,
    StatusAnswer,
)


class _Status(Referenceable):
    """What both admin objects answer: status and the worker list."""

    kind = ""

    def __init__(self, registry: WorkerRegistry, location: tuple[str, ...],
                 invites: Invites) -> None:
        self.registry = registry
        self.location = location
        self.invites = invites
        self.started = time.time()

    def status(self) -> StatusAnswer:
        workers = self.registry.rows()
        return StatusAnswer(
            version=__version__, pid=os.getpid(), started=self.started,
            location=",".join(self.location), workers=len(workers),
            connected=sum(1 for w in workers if w.connected), kind=self.kind,
            problems=self.registry.problems(), refusals=self.registry.refusal_counts())

    @remote_method
    def remote_status(self) -> dict[str, Any]:
        return self.status().to_wire()

    @remote_method
    def remote_listWorkers(self) -> list[dict[str, Any]]:
        return [row.to_wire() for row in self.registry.rows()]

    @remote_method
    async def remote_invite(self, request: bytes) -> dict[str, Any]:
        answer = await self.invites.invite(InviteRequest.from_wire(request))
        return answer.to_wire()

    @remote_method
    def remote_cancelInvite(self, name: str) -> bool:
        return self.invites.cancel(name)

    @remote_method
    def remote_listInvites(self) -> list[dict[str, Any]]:
        return [row.to_wire() for row in self.invites.rows()]


@implementer(RIAdminStatus)
class AdminStatus(_Status):
    kind = "buildbot"


@implementer(RIAdmin)
class StandaloneAdmin(_Status):
    kind = "standalone"

    def __init__(self, registry: WorkerRegistry, location: tuple[str, ...],
                 invites: Invites, standalone: Standalone) -> None:
        super().__init__(registry, location, invites)
        self.standalone = standalone

    @remote_method
    async def remote_run(self, worker: str, request: bytes, out: Any) -> dict[str, Any]:
        answer = await self.standalone.run(worker, RunRequest.from_wire(request), out)
        return answer.to_wire()

    @remote_method
    def remote_interrupt(self, run_id: str) -> bool:
        return self.standalone.interrupt(run_id)

    @remote_method
    async def remote_put(self, worker: str, request: bytes, source: Any) -> dict[str, Any]:
        answer = await self.standalone.put(worker, PutRequest.from_wire(request), source)
        return answer.to_wire()

    @remote_method
    def remote_drain(self, worker: str) -> dict[str, Any]:
        return DrainAnswer(self.standalone.drain(worker)).to_wire()

    @remote_method
    async def remote_get(self, worker: str, request: bytes, sink: Any) -> dict[str, Any]:
        info = await self.standalone.get(worker, GetRequest.from_wire(request), sink)
        return info.to_wire()
