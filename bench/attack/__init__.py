"""Guessed FURLs by the thousand against a real master (python -m bench.attack)."""
