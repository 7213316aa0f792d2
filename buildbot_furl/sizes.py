"""Byte counts as admins write them: ``512k``, ``10M``, ``1G``."""

from __future__ import annotations

import re

from buildbot_furl.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[bB]?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(text: str | int, what: str = "size") -> int:
    """A number of bytes, or a number with k, M or G (powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ConfigError(f"bad {what} {text!r}: give bytes, or a number with k, M or G")
        n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if n < 0:
        raise ConfigError(f"a {what} cannot be negative")
    return n


def show_bytes(n: int) -> str:
    """``n`` the short way (``10M``) when it is a whole number of units."""
    for unit in ("G", "M", "k"):
        size = _UNITS[unit.lower()]
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n} bytes"
