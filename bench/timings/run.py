#!/usr/bin/env python
"""The wall-clock figures the test suite measures, held to their budgets.

    python -m bench.timings [--runs N] [--json FILE] [PYTEST_ARGS ...]

Tests do not assert how long something took (on a shared CPU, beside other
tests under ``pytest -n``, a bound is flaky or so loose it means nothing);
they record it with the ``timing`` fixture (tests/conftest.py) and assert
only the event.  This runs those tests one at a time (``-n 0``), N times
(default 1), and prints each figure beside its budget: exit status 1 when
a median is over its budget.  Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import results_file

ROOT = Path(__file__).resolve().parents[2]

#: the tests that record figures (grep the suite for ``timing.record``)
TESTS = [
    "tests/system/test_buildbot_plugin.py::test_stopped_build_ends_as_on_pb",
    "tests/system/test_connection.py::test_large_output_byte_exact_in_order",
    "tests/system/test_connection.py::test_interrupt",
    "tests/system/test_drain.py::test_graceful_stop_timeout_falls_back_to_a_normal_stop",
    "tests/system/test_e2e_core.py::test_revoke_drops_live_connection_and_refuses_reconnect",
    "tests/system/test_interop.py::test_timeout_kills_and_says_so",
    "tests/system/test_sessions.py::test_a_link_down_longer_than_the_grace_period_ends_like_a_lost_worker",
    "tests/system/test_sessions.py::test_revocation_during_a_gap_ends_the_session_at_once",
    "tests/system/test_tac_options.py::test_maxretries_gives_up_with_one_line_and_exit_2",
    "tests/system/test_cluster.py::test_worker_fails_over_between_two_masters",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", nargs="?", const=results_file("timings"),
                    help="write the figures (FILE; default bench/results/timings.json)")
    args, extra = ap.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timings.jsonl"
        env = dict(os.environ, FURL_TEST_TIMINGS=str(out))
        for _ in range(args.runs):
            subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", "-p",
                            "no:randomly", *extra, *TESTS], cwd=ROOT, env=env, check=False)
        rows = [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []
    figures: dict[tuple[str, str], list[float]] = {}
    budgets: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["test"].split("::", 1)[-1], r["what"])
        figures.setdefault(key, []).append(r["seconds"])
        budgets[key] = r["budget"]
    over = 0
    print(f"{'median s':>9} {'max s':>7} {'budget':>7}  what (test)")
    for key, secs in sorted(figures.items()):
        med = statistics.median(secs)
        flag = "" if med <= budgets[key] else "  OVER BUDGET"
        over += bool(flag)
        print(f"{med:9.2f} {max(secs):7.2f} {budgets[key]:7.1f}  {key[1]} ({key[0]}){flag}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"test": t, "what": w, "seconds": s, "budget": budgets[(t, w)]}
             for (t, w), s in sorted(figures.items())], indent=1) + "\n")
    if not figures:
        print("no figures recorded (did the tests run?)", file=sys.stderr)
        return 1
    return 1 if over else 0

