"""The benchmarks: one package per tool, each run as ``python -m bench.TOOL``
from the checkout's root; bench/README.md is the index.  Not part of the
installed package."""
