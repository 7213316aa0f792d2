"""bench/scale/run.py's own pure helpers (the bench itself is not run by the suite)."""

from __future__ import annotations

import sys

from buildbot_furl.testing.procs import ROOT

sys.path.insert(0, str(ROOT))
from bench.scale.run import FIGURES, growth, split, table  # noqa: E402


def test_split_deals_round_robin_without_empty_parts() -> None:
    assert split(list(range(7)), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert split([1, 2], 4) == [[1], [2]]
    assert sum(map(len, split(list(range(1000)), 4))) == 1000


def test_growth_next_to_n() -> None:
    assert growth(2.0, 8.0, 250, 1000) == "×4.00 (N ×4)"
    assert growth(0, 0, 250, 1000) == "0 → 0"
    assert growth(None, 3.0, 250, 1000) == "-"


def test_table_has_a_row_per_figure_and_a_column_per_size() -> None:
    out = table([{"n": 250, "cold_s": 1.5, "idle_cpu_pct": 0.4},
                 {"n": 1000, "cold_s": 6.0}]).splitlines()
    assert out[0] == "| figure | N = 250 | N = 1000 | growth |"
    assert len(out) == 2 + len(FIGURES)
    assert "| cold start: all N attached | 1.50 s | 6.00 s | ×4.00 (N ×4) |" in out
    assert "| master CPU, idle, N attached | 0.40% | - | - |" in out
