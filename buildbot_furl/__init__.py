"""FURL-secured worker connections for Buildbot build farms.

See docs/architecture.md for the packages and what each owns.
"""

__version__ = "0.1.0"
