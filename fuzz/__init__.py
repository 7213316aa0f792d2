"""Fuzzing of the parsers that take untrusted input (see targets.py and run.py)."""
