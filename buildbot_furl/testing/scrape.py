"""HTTP on loopback for the tests of the metrics endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:PORT/PATH (an error status too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
