"""Progress lines, on stderr: stdout carries only the tables."""

from __future__ import annotations

import sys


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
