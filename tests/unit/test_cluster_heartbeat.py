"""Which master of a cluster holds which worker (issue 18): the heartbeat
record (one definition, garbage refused with a reason), the writer on a
task.Clock (interval, debounce, removal at stop, failures), the reader's
staleness rule, where the cluster directory is, and the host wiring it all."""

from __future__ import annotations

import json
import os
import pathlib
import stat
from typing import Any

import pytest
import pytest_twisted
from click.testing import CliRunner
from twisted.internet import defer
from twisted.internet.task import Clock

from buildbot_furl import cluster
from buildbot_furl.cluster import (
    ClusterRecordError,
    HeldWorker,
    MasterRecord,
    read_dir,
    read_record,
    resolve_dir,
)
from buildbot_furl.master import config as mconfig
from buildbot_furl.master.heartbeat import Heartbeat
from buildbot_furl.privatefiles import write_private


def record(name: str = "hostA:/srv/m", updated: float = 100.0, interval: float = 10.0,
           workers: tuple[HeldWorker, ...] = ()) -> MasterRecord:
    return MasterRecord(cluster.master_id(name), name, 4242, ("tcp:hostA:9990",), "tcp:9990",
                        updated, interval, workers)


def put(d: pathlib.Path, r: MasterRecord) -> None:
    write_private(str(d / (r.master_id + ".json")), r.to_json())


# -- the record -----------------------------------------------------------------

def test_a_record_round_trips_and_holds_no_furl() -> None:
    r = record(workers=(HeldWorker("w1", 90.0, "127.0.0.1:5555"),
                        HeldWorker("w2", 91.0, "127.0.0.1:5556", "reconnecting")))
    back = MasterRecord.from_wire(json.loads(r.to_json()))
    assert back == r
    assert "pb://" not in r.to_json()
    assert [w.held for w in back.workers] == [True, False]


@pytest.mark.parametrize("mutate, reason", [
    (lambda v: [v], "not a map"),
    (lambda v: {**v, "format": 2}, "'format' is 2"),
    (lambda v: {k: x for k, x in v.items() if k != "name"}, "'name' is missing"),
    (lambda v: {**v, "pid": "12"}, "'pid' is not a process id"),
    (lambda v: {**v, "pid": True}, "'pid' is not a process id"),
    (lambda v: {**v, "updated": "yesterday"}, "'updated' is not a number"),
    (lambda v: {**v, "interval": 0}, "'interval' is not a positive number"),
    (lambda v: {**v, "location": "tcp:h:1"}, "'location' is not a list"),
    (lambda v: {**v, "workers": {}}, "'workers' is not a list"),
    (lambda v: {**v, "workers": ["w1"]}, "a worker is not a map"),
    (lambda v: {**v, "workers": [{"name": "w1", "since": 1, "peer": "p", "state": "x"}]},
     "a worker's 'state' is 'x'"),
    (lambda v: {**v, "workers": [{"name": "w1", "since": 1, "state": "connected"}]},
     "'peer' is missing"),
])
def test_garbage_is_refused_with_its_reason(mutate: Any, reason: str) -> None:
    with pytest.raises(ClusterRecordError, match=reason.replace("(", r"\(")):
        MasterRecord.from_wire(mutate(record().to_wire()))


def test_files_that_are_not_records_are_problems_not_tracebacks(tmp_path: pathlib.Path) -> None:
    good = record()
    put(tmp_path, good)
    (tmp_path / "aaaa.json").write_text("{not json")
    (tmp_path / "bbbb.json").write_text(json.dumps(record("other").to_wire()))  # wrong name
    (tmp_path / "cccc.json").write_bytes(b"\xff\xfe")
    (tmp_path / ".x.json.1234.tmp").write_text("a write under way")
    (tmp_path / "README").write_text("not a record: ignored")
    view = read_dir(str(tmp_path), 105.0)
    assert view.records == (good,)
    assert len(view.problems) == 3
    assert "aaaa.json is not a master's heartbeat record: not JSON" in view.problems[0]
    assert "its master_id is not its file's name" in view.problems[1]
    assert "cccc.json" in view.problems[2]
    with pytest.raises(ClusterRecordError, match="larger than"):
        big = tmp_path / "big.json"
        big.write_text(" " * (cluster.MAX_SIZE + 1))
        read_record(str(big))
    assert read_dir(str(tmp_path / "missing"), 0.0).records == ()


