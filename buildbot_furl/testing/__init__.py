"""Tools for testing systems built on buildbot_furl (used by this project's
own tests and bench/faults.py): a fault-injecting TCP proxy."""
