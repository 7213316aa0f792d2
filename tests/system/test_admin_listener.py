"""The admin capability on its own loopback listener, and honest messages
when a running master does not answer it (issue 15 item 2, issue 16 item 18)."""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from buildbot_furl.furl import Furl, parse_furl
from buildbot_furl.tubs import make_tub
from buildbot_furl.testing.farm import Farm


def test_the_admin_furl_is_served_on_loopback_apart_from_the_workers_port(
        farm: Farm) -> None:
    worker_furl = parse_furl(farm.create_worker("w1"))
    farm.start_master()
    admin = parse_furl((farm.mdir / "private" / "admin.furl").read_text().strip())
    (hint,) = admin.hints
    kind, host, port = hint.split(":")
    assert (kind, host) == ("tcp", "127.0.0.1") and int(port) != farm.port
    assert admin.tubid != worker_furl.tubid  # a Tub of its own
    assert farm.master("status").returncode == 0


@pytest.mark.expect_log(r"refused attach from .*: unknown FURL")  # the admin's, tried there
@pytest_twisted.ensureDeferred
async def test_the_workers_port_does_not_serve_the_admin(farm: Farm) -> None:
    worker_furl = parse_furl(farm.create_worker("w1"))
    await threads.deferToThread(farm.start_master)
    admin = parse_furl((farm.mdir / "private" / "admin.furl").read_text().strip())
    # the admin's secret, asked of the workers' Tub on the workers' port
    wrong = Furl(worker_furl.tubid, worker_furl.hints, admin.swissnum)
    tub = make_tub(None, keepalive=0, disconnect_timeout=0)
    tub.startService()
    try:
        d = tub.getReference(str(wrong))
        d.addTimeout(15, reactor)
        try:
            await d
        except Exception as e:  # noqa: BLE001
            assert "KeyError" in repr(e), repr(e)
        else:
            raise AssertionError("the workers' port serves the admin capability")
    finally:
        await defer.maybeDeferred(tub.stopService)


def test_a_running_master_that_does_not_answer_is_never_called_not_running(
        farm: Farm) -> None:
    farm.create_worker("w1")
    farm.start_master()
    pid = int((farm.mdir / "furl-master.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # alive, holding its pid file, answering nothing
    try:
        for args in (("status",), ("list-workers",), ("run",)):
            if args == ("run",):
                r = farm.run("w1", "true")
                rc, out = r.returncode, (r.stdout + r.stderr).decode()
            else:
                p = farm.master(*args)
                rc, out = p.returncode, p.stdout + p.stderr
            assert rc == 2, (args, rc, out)
            assert "not running" not in out, (args, out)
            assert f"runs (pid {pid}) but does not answer the admin" in out, (args, out)
            assert "Traceback" not in out
    finally:
        os.kill(pid, signal.SIGCONT)
    assert farm.master("status").returncode == 0