# -- the reader: who holds what, and the staleness rule --------------------------

def test_a_master_silent_for_three_intervals_is_gone_and_holds_nothing(
        tmp_path: pathlib.Path) -> None:
    w1 = HeldWorker("w1", 90.0, "127.0.0.1:5555")
    a = record("A", updated=100.0, interval=10.0, workers=(w1,))
    b = record("B", updated=125.0, interval=1.0, workers=(
        HeldWorker("w2", 120.0, "127.0.0.1:6666", "draining"),
        HeldWorker("w3", 120.0, "127.0.0.1:7777", "reconnecting")))
    put(tmp_path, a)
    put(tmp_path, b)
    view = read_dir(str(tmp_path), 127.0)  # A: 27 s (< 30), B: 2 s (< 3)
    assert view.live == (a, b) and view.gone == ()
    assert view.holders("w1") == [(a, w1)]
    assert [m.name for m, _ in view.holders("w2")] == ["B"]
    assert view.holders("w3") == [] and view.waiting("w3") == [b]  # its session waits
    assert view.held_names() == {"w1", "w2"}
    view = read_dir(str(tmp_path), 130.5)  # A: 30.5 s: gone; B: 5.5 s: gone
    assert view.live == () and view.gone == (a, b)
    assert view.holders("w1") == [] and view.held_names() == set()


def test_two_live_masters_claiming_one_worker_are_both_shown(tmp_path: pathlib.Path) -> None:
    put(tmp_path, record("A", workers=(HeldWorker("w1", 90.0, "p1"),)))
    put(tmp_path, record("B", workers=(HeldWorker("w1", 95.0, "p2"),)))
    assert [m.name for m, _ in read_dir(str(tmp_path), 101.0).holders("w1")] == ["A", "B"]


# -- where the cluster directory is ---------------------------------------------

def test_the_default_directory_is_beside_the_file_a_linked_workers_furls_names(
        tmp_path: pathlib.Path) -> None:
    shared, base = tmp_path / "shared", tmp_path / "master"
    shared.mkdir()
    base.mkdir()
    (shared / "workers.furls").write_text("")
    furls = base / "workers.furls"
    assert resolve_dir(None, str(base), str(furls)) is None  # no file: a lone master
    furls.write_text("")
    assert resolve_dir(None, str(base), str(furls)) is None  # a file of its own
    furls.unlink()
    furls.symlink_to(shared / "workers.furls")
    assert resolve_dir(None, str(base), str(furls)) == str(shared / "furl-cluster")
    assert resolve_dir("off", str(base), str(furls)) is None
    assert resolve_dir("cl", str(base), str(furls)) == str(base / "cl")
    assert resolve_dir("/x/y", str(base), str(furls)) == "/x/y"


def test_the_settings_are_read_and_checked(tmp_path: pathlib.Path) -> None:
    mconfig.create(str(tmp_path / "m"), "tcp:127.0.0.1:9990", None)
    conf = tmp_path / "m" / "furl-master.conf"
    conf.write_text(conf.read_text() + "cluster_dir = /shared/cl\ncluster_heartbeat = 2\n")
    c = mconfig.load(str(tmp_path / "m"))
    assert (c.cluster_dir, c.cluster_heartbeat) == ("/shared/cl", 2.0)
    conf.write_text(conf.read_text().replace("cluster_heartbeat = 2", "cluster_heartbeat = 0"))
    problems = mconfig.read(str(tmp_path / "m")).problems
    assert problems and "cluster_heartbeat must be between 0.5 and 3600" in problems[0]


# -- the writer, on a clock ------------------------------------------------------

class Source:
    """The host's snapshot, counted."""

    def __init__(self) -> None:
        self.workers: tuple[HeldWorker, ...] = ()
        self.calls: list[float] = []

    def __call__(self, now: float) -> MasterRecord:
        self.calls.append(now)
        return record(updated=now, interval=10.0, workers=self.workers)


