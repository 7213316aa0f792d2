"""One consumer interface and one connection table on the master host;
typed admin answers (issue 17 items 4 and 5)."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from buildbot_furl.errors import BadRequest, UnknownWorker
from buildbot_furl.master.connection import FurlConnection
from buildbot_furl.master.host import MasterHost
from buildbot_furl.master.standalone import Standalone
from buildbot_furl.protocol.messages import (
    DrainAnswer,
    GateCounts,
    PutAnswer,
    RefusalCounts,
    RefusedAddress,
    StatusAnswer,
    WorkerRow,
    worker_rows_from_wire,
)
from buildbot_furl.testing.hostrig import Recorder, attach_w1, host_with_w1
from buildbot_furl.testing.procs import ROOT


def _host(tmp_path: pathlib.Path) -> tuple[MasterHost, str]:
    return host_with_w1(tmp_path)


_attach = attach_w1


@pytest_twisted.ensureDeferred
async def test_the_host_owns_one_connection_per_session_and_tells_its_consumer(
        tmp_path: pathlib.Path) -> None:
    host, swiss = _host(tmp_path)
    consumer = host.consumer
    assert isinstance(consumer, Recorder) and consumer.workers is host
    try:
        assert host.knows("w1") and not host.knows("w2")
        session = await _attach(host, swiss)
        conn = host.connection_of(session)
        assert isinstance(conn, FurlConnection) and conn.session is session
        assert host.connections == {session: conn}
        assert consumer.seen == [("attached", session, conn)]
        consumer.running = 2
        assert host.drain(session, "a test") == 2
        assert consumer.seen[-1] == ("drain", session, conn) and session.draining == "a test"
        told: list[str] = []
        conn.notifyOnDisconnect(lambda: told.append("gone"))
        session.end("the worker stopped")
        assert consumer.seen[-1] == ("detached", session, conn)
        assert told == ["gone"] and host.connections == {} and host.connection_of(session) is None
    finally:
        await defer.maybeDeferred(host.stopService)


@pytest_twisted.ensureDeferred
async def test_a_refused_attach_leaves_no_connection_behind(tmp_path: pathlib.Path) -> None:
    host, swiss = _host(tmp_path)
    consumer = host.consumer
    assert isinstance(consumer, Recorder)
    consumer.refuse = UnknownWorker("not configured")
    try:
        with pytest.raises(UnknownWorker):
            await _attach(host, swiss)
        (_, session, conn), = [s for s in consumer.seen if s[0] == "attached"]
        assert consumer.seen[-1] == ("detached", session, conn)
        assert host.connections == {}
    finally:
        await defer.maybeDeferred(host.stopService)


@pytest_twisted.ensureDeferred
async def test_the_tubs_hooks_are_given_when_it_is_made(tmp_path: pathlib.Path) -> None:
    host, _ = _host(tmp_path)
    assert host.registry is not None
    hooks = host.tub.hooks
    assert hooks.connection_gate is host.registry.refusals
    assert hooks.on_refused_name is not None and hooks.on_violation is not None
    for name in ("on_refused_name", "on_violation", "connection_gate"):
        assert not hasattr(host.tub, name)  # nothing assigned after construction
    assert hooks.on_refused_name("x" * 32, "192.0.2.1", "", None) is True
    assert host.registry.refusal_counts().total == 1
    await defer.maybeDeferred(host.stopService)
    assert hooks.on_refused_name("x" * 32, "192.0.2.1", "", None) is True
    assert host.registry.refusal_counts().total == 1  # stopped: no longer counted


class _Conn:
    def __init__(self) -> None:
        self.shutdowns = 0

    def remoteShutdown(self) -> defer.Deferred[None]:  # noqa: N802 - Buildbot's name
        self.shutdowns += 1
        return defer.succeed(None)


class _Session:
    name = "w1"
    gone = False
    draining: str | None = "the master's admin"

    def wait_attached(self) -> defer.Deferred[None]:
        return defer.succeed(None)


def test_a_drained_standalone_worker_is_told_to_stop_through_its_connection() -> None:
    """As Buildbot does: the connection's remoteShutdown, the one place."""
    session, conn = _Session(), _Conn()

    class Host:
        def connection_of(self, s: Any) -> Any:
            return conn if s is session else None

    st = Standalone(Host())  # type: ignore[arg-type]
    assert st.drain_started(session, conn) == 0  # type: ignore[arg-type]
    assert conn.shutdowns == 1


