"""A one-line progress bar for put/get on a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """Draws ``label [####   ] 42.0% 12.3 MiB 80 MiB/s`` on stderr; silent
    unless ``enabled`` (a terminal)."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last > 0.1:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        rate = self.done / max(time.monotonic() - self.started, 1e-6) / 2**20
        if self.total:
            pct = 100 * self.done / self.total
            bar = "#" * int(pct / 4)
            line = (f"{self.label} [{bar:<25}] {pct:5.1f}% {self.done / 2**20:.1f} MiB "
                    f"{rate:.0f} MiB/s")
        else:
            line = f"{self.label} {self.done / 2**20:.1f} MiB {rate:.0f} MiB/s"
        sys.stderr.write("\r" + line)
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")