def _heartbeat(tmp_path: pathlib.Path) -> tuple[Heartbeat, Source, Clock, pathlib.Path]:
    clock, src = Clock(), Source()
    clock.advance(1000.0)
    d = tmp_path / "shared" / "furl-cluster"
    hb = Heartbeat(str(d), src, clock, 10.0)
    return hb, src, clock, d / (cluster.master_id("hostA:/srv/m") + ".json")


def test_the_record_is_written_at_start_every_interval_and_removed_at_stop(
        tmp_path: pathlib.Path) -> None:
    hb, src, clock, path = _heartbeat(tmp_path)
    hb.startService()
    assert src.calls == [1000.0] and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # made, private
    clock.advance(9.9)
    assert src.calls == [1000.0]
    clock.advance(0.1)
    assert src.calls == [1000.0, 1010.0]
    assert read_record(str(path)).updated == 1010.0
    clock.advance(10)
    clock.advance(10)
    assert src.calls[-2:] == [1020.0, 1030.0]
    hb.stopService()
    assert not path.exists()  # a clean stop leaves no record to go stale
    assert clock.getDelayedCalls() == []


def test_attaches_and_detaches_are_written_soon_but_at_most_once_a_second(
        tmp_path: pathlib.Path) -> None:
    hb, src, clock, path = _heartbeat(tmp_path)
    hb.startService()  # wrote at 1000
    clock.advance(0.3)
    src.workers = (HeldWorker("w1", 1000.3, "127.0.0.1:1"),)
    hb.changed()
    hb.changed()
    hb.changed()
    clock.advance(0.6)
    assert len(src.calls) == 1  # not yet: the last write was 0.9 s ago
    clock.advance(0.1)
    assert src.calls == [1000.0, 1001.0]  # one write for the three changes
    assert [w.name for w in read_record(str(path)).workers] == ["w1"]
    clock.advance(5)
    hb.changed()  # long after the last write: at once
    clock.advance(0)
    assert src.calls[-1] == 1006.0
    hb.changed()  # then pending at stop: cancelled with the rest
    hb.stopService()
    assert clock.getDelayedCalls() == [] and not path.exists()
    hb.changed()  # after the stop: nothing
    assert clock.getDelayedCalls() == []


def test_a_write_that_fails_is_logged_once_and_tried_again(tmp_path: pathlib.Path) -> None:
    hb, src, clock, path = _heartbeat(tmp_path)
    path.parent.parent.mkdir()
    path.parent.write_text("a file where the directory belongs")
    hb.startService()  # no exception: the master goes on
    assert hb.failing is not None and "furl-cluster" in hb.failing
    first = hb.failing
    clock.advance(10)
    assert hb.failing == first and len(src.calls) == 2
    path.parent.unlink()
    clock.advance(10)
    assert hb.failing is None and path.exists()
    hb.stopService()


# -- the host writes it, and says its name in the metrics --------------------------

@pytest_twisted.ensureDeferred
async def test_the_host_writes_which_workers_it_holds(tmp_path: pathlib.Path) -> None:
    from prometheus_client import generate_latest

    from buildbot_furl.testing.hostrig import attach_w1 as _attach
    from buildbot_furl.testing.hostrig import host_with_w1

    d = tmp_path / "cl"
    clock = Clock()
    host, swiss = host_with_w1(tmp_path, clock, cluster_dir=str(d))
    path = d / (cluster.master_id(host.name) + ".json")
    try:
        assert read_record(str(path)).workers == ()
        session = await _attach(host, swiss)
        clock.advance(1)  # (debounced)
        r = read_record(str(path))
        assert r.name == host.name and r.pid == os.getpid() and r.interval == 10.0
        assert [(w.name, w.state) for w in r.workers] == [("w1", "connected")]
        text = generate_latest(host.metrics.registry).decode()
        assert f'buildbot_furl_master_info{{master="{host.name}"}} 1.0' in text
        session.end("the worker stopped")
        clock.advance(1)
        assert read_record(str(path)).workers == ()
    finally:
        await defer.maybeDeferred(host.stopService)
    assert not path.exists()


# -- the CLI: files only ---------------------------------------------------------

