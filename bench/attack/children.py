"""The two child processes of bench/attack/run.py: the attacker and the prober.

Started by bench/attack/run.py, never by hand::

    python -m bench.attack.children attack   (config: JSON, buildbot_furl.testing.linechild)
    python -m bench.attack.children probe    (config: JSON, buildbot_furl.testing.linechild)

Each has its own reactor in its own process, so that neither the forger's
CPU nor the prober's shares an event loop with what is measured.  Both
ask the kernel to SIGTERM them when the parent dies, and stop at EOF (or
``quit``) on stdin.

``attack``: ``connections`` forging Tubs (buildbot_furl.testing.forgery's
``forging_tub``, each dialing from one of ``addresses`` in turn), each with
one lookup of a random swissnum outstanding at a time, until ``attempts``
lookups have been made or ``seconds`` have passed.  The Tubs (and their
keys) are made before it prints ``ready``; it starts on ``go``.  It prints
a ``progress`` JSON line each second and a final ``result`` JSON line.
How an attempt ended is told from the error it got:

* ``refused``: the master answered "no such name" (a KeyError, as in
  forgery.forge);
* ``hung_up``: the lookup was pending on a connection the master hung up
  (DeadReferenceError: the 4th lookup on a connection after 3 refusals);
* ``closed_early``: the connection ended before any answer, while it was
  being set up (ConnectionDone/ConnectionLost/NegotiationError): what a
  connection closed by the gate before TLS looks like from outside;
* ``timed_out``, ``other``: anything else (there should be none).

``probe``: every ``interval`` seconds, a fresh WorkerService (the
furl-worker daemon's service: FurlBot, foolscap Reconnector, attach) for
worker ``probe`` is built (its new Tub key made first, outside the timing),
started, and timed from ``startService()`` (TCP connect) to the master's
attach answer (the service's ``on_event(ok=True)``); then it leaves and
hangs up.  Connection failures on the way are counted, the Reconnector's
retries are part of the time.  One JSON line per sample.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any

from buildbot_furl.testing.linechild import config, emit, serve
from buildbot_furl.testing.procs import die_with_parent

ATTEMPT_TIMEOUT = 10.0  # seconds one forged lookup may take before it counts as timed out


def _classify(e: BaseException) -> str:
    from foolscap.ipb import DeadReferenceError
    from foolscap.tokens import NegotiationError, RemoteNegotiationError
    from twisted.internet import defer
    from twisted.internet import error as terror

    if "KeyError" in repr(e):  # the master said: no such name (as forgery.forge tells it)
        return "refused"
    if isinstance(e, DeadReferenceError):
        return "hung_up"
    if isinstance(e, (terror.ConnectionDone, terror.ConnectionLost, NegotiationError,
                      RemoteNegotiationError, terror.ConnectionRefusedError)):
        return "closed_early"
    if isinstance(e, (defer.TimeoutError, defer.CancelledError, terror.TimeoutError)):
        return "timed_out"
    return "other"


class Attack:
    def __init__(self, cfg: dict[str, Any]) -> None:
        from buildbot_furl.testing.forgery import forging_tub

        self.cfg = cfg
        self.counts: collections.Counter[str] = collections.Counter()
        self.other: collections.Counter[str] = collections.Counter()
        self.started = 0.0
        self.started_wall = 0.0
        self.ended = 0.0
        self.issued = 0
        self.by_address: dict[str, collections.Counter[str]] = {}
        addresses = cfg["addresses"]
        # keys are made here, before "ready": the timed attack does no key generation
        self.slots = [forging_tub(addresses[i % len(addresses)])
                      for i in range(cfg["connections"])]
        for tub, _ in self.slots:
            tub.startService()

    def snapshot(self) -> dict[str, Any]:
        now = self.ended or time.monotonic()
        return {"attempts": self.issued, "done": sum(self.counts.values()),
                "accepted": self.counts["accepted"], **{k: self.counts[k] for k in (
                    "refused", "hung_up", "closed_early", "timed_out", "other")},
                "connections": sum(h.dialed for _, h in self.slots),
                "seconds": now - self.started if self.started else 0.0}

    async def slot(self, tub: Any, handler: Any) -> None:
        from twisted.internet import reactor

        from buildbot_furl.furl import Furl, new_swissnum

        cfg = self.cfg
        hint = f"tcp:{cfg['host']}:{cfg['port']}"
        deadline = self.started + cfg["seconds"]
        per_addr = self.by_address.setdefault(handler.source, collections.Counter())
        while self.issued < cfg["attempts"] and time.monotonic() < deadline:
            self.issued += 1
            furl = str(Furl(cfg["tubid"], (hint,), new_swissnum()))
            try:
                d = tub.getReference(furl)
                d.addTimeout(ATTEMPT_TIMEOUT, reactor)
                await d
            except Exception as e:  # noqa: BLE001 - every way of being turned away counts
                kind = _classify(e)
                if kind == "other":
                    self.other[f"{type(e).__name__}: {str(e)[:120]}"] += 1
            else:
                kind = "accepted"
            self.counts[kind] += 1
            per_addr[kind] += 1

    async def run(self) -> None:
        from twisted.internet import defer
        from twisted.internet.task import LoopingCall

        self.started = time.monotonic()
        self.started_wall = time.time()
        emit("started", wall=self.started_wall)
        progress = LoopingCall(lambda: emit("progress", **self.snapshot()))
        progress.start(1.0, now=False)
        try:
            await defer.DeferredList([defer.Deferred.fromCoroutine(self.slot(t, h))
                                      for t, h in self.slots], consumeErrors=True)
        finally:
            self.ended = time.monotonic()
            progress.stop()
        emit("result", wall_started=self.started_wall, wall_ended=time.time(),
              by_address={a: dict(c) for a, c in self.by_address.items()},
              other_errors=dict(self.other.most_common(10)), **self.snapshot())

    async def stop(self) -> None:
        from twisted.internet import defer

        await defer.DeferredList([defer.maybeDeferred(t.stopService) for t, _ in self.slots],
                                 consumeErrors=True)


class Probe:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.running = True
        self.current: Any = None
        self.base = cfg["dir"]  # in the bench's temp dir, removed with it

    async def one(self) -> dict[str, Any]:
        from twisted.internet import defer, reactor

        from buildbot_furl.furl import parse_furl
        from buildbot_furl.layout import WorkerPaths
        from buildbot_furl.worker.service import WorkerService

        svc = WorkerService(WorkerPaths(self.base), parse_furl(self.cfg["furl"]))  # key made here
        self.current = svc
        attached: defer.Deferred[None] = defer.Deferred()
        failures: list[str] = []

        def event(ok: bool, message: str, fatal: bool) -> None:
            if ok:
                if not attached.called:
                    attached.callback(None)
            else:
                failures.append(message)

        svc.on_event = event
        wall = time.time()
        t0 = time.monotonic()
        svc.startService()
        ok = True
        try:
            attached.addTimeout(self.cfg.get("timeout", 30.0), reactor)
            await attached
        except Exception:  # noqa: BLE001 - timed out: recorded as a failed sample
            ok = False
        seconds = time.monotonic() - t0
        try:
            await svc.stopService()  # tells the master it leaves, then hangs up
        except Exception:  # noqa: BLE001
            pass
        self.current = None
        return {"wall": wall, "seconds": seconds, "ok": ok, "failures": len(failures),
                "why": failures[-1] if failures else ""}

    async def run(self) -> None:
        from twisted.internet import task
        from twisted.internet import reactor

        while self.running:
            sample = await self.one()
            emit("attach", **sample)
            if self.running:
                await task.deferLater(reactor, self.cfg.get("interval", 0.25), lambda: None)

    async def stop(self) -> None:
        self.running = False
        if self.current is not None:
            try:
                await self.current.stopService()
            except Exception:  # noqa: BLE001
                pass


def main() -> None:
    die_with_parent()
    role = sys.argv[1]
    cfg = config()
    serve(Attack(cfg) if role == "attack" else Probe(cfg), autostart=role == "probe",
          stop_when_done=role == "attack")


if __name__ == "__main__":
    main()
