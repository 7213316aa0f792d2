"""The worker's side: its directory and FURL, the daemon that keeps it
attached, buildbot-worker's Bot and commands over foolscap, and the
confined transfers of standalone put/get."""
