"""Where each file of a master's and of a worker's directory lives.

Shared by the daemons, the admin client and the CLI (all of which read or
write files in these directories); it knows nothing else of either side.
"""

from __future__ import annotations

import dataclasses
import os

CONF_NAME = "furl-master.conf"
FURLS_NAME = "workers.furls"


@dataclasses.dataclass(frozen=True)
class MasterPaths:
    basedir: str

    def _p(self, *parts: str) -> str:
        return os.path.join(self.basedir, *parts)

    @property
    def conf(self) -> str:
        return self._p(CONF_NAME)

    @property
    def furls(self) -> str:
        return self._p(FURLS_NAME)

    @property
    def private(self) -> str:
        return self._p("private")

    @property
    def tub_pem(self) -> str:
        return self._p("private", "tub.pem")

    @property
    def admin_furl(self) -> str:
        return self._p("private", "admin.furl")

    @property
    def invites(self) -> str:
        """Pending invites, with their codes (0600; master/invites.py)."""
        return self._p("private", "invites.json")

    @property
    def log(self) -> str:
        return self._p("master.log")

    @property
    def pidfile(self) -> str:
        return self._p("furl-master.pid")


#: the files of a worker directory that are the worker's own, not its builds'
WORKER_FILES = ("master.furl", "furl-worker.pid", "furl-worker.state", "furl-worker.conf",
                "furl-worker.policy", "worker.log")
POLICY_NAME = "furl-worker.policy"
SETTINGS_NAME = "furl-worker.conf"


@dataclasses.dataclass(frozen=True)
class WorkerPaths:
    basedir: str

    @property
    def furl(self) -> str:
        return os.path.join(self.basedir, "master.furl")

    @property
    def furl_new(self) -> str:
        """A FURL set-furl asks the worker to try; master.furl once it attached."""
        return os.path.join(self.basedir, "master.furl.new")

    @property
    def info(self) -> str:
        return os.path.join(self.basedir, "info")

    @property
    def log(self) -> str:
        return os.path.join(self.basedir, "worker.log")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.basedir, "furl-worker.pid")

    @property
    def policy(self) -> str:
        """What the worker allows its master (optional; see worker/policy.py)."""
        return os.path.join(self.basedir, POLICY_NAME)

    @property
    def settings(self) -> str:
        """umask, numcpus, maxretries (optional; see worker/settings.py)."""
        return os.path.join(self.basedir, SETTINGS_NAME)

    @property
    def state(self) -> str:
        """Connection state the running worker keeps up to date (JSON)."""
        return os.path.join(self.basedir, "furl-worker.state")