def _cli(*args: str) -> Any:
    from buildbot_furl.cli.master import cli
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_list_workers_cluster_says_who_holds_each_worker(tmp_path: pathlib.Path) -> None:
    import time

    from buildbot_furl import furlsfile
    from buildbot_furl.furl import Furl, new_swissnum
    from buildbot_furl.tubs import make_tub

    base = tmp_path / "m"
    mconfig.create(str(base), "tcp:127.0.0.1:9990", None)
    tubid = make_tub(str(base / "private" / "tub.pem")).getTubID()
    with furlsfile.update(str(base / "workers.furls"), tubid) as ff:
        for n in ("w1", "w2", "w3"):
            ff.add(n, Furl(tubid, ("tcp:127.0.0.1:9990",), new_swissnum()))
    p = _cli("list-workers", "-d", str(base), "--cluster")
    assert p.exit_code == 1 and "no cluster directory" in p.output and "cluster_dir" in p.output
    assert len(p.output.strip().splitlines()) == 1
    cl = tmp_path / "cl"
    conf = base / "furl-master.conf"
    conf.write_text(conf.read_text() + f"cluster_dir = {cl}\n")
    cl.mkdir()
    now = time.time()
    put(cl, record("A", updated=now - 1, workers=(HeldWorker("w1", now - 5, "10.0.0.1:1"),)))
    put(cl, record("B", updated=now - 100, workers=(HeldWorker("w2", now - 200, "10.0.0.2:1"),)))
    (cl / "junk.json").write_text("[]")
    p = _cli("list-workers", "-d", str(base), "--cluster")
    assert p.exit_code == 0, p.output
    out = p.output
    assert "master A: live" in out
    assert "master B: no heartbeat for 100 s (stopped or dead" in out
    assert "w1  held by A (from 10.0.0.1:1" in out
    assert "w2  not attached to any master" in out  # B is gone
    assert "w3  not attached to any master" in out
    assert "junk.json is not a master's heartbeat record: not a map" in out
    assert "pb://" not in out
    p = _cli("list-workers", "-d", str(base), "--cluster", "--json")
    j = json.loads(p.stdout)
    assert [(m["name"], m["live"]) for m in j["masters"]] == [("A", True), ("B", False)]
    assert [w["held_by"][0]["master"] if w["held_by"] else None for w in j["workers"]] == \
        ["A", None, None]
    assert "pb://" not in p.stdout
    p = _cli("list-workers", "-d", str(base), "--cluster", "--show-furls")
    assert p.exit_code == 64 and "pb://" not in p.output  # (Exit.USAGE)


def test_the_buildbot_plugin_takes_cluster_dir_and_the_masters_name(
        tmp_path: pathlib.Path) -> None:
    from buildbot_furl.buildbot.settings import hub_settings
    from buildbot_furl.errors import ConfigError
    from buildbot_furl.master.host import master_name
    from buildbot_furl.tubs import make_tub

    base, shared = tmp_path / "m", tmp_path / "shared"
    mconfig.create(str(base), "tcp:127.0.0.1:9990", None)
    make_tub(str(base / "private" / "tub.pem"))
    shared.mkdir()
    (base / "workers.furls").rename(shared / "workers.furls")
    (base / "workers.furls").symlink_to(shared / "workers.furls")
    conf = base / "furl-master.conf"
    conf.write_text(conf.read_text() + "cluster_heartbeat = 5\n")
    s = hub_settings(str(base), {"furl": {"port": 9990}})
    assert (s.cluster_dir, s.cluster_heartbeat) == (str(shared / "furl-cluster"), 5.0)
    s = hub_settings(str(base), {"furl": {"port": 9990, "cluster_dir": "off"}})
    assert s.cluster_dir is None
    s = hub_settings(str(base), {"furl": {"port": 9990, "cluster_dir": "/elsewhere"}})
    assert s.cluster_dir == "/elsewhere"
    with pytest.raises(ConfigError, match="cluster_dir'] must be a directory"):
        hub_settings(str(base), {"furl": {"port": 9990, "cluster_dir": 5}})

    class Master:
        name = "bb-a"

    assert master_name(Master(), "/srv/m") == "bb-a"  # Buildbot's own name for it
    assert master_name(None, "/srv/m").endswith(":/srv/m")
