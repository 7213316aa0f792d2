"""Tools for testing systems built on buildbot_furl, used by this project's own
tests and by the benches in bench/: a fault-injecting TCP proxy (faultproxy),
forged FURLs (forgery), a process tracker that stops everything by pid (procs),
a real master with real workers driven through the CLI (rig), a helper process
driven by lines (linechild), and the soak (soak*)."""
