"""One master, many simulated workers (python -m bench.scale)."""
