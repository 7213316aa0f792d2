"""The transport benchmark.

Run ``python -m bench.transport``; docs/performance.md describes the
method, the metrics and the tables.  Its modules:

* ``run``             -- the entry point: command line, the run loop, cleanup
* ``metrics``         -- one class per metric, the samples they collect, CPU
* ``sides/``          -- the master side of each transport
* ``children``        -- worker processes: started, stopped by pid, die with us
* ``child``           -- the worker process itself; ``raw_worker`` is its raw
  TLS end
* ``report``          -- progress notes, machine facts, the JSON, the tables
* ``testfiles``       -- the test files and the TLS certificate
* ``clock``, ``nodelay`` -- timing helpers; TCP_NODELAY for the diagnostics
"""
