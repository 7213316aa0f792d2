"""Hostile peers against real daemons: strangers guessing FURLs, and the
rationing of what they cost the master."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from buildbot_furl.master.refusals import MAX_LINES, Refusals
from buildbot_furl.testing.forgery import forge, forging_tub, random_name
from buildbot_furl.testing.farm import Farm, cli

# the guessers these tests stage, refused and summed up
pytestmark = pytest.mark.expect_log(r"unknown FURL \(wrong secret\)",
                                    r"refused \d+ (more )?attach attempts from")


def _tubid(furl: str) -> str:
    return furl.split("//", 1)[1].split("@", 1)[0]


@pytest_twisted.ensureDeferred
async def test_guessers_are_hung_up_summed_up_and_never_let_in(farm: Farm) -> None:
    farm.configure(refusal_limit=0)  # no shutting out here: see the next test
    furl = farm.create_worker("w1")
    await threads.deferToThread(farm.start_master)
    log = farm.mdir / "master.log"
    before = log.stat().st_size
    result = await forge(_tubid(furl), "127.0.0.1", farm.port, attempts=300)
    assert result.accepted == 0 and result.refused + result.failed == 300
    # a connection is told "no" three times, then hung up (what it asked
    # meanwhile dies with it): the forger pays a new TLS handshake for every
    # few guesses
    assert 0 < result.refused <= 3 * result.connections
    assert result.connections >= 300 // (3 + 4)
    added = log.read_text()[before:]
    assert len(log.read_bytes()) - before < 2000, added
    assert added.count("refused attach from 127.0.0.2") == 1
    # a real worker attaches meanwhile as ever, and the counters are shown
    p = await threads.deferToThread(farm.start_worker, "w1", furl)
    assert p.returncode == 0
    st = json.loads((await threads.deferToThread(farm.master, "status", "--json")).stdout)
    assert st["refusals"]["total"] == result.refused
    assert st["refusals"]["top"][0]["address"] == "127.0.0.2"
    lw = json.loads((await threads.deferToThread(farm.master, "list-workers", "--json")).stdout)
    assert lw["refusals"]["total"] == st["refusals"]["total"]
    text = (await threads.deferToThread(farm.master, "status")).stdout
    assert "refused" in text and "attach attempt(s)" in text


class Burst:
    """Forged lookups from ``source`` over ``tubs`` connections, as fast as
    they go, until stopped (buildbot_furl.testing.forgery's forging Tubs)."""

    def __init__(self, tubid: str, port: int, source: str, tubs: int = 8) -> None:
        self.furl_base = f"pb://{tubid}@tcp:127.0.0.1:{port}/"
        self.slots = [forging_tub(source) for _ in range(tubs)]
        self.attempts = self.accepted = 0
        self.running = True
        for tub, _ in self.slots:
            tub.startService()
        self.done = defer.DeferredList(
            [defer.Deferred.fromCoroutine(self._loop(tub)) for tub, _ in self.slots])

    async def _loop(self, tub: Any) -> None:
        while self.running:
            self.attempts += 1
            try:
                d = tub.getReference(self.furl_base + random_name())
                d.addTimeout(15, reactor)
                await d
                self.accepted += 1
            except Exception:  # noqa: BLE001 - every way of being turned away
                pass

    async def stop(self) -> None:
        self.running = False
        await self.done
        for tub, _ in self.slots:
            await tub.stopService()


@pytest_twisted.ensureDeferred
async def test_a_guesser_on_the_workers_own_address_locks_out_neither_admin_nor_worker(
        farm: Farm) -> None:
    farm.configure(refusal_limit=20)
    furl = farm.create_worker("w1")
    await threads.deferToThread(farm.start_master)
    await threads.deferToThread(farm.start_worker, "w1", furl)
    log = farm.mdir / "master.log"
    before = log.stat().st_size

    def status() -> dict[str, Any]:
        return json.loads(farm.master("status", "--json", check=True).stdout)

    started = time.monotonic()
    burst = Burst(_tubid(furl), farm.port, "127.0.0.1")  # the worker's own address
    try:
        # the guesser is well past its limit (20)
        assert await threads.deferToThread(
            farm.wait_for, lambda: status()["refusals"]["this_interval"] > 40, 60)
        # the admin's commands work meanwhile, and say what they should
        for args in (("status",), ("list-workers",)):
            p = await threads.deferToThread(farm.master, *args)
            assert p.returncode == 0 and "not running" not in p.stdout + p.stderr, p
            if args == ("status",):
                assert "cut unanswered past refusal_limit" in p.stdout, p.stdout
        p = await threads.deferToThread(farm.run, "w1", "echo", "still here")
        assert p.returncode == 0 and p.stdout == b"still here\n", p
        # a worker on the guesser's address attaches again (a fresh process:
        # a new Tub the master has never seen)
        assert cli("furl-worker", "stop", str(farm.wdir("w1"))).returncode == 0
        p = await threads.deferToThread(farm.start_worker, "w1", furl, "--wait", "60")
        assert p.returncode == 0
        assert await threads.deferToThread(
            farm.wait_for, lambda: bool(farm.workers()["w1"].get("connected")), 60)
        during = status()["refusals"]
    finally:
        await burst.stop()
    assert burst.accepted == 0
    assert during["cut_unanswered"] > 0 and burst.attempts > during["total"] // 2
    # the guesser's refusals are rationed in the log: a first line, then one
    # summary a minute (and a first line again in the next minute)
    added = log.read_text()[before:]
    minutes = (time.monotonic() - started) / 60
    firsts = added.count("refused attach from 127.0.0.1")
    summaries = len(re.findall(r"refused \d+ attach attempts from 127.0.0.1", added))
    assert 1 <= firsts <= summaries + 1 and summaries <= minutes + 1, added
    assert "cut unanswered" in added or summaries == 0


def test_the_log_is_rationed_whatever_the_number_of_addresses(
        caplog: pytest.LogCaptureFixture) -> None:
    lines: list[dict[str, Any]] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(lines.append)
    try:
        r = Refusals(limit=0)
        for i in range(5000):
            r.refused(f"10.0.{i // 250}.{i % 250}")
            r.refused(f"10.0.{i // 250}.{i % 250}")
        r.summarize()
    finally:
        globalLogPublisher.removeObserver(lines.append)
    ours = [e for e in lines if "refused" in str(e.get("log_format", ""))]
    assert len(ours) <= 2 * MAX_LINES + 1
    assert r.total == 10000
    assert r.to_wire()["addresses"] <= 4096


def test_a_worker_that_reconnects_normally_is_never_counted(farm: Farm) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    farm.start_worker("w1", furl)
    for _ in range(3):
        farm.master("restart", check=True)
        farm.procs.track_pidfile(farm.mdir / "furl-master.pid")
        assert farm.wait_for(lambda: bool(farm.workers()["w1"].get("connected")), 30)
    st = json.loads(farm.master("status", "--json").stdout)
    assert st["refusals"]["total"] == 0
    time.sleep(0.1)
    assert cli("furl-worker", "status", str(farm.wdir("w1"))).returncode == 0


class IdleFlood:
    """TCP connections that never send a byte, from 127.0.0.2-4, opened at
    ``rate`` a second in a thread until stopped (at most ``limit``)."""

    def __init__(self, port: int, limit: int, rate: float = 100.0) -> None:
        self.port, self.limit, self.rate = port, limit, rate
        self.socks: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while len(self.socks) < self.limit and not self.stopping.is_set():
            s = socket.socket()
            s.bind((f"127.0.0.{2 + len(self.socks) % 3}", 0))
            s.connect(("127.0.0.1", self.port))
            self.socks.append(s)
            time.sleep(1 / self.rate)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)

    def closed_by_the_master(self) -> int:
        """How many the master has closed (EOF or reset seen)."""
        n = 0
        for s in self.socks:
            s.setblocking(False)
            try:
                n += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:  # reset: aborted by the master
                n += 1
        return n

    def close(self) -> None:
        for s in self.socks:
            s.close()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.expect_log(r"closed a connection from 127\.0\.0\.\d")
