"""A test's wall-clock figures, recorded for ``python -m bench.timings``.

A figure is not asserted in the test (on a shared CPU a bound is either
flaky or meaningless) but recorded; bench/timings runs those tests alone and
holds each figure to its budget.  tests/conftest.py's ``timing`` fixture
hands a test its :class:`Timing`."""

from __future__ import annotations

import json
import os


class Timing:
    """The figures of the test ``nodeid``; each one is also appended, as a
    JSON line, to the file named by FURL_TEST_TIMINGS (bench/timings sets it).
    The test keeps only the event, with a bound against hanging."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.figures: list[tuple[str, float, float]] = []

    def record(self, what: str, seconds: float, budget: float) -> None:
        self.figures.append((what, seconds, budget))
        out = os.environ.get("FURL_TEST_TIMINGS")
        if out:
            with open(out, "a") as f:
                f.write(json.dumps({"test": self.nodeid, "what": what,
                                    "seconds": round(seconds, 3), "budget": budget}) + "\n")
