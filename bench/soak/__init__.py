"""The soak, for minutes or hours, with its figures (python -m bench.soak)."""
