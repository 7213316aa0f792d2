"""FURL-secured worker connections for Buildbot build farms."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # FurlConnection pulls in the master side; import it only when asked.
    if name == "FurlConnection":
        from buildbot_furl.master.connection import FurlConnection

        return FurlConnection
    raise AttributeError(name)
