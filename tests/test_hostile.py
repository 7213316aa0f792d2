"""Hostile peers against real daemons: strangers guessing FURLs, and the
rationing of what they cost the master."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from buildbot_furl.master.refusals import MAX_LINES, Refusals
from buildbot_furl.testing.forgery import forge
from conftest import Farm, cli

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


@pytest_twisted.ensureDeferred
async def test_an_address_over_the_limit_is_shut_out_before_tls(farm: Farm) -> None:
    farm.configure(refusal_limit=20)
    furl = farm.create_worker("w1")
    await threads.deferToThread(farm.start_master)
    result = await forge(_tubid(furl), "127.0.0.1", farm.port, attempts=60)
    assert result.accepted == 0
    # the guessing address: its connections are closed before a byte is read
    with socket.create_connection(("127.0.0.1", farm.port), timeout=5,
                                  source_address=("127.0.0.2", 0)) as s:
        s.settimeout(5)
        assert s.recv(100) == b""
    # everyone else is served as usual
    p = await threads.deferToThread(farm.start_worker, "w1", furl)
    assert p.returncode == 0
    st = json.loads((await threads.deferToThread(farm.master, "status", "--json")).stdout)
    assert st["refusals"]["closed_before_tls"] >= 1


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
    assert r.describe()["addresses"] <= 4096


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
