"""The admin capability: what the CLI may ask of a running master.

Published at ``private/admin.furl`` (0600) with a fresh swissnum at every
start; holding that file is the permission, there is no password.
"""

from __future__ import annotations

import os
import time
from typing import Any

from foolscap.api import Referenceable
from zope.interface import implementer

from buildbot_furl import __version__
from buildbot_furl.errors import BadRequest
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.master.standalone import Standalone
from buildbot_furl.protocol import RIAdmin, decode, remote_method


def _request(raw: bytes) -> dict[str, Any]:
    req = decode(raw)
    if not isinstance(req, dict):
        raise BadRequest("the request must be a map")
    return req


@implementer(RIAdmin)
class Admin(Referenceable):
    def __init__(self, registry: WorkerRegistry, location: tuple[str, ...],
                 standalone: bool = True) -> None:
        self.registry = registry
        self.location = location
        self.started = time.time()
        # under Buildbot the builders own the workers: no run/put/get there
        self.standalone = Standalone(registry) if standalone else None

    def _standalone(self) -> Standalone:
        if self.standalone is None:
            raise BadRequest("run, put and get are not available on a Buildbot master: "
                             "its builders own the workers (use a build instead)")
        return self.standalone

    @remote_method
    def remote_status(self) -> dict[str, Any]:
        workers = self.registry.describe()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started,
            "location": ",".join(self.location),
            "workers": len(workers),
            "connected": sum(1 for w in workers if w["connected"]),
            "kind": "standalone" if self.standalone is not None else "buildbot",
            "problems": [self.registry.problem] if self.registry.problem else [],
        }

    @remote_method
    def remote_listWorkers(self) -> list[dict[str, Any]]:
        return self.registry.describe()

    @remote_method
    async def remote_run(self, worker: str, request: bytes, out: Any) -> dict[str, Any]:
        return await self._standalone().run(worker, _request(request), out)

    @remote_method
    def remote_interrupt(self, run_id: str) -> bool:
        return self._standalone().interrupt(run_id)

    @remote_method
    async def remote_put(self, worker: str, request: bytes, source: Any) -> dict[str, Any]:
        return await self._standalone().put(worker, _request(request), source)

    @remote_method
    async def remote_get(self, worker: str, request: bytes, sink: Any) -> dict[str, Any]:
        return await self._standalone().get(worker, _request(request), sink)