def test_idle_connections_cannot_take_the_masters_descriptors(farm: Farm) -> None:
    """Issue 16 item 2: idle TCP connections (no FURL, no TLS) are bounded in
    all and per address, cut after attach_timeout, and a worker attaches and
    the admin's commands answer meanwhile."""
    farm.configure(max_pending=64, pending_per_address=16, attach_timeout=5)
    furl = farm.create_worker("w1")
    farm.start_master()
    pid = int((farm.mdir / "furl-master.pid").read_text())
    before = _fds(pid)
    log = farm.mdir / "master.log"
    start = log.stat().st_size
    flood = IdleFlood(farm.port, limit=400, rate=40)
    try:
        assert farm.wait_for(lambda: len(flood.socks) >= 150, 30)
        # the flood is still coming: a worker attaches, the admin is answered
        t0 = time.monotonic()
        farm.start_worker("w1", furl, "--wait", "30")
        attach_s = time.monotonic() - t0
        assert farm.wait_for(lambda: bool(farm.workers()["w1"].get("connected")), 30)
        st = json.loads(farm.master("status", "--json", check=True).stdout)
        assert st["connected"] == 1
        assert farm.master("list-workers", check=True).returncode == 0
        # the whole flood opened (a loaded machine opens it slowly: wait for it,
        # rather than stop it short), and still connected to the master
        flood.thread.join(120)
        assert len(flood.socks) == 400
        during = _fds(pid)
        # the master never held more than max_pending of them (plus the worker's)
        assert during - before <= 64 + 8, (before, during)
        # every idle connection is closed: past max_pending at once, the rest
        # after attach_timeout (in turns of 16 per address)
        assert farm.wait_for(lambda: flood.closed_by_the_master() == 400, 60), \
            flood.closed_by_the_master()
        conns = json.loads(farm.master("status", "--json", check=True).stdout)[
            "refusals"]["connections"]
        assert conns["evicted"] >= 400 - 64 and conns["timed_out"] > 0
        assert conns["pending"] == 0 and conns["attached"] == 1
        text = farm.master("status", check=True).stdout
        assert "did not start an attach within 5 s" in text
        p = farm.run("w1", "echo", "still here")
        assert p.returncode == 0 and p.stdout == b"still here\n", p
    finally:
        flood.stop()
        flood.close()
    # the log: a line for the first of each kind, not one per connection
    added = log.read_text()[start:]
    assert added.count("closed a connection from 127.0.0.") == 2, added
    print(f"idle flood: 400 connections; worker start+attach {attach_s:.1f} s; "
          f"master fds {before} -> {during}")
