"""What the master's and the worker's metrics share: the prefix, a
registry of their own (never prometheus-client's global one, so that two
hosts in one process, as in the tests, do not collide) and ``build_info``."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry, Info

from buildbot_furl import __version__
from buildbot_furl.protocol import PROTOCOL_VERSIONS

#: every metric's name starts with it (Prometheus: one prefix per exporter)
PREFIX = "buildbot_furl_"


def new_registry(role: str) -> CollectorRegistry:
    """A registry holding ``buildbot_furl_build_info`` for ``role``
    ("master", "buildbot" or "worker")."""
    registry = CollectorRegistry(auto_describe=True)
    info = Info(PREFIX + "build", "What runs: this package's version, its role, "
                "the protocol versions it speaks and Python's version.", registry=registry)
    info.info({"version": __version__, "role": role,
               "protocols": ",".join(map(str, PROTOCOL_VERSIONS)),
               "python": ".".join(map(str, sys.version_info[:3]))})
    return registry
