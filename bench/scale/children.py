"""The child processes of bench/scale/run.py (``python -m bench.scale.children ROLE``).

Configuration and the control channel (``ready``, ``go``, ``quit``, JSON
lines out) are buildbot_furl.testing.linechild's.

``fleet``: many simulated workers in one reactor.  Each is a real
WorkerService (what ``furl-worker start`` runs: FurlBot, the bounded
Reconnector, attach) with its own Tub key.  Keys come from a cache
directory (``keys``): ``NAME.pem``, made on first use by buildbot_furl's
own make_tub (0600) and read back on later runs, so the RSA key generation
(about 90 ms each here) is paid once per name, before ``ready``.  On ``go``
every service is started at once.  Every 0.25 s a ``count`` line: how many
are attached, connection failures so far, the longest reconnect delay a
not-attached worker is waiting now, and the wall time of the latest
attach.  ``report WALL`` answers a ``report`` line: for each worker the wall
time of its latest attach if it came after WALL (else null), the failures
after WALL and the longest reconnect delay seen since.

``stall``: one admin connection (buildbot_furl.client.connect) to the
master; every ``interval`` seconds a cheap admin call (``interrupt`` of a
run id that does not exist: no work in the master but the call itself) is
timed; one ``lat`` line per call.  A reactor busy with something else (a
reload) shows as a long call.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from buildbot_furl.testing.linechild import config, emit, serve
from buildbot_furl.testing.procs import die_with_parent


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def cached_worker(name: str, furl: str, basedir: Path, keys: Path) -> Any:
    """A WorkerService for ``name`` whose Tub key is ``keys/NAME.pem`` (made if absent)."""
    import buildbot_furl.worker.service as wsvc
    from buildbot_furl import tubs
    from buildbot_furl.furl import parse_furl
    from buildbot_furl.layout import WorkerPaths

    key = str(keys / f"{name}.pem")
    basedir.mkdir(mode=0o700, exist_ok=True)
    orig = wsvc.make_tub
    # the service makes a throw-away key (make_tub(None, ...)); give it the cached one
    wsvc.make_tub = lambda _cert, keepalive, disconnect: tubs.make_tub(key, keepalive,
                                                                       disconnect)
    try:
        return wsvc.WorkerService(WorkerPaths(str(basedir)), parse_furl(furl))
    finally:
        wsvc.make_tub = orig


class Fleet:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.nofile = raise_nofile()
        spec = json.loads(Path(cfg["spec"]).read_text())
        keys = Path(cfg["keys"])
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        base = Path(cfg["dir"])
        base.mkdir(mode=0o700, exist_ok=True)
        self.svcs: list[Any] = []
        self.last_ok: list[float | None] = []
        self.failures: list[tuple[float, float]] = []  # (wall, delay after it)
        self.max_delay = 0.0
        self.latest = 0.0
        t0 = time.monotonic()
        for i, (name, furl) in enumerate(spec):
            svc = cached_worker(name, furl, base / name, keys)
            svc.on_event = self._event(i)
            self.svcs.append(svc)
            self.last_ok.append(None)
        self.build_seconds = time.monotonic() - t0
        self.running = True

    def _event(self, i: int) -> Any:
        def event(ok: bool, message: str, fatal: bool) -> None:
            now = time.time()
            if ok:
                self.last_ok[i] = now
                self.latest = max(self.latest, now)
            else:
                self.failures.append((now, message))
        return event

    def _delays(self) -> float:
        waits = [svc.reconnector._delay for svc in self.svcs
                 if svc._state[0] != "attached" and svc.reconnector is not None]
        return max(waits, default=0.0)

    def _count(self) -> None:
        d = self._delays()
        self.max_delay = max(self.max_delay, d)
        emit("count", attached=sum(1 for s in self.svcs if s._state[0] == "attached"),
              failures=len(self.failures), delay_now=d, latest=self.latest)

    def command(self, line: bytes) -> None:
        if line.startswith(b"report "):
            since = float(line.split()[1])
            fails = [m for w, m in self.failures if w >= since]
            emit("report", attached=[t if t is not None and t >= since else None
                                      for t in self.last_ok],
                  failures=len(fails), why=sorted(set(fails))[:5], max_delay=self.max_delay)
            self.max_delay = 0.0

    async def run(self) -> None:
        from twisted.internet import defer, reactor

        emit("started", wall=time.time(), build_seconds=self.build_seconds,
              nofile=list(self.nofile))
        for svc in self.svcs:  # all at once: the cold start
            svc.startService()
        while self.running:
            self._count()
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0.25, d.callback, None)
            await d

    async def stop(self) -> None:
        from twisted.internet import defer

        self.running = False
        await defer.DeferredList([defer.maybeDeferred(s.stopService) for s in self.svcs
                                  if s.running], consumeErrors=True)


class Stall:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.running = True
        self.tub: Any = None

    async def run(self) -> None:
        from twisted.internet import defer, reactor

        from buildbot_furl.client.connect import connect
        from buildbot_furl.layout import MasterPaths
        from buildbot_furl.protocol import call

        self.tub, ref = await connect(MasterPaths(self.cfg["master"]))
        emit("connected")
        while self.running:
            wall, t0 = time.time(), time.monotonic()
            try:
                await call(ref, "interrupt", "no-such-run")
                ok = True
            except Exception:  # noqa: BLE001 - a failed probe is a sample too
                ok = False
            emit("lat", wall=wall, seconds=time.monotonic() - t0, ok=ok)
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(self.cfg.get("interval", 0.02), d.callback, None)
            await d

    async def stop(self) -> None:
        self.running = False
        if self.tub is not None:
            await self.tub.stopService()


def main() -> None:
    die_with_parent()
    role = sys.argv[1]
    cfg = config()
    serve(Fleet(cfg) if role == "fleet" else Stall(cfg), autostart=role == "stall",
          stop_when_done=False)


if __name__ == "__main__":
    main()