# -- admin answers -----------------------------------------------------------------------


def _status() -> StatusAnswer:
    return StatusAnswer(
        "1.0", 42, 1000.5, "tcp:h:1", 3, 1, "standalone", ("bad line 3",),
        RefusalCounts(5, 1, 2, 0, GateCounts(pending=1, max_pending=900, attach_timeout=10.0),
                      3, 60.0, 2, (RefusedAddress("192.0.2.1", 4, 999.0),)))


def test_the_admin_answers_cross_the_wire_whole() -> None:
    st = _status()
    assert StatusAnswer.from_wire(st.to_wire()) == st
    wire = st.to_wire()
    assert list(wire) == ["version", "pid", "started", "location", "workers", "connected",
                          "kind", "problems", "refusals"]
    assert wire["refusals"]["connections"]["max_pending"] == 900
    assert wire["refusals"]["top"] == [{"address": "192.0.2.1", "refused": 4, "last": 999.0}]
    row = WorkerRow("w1", "a comment", True, "draining", True, None, "127.0.0.1:1", 5.0, 6.0,
                    "host1", None)
    assert worker_rows_from_wire([row.to_wire()]) == [row]
    assert WorkerRow.from_wire({"name": "w2"}) == WorkerRow("w2")
    assert DrainAnswer.from_wire(DrainAnswer(3).to_wire()) == DrainAnswer(3)
    put = PutAnswer("a/b", "dir", "0" * 64, "1" * 64)
    assert PutAnswer.from_wire(put.to_wire()) == put


@pytest.mark.parametrize("parse,value", [
    (StatusAnswer.from_wire, "status"),
    (StatusAnswer.from_wire, {**_status().to_wire(), "pid": "42"}),
    (StatusAnswer.from_wire, {**_status().to_wire(), "problems": [3]}),
    (StatusAnswer.from_wire, {k: v for k, v in _status().to_wire().items() if k != "version"}),
    (StatusAnswer.from_wire, {**_status().to_wire(), "refusals": {"top": "x"}}),
    (StatusAnswer.from_wire, {**_status().to_wire(), "refusals": {"connections": []}}),
    (worker_rows_from_wire, {"name": "w1"}),
    (worker_rows_from_wire, [{"comment": "no name"}]),
    (WorkerRow.from_wire, {"name": "w1", "state": "on fire"}),
    (WorkerRow.from_wire, {"name": "w1", "connected": "yes"}),
    (WorkerRow.from_wire, {"name": "w1", "last_seen": float("nan")}),
    (DrainAnswer.from_wire, {"running": -1}),
    (DrainAnswer.from_wire, {"running": True}),
    (DrainAnswer.from_wire, None),
    (PutAnswer.from_wire, {"remote": "a", "kind": "file", "sha256": "no"}),
    (PutAnswer.from_wire, {"remote": "a", "kind": "link", "sha256": "0" * 64}),
    (PutAnswer.from_wire, {"remote": 5, "kind": "file", "sha256": "0" * 64}),
])
def test_admin_answers_out_of_shape_are_bad_requests(parse: Any, value: Any) -> None:
    with pytest.raises(BadRequest):
        parse(value)


def test_outside_code_neither_reads_the_registrys_tables_nor_installs_hooks_later() -> None:
    tables = re.compile(r"registry\.(entries|sessions|poll|furls_path|by_name|logins)\b")
    # (an object setting its own hook in its constructor is fine: "self.on_x = on_x")
    late = re.compile(r"(?<!self)\.(on_refused_name|on_violation|connection_gate|on_drain"
                      r"|on_attach|on_detach)\s*=[^=]")
    found = []
    for path in sorted((ROOT / "buildbot_furl").rglob("*.py")):
        if path.name == "registry.py" and path.parent.name == "master":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if tables.search(line) or late.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []
