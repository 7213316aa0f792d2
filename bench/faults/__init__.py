"""Cut the worker's connection hundreds of times (python -m bench.faults)."""
