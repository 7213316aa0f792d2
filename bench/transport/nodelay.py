"""TCP_NODELAY for the ``pbnd``/``pbtlsnd`` diagnostics, used by both ends."""

from __future__ import annotations

from typing import Any


def set_nodelay(transport: Any) -> None:
    """TCP_NODELAY on the TCP transport under ``transport`` (TLS included)."""
    while transport is not None:
        if hasattr(transport, "setTcpNoDelay"):
            try:
                transport.setTcpNoDelay(True)
                return
            except Exception:
                pass
        transport = getattr(transport, "transport", None)
