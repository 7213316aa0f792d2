"""The benchmarks: one package per tool, each run as ``python -m bench.TOOL``
from the checkout's root; bench/README.md is the index.  Not part of the
installed package."""

from pathlib import Path

#: where each tool's ``--json`` goes when no FILE is given
RESULTS = Path(__file__).resolve().parent / "results"


def results_file(tool: str) -> str:
    """The default ``--json`` file of ``tool``: bench/results/TOOL.json."""
    return str(RESULTS / f"{tool}.json")
