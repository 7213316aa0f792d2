"""The master's side: its directory and config, the host (Tub, listener,
registry, admin capability), worker sessions, Buildbot's Connection over
FURLs, and the standalone daemon and its run/put/get."""
