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
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.protocol import RIAdmin, remote_method


@implementer(RIAdmin)
class Admin(Referenceable):
    def __init__(self, registry: WorkerRegistry, location: tuple[str, ...]) -> None:
        self.registry = registry
        self.location = location
        self.started = time.time()

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
        }

    @remote_method
    def remote_listWorkers(self) -> list[dict[str, Any]]:
        return self.registry.describe()
