"""The test suite's wall-clock figures against their budgets (python -m bench.timings)."""
