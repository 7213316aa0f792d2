"""The FURL side of a multi-master cluster, without Buildbot (standalone
furl-master daemons, so no PostgreSQL or crossbar is needed): FURLs with every
master's address, the shared key and workers.furls handed out as
docs/cluster.md says, and what a worker meets when the masters differ."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from buildbot_furl import cluster
from buildbot_furl.testing.farm import cli
from buildbot_furl.testing.procs import Procs, free_port, wait_for

from buildbot_furl.privatefiles import write_private


class Two:
    """Masters A and B in ``tmp``; A made by create-master with both
    addresses, B given A's key and settings (its own port)."""

    def __init__(self, tmp: Path, procs: Procs) -> None:
        self.tmp, self.procs = tmp, procs
        self.a, self.b = tmp / "A", tmp / "B"
        self.pa, self.pb = free_port(), free_port()
        self.secrets: set[str] = set()
        cli("furl-master", "create-master", "-d", str(self.a), "--location",
            f"tcp:127.0.0.1:{self.pa},tcp:127.0.0.1:{self.pb}",
            "--port", f"tcp:{self.pa}:interface=127.0.0.1", check=True)

    def copy_to_b(self, key: bool = True) -> None:
        (self.b / "private").mkdir(parents=True, mode=0o700)
        if key:
            shutil.copy2(self.a / "private" / "tub.pem", self.b / "private" / "tub.pem")
        conf = (self.a / "furl-master.conf").read_text()
        (self.b / "furl-master.conf").write_text(
            conf.replace(f"port = tcp:{self.pa}:", f"port = tcp:{self.pb}:"))

    def create_worker(self, name: str, d: Path | None = None) -> str:
        furl = cli("furl-master", "create-worker", "-d", str(d or self.a), name,
                   check=True).stdout.strip()
        self.secrets.add(furl.rsplit("/", 1)[1])
        return furl

    def start(self, d: Path) -> None:
        cli("furl-master", "start", "-d", str(d), check=True)
        self.procs.track_pidfile(d / "furl-master.pid")

    def start_worker(self, furl: str) -> tuple[int, str]:
        wdir = self.tmp / "worker"
        ff = self.tmp / "w.furl"
        write_private(str(ff), furl + "\n")
        cli("furl-worker", "create-worker", str(wdir), "--furl-file", str(ff), check=True)
        ff.unlink()
        p = cli("furl-worker", "start", str(wdir), "--wait", "15", timeout=90)
        self.procs.track_pidfile(wdir / "furl-worker.pid")
        for secret in self.secrets:
            assert secret not in p.stderr + p.stdout
        return p.returncode, p.stderr

    def connected(self, d: Path) -> set[str]:
        import json
        p = cli("furl-master", "list-workers", "-d", str(d), "--json", check=True)
        return {w["name"] for w in json.loads(p.stdout)["workers"] if w.get("connected")}


@pytest.fixture
def two(tmp_path: Path, procs: Procs) -> Iterator[Two]:
    t = Two(tmp_path, procs)
    yield t
    procs.cleanup()  # the daemons' logs are complete
    for log in tmp_path.rglob("*.log*"):
        text = log.read_text(errors="replace")
        for secret in t.secrets:
            assert secret not in text, f"a FURL secret leaked into {log}"


def test_every_furl_carries_every_address(two: Two) -> None:
    furl = two.create_worker("w1")
    assert furl.split("@", 1)[1].rsplit("/", 1)[0] == \
        f"tcp:127.0.0.1:{two.pa},tcp:127.0.0.1:{two.pb}"
    rotated = cli("furl-master", "rotate-worker", "-d", str(two.a), "w1",
                  check=True).stdout.strip()
    two.secrets.add(rotated.rsplit("/", 1)[1])
    assert rotated.split("@", 1)[1].rsplit("/", 1)[0] == \
        f"tcp:127.0.0.1:{two.pa},tcp:127.0.0.1:{two.pb}"


@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker w1")  # staged
def test_shared_key_and_linked_file_worker_attaches_to_b(two: Two) -> None:
    """A is down: the worker attaches to B, which holds A's key and a link to
    A's workers.furls; a worker added and revoked on B is in A's file."""
    two.copy_to_b()
    (two.b / "workers.furls").symlink_to(two.a / "workers.furls")
    furl = two.create_worker("w1", d=two.b)  # made on B, lands in A's file
    assert "w1 " in (two.a / "workers.furls").read_text()
    two.start(two.b)
    rc, err = two.start_worker(furl)
    assert rc == 0, err
    assert two.connected(two.b) == {"w1"}
    cli("furl-master", "revoke-worker", "-d", str(two.b), "w1", check=True)
    assert (two.b / "workers.furls").is_symlink()
    assert "w1 " not in (two.a / "workers.furls").read_text()


def test_master_with_another_key_is_not_the_workers_master(two: Two, procs: Procs) -> None:
    furl = two.create_worker("w1")
    # B made on its own: another key; A's workers.furls copied is refused
    cli("furl-master", "create-master", "-d", str(two.b), "--location",
        f"tcp:127.0.0.1:{two.pb}", "--port", f"tcp:{two.pb}:interface=127.0.0.1",
        check=True)
    shutil.copy2(two.a / "workers.furls", two.b / "workers.furls")
    p = cli("furl-master", "start", "-d", str(two.b))
    procs.track_pidfile(two.b / "furl-master.pid")
    assert p.returncode != 0 and "belongs to another master" in p.stderr, p.stderr
    # with an empty list it starts, but the worker does not take it for A
    write_private(str(two.b / "workers.furls"), "")
    two.start(two.b)
    rc, err = two.start_worker(furl)
    assert rc != 0 and "is not the master this FURL names" in err, err
    assert two.connected(two.b) == set()


@pytest.mark.expect_log(r"unknown FURL \(wrong secret\)")  # staged: no line for it
def test_master_without_the_workers_line_refuses_it(two: Two) -> None:
    two.copy_to_b()
    write_private(str(two.b / "workers.furls"), "")  # a list of its own: not shared
    furl = two.create_worker("w1")
    two.start(two.b)
    rc, err = two.start_worker(furl)
    assert rc != 0 and "the master does not know this FURL" in err, err


def _cluster(d: Path) -> dict[str, Any]:
    p = cli("furl-master", "list-workers", "-d", str(d), "--cluster", "--json", check=True)
    assert "pb://" not in p.stdout + p.stderr  # never a FURL
    return json.loads(p.stdout)


def _holders(view: dict[str, Any], worker: str) -> list[str]:
    return [h["master"] for w in view["workers"] if w["name"] == worker for h in w["held_by"]]


def _live(view: dict[str, Any]) -> dict[str, bool]:
    return {m["name"]: m["live"] for m in view["masters"]}


def test_list_workers_cluster_says_which_master_holds_the_worker(two: Two) -> None:
    """Issue 18: both masters link workers.furls to one shared file, so both
    write their heartbeat records into the default furl-cluster/ beside it;
    list-workers --cluster on B says A holds the worker; A killed, it says A
    is gone and, once the worker has moved, that B holds it."""
    shared = two.tmp / "shared"
    shared.mkdir(mode=0o700)
    (two.a / "workers.furls").rename(shared / "workers.furls")
    (two.a / "workers.furls").symlink_to(shared / "workers.furls")
    conf = two.a / "furl-master.conf"
    conf.write_text(conf.read_text() + "cluster_heartbeat = 1\n")  # stale after 3 s
    two.copy_to_b()
    (two.b / "workers.furls").symlink_to(shared / "workers.furls")
    furl = two.create_worker("w1")
    name_a, name_b = f"{socket.gethostname()}:{two.a}", f"{socket.gethostname()}:{two.b}"
    cl = shared / "furl-cluster"
    two.start(two.a)
    assert stat.S_IMODE(cl.stat().st_mode) == 0o700
    rc, err = two.start_worker(furl)  # B is not up: A has it
    assert rc == 0, err
    two.start(two.b)
    view = wait_for(lambda: (v := _cluster(two.b)) and _holders(v, "w1") == [name_a]
                    and len(v["masters"]) == 2 and v, 20)
    assert view and _live(view) == {name_a: True, name_b: True}, view
    for record in cl.iterdir():
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
    text = cli("furl-master", "list-workers", "-d", str(two.b), "--cluster", check=True).stdout
    assert f"w1  held by {name_a} (from 127.0.0.1:" in text, text

    pid_a = int((two.a / "furl-master.pid").read_text())
    os.kill(pid_a, signal.SIGKILL)  # no clean stop: its record stays, and goes stale
    view = wait_for(lambda: (v := _cluster(two.b)) and not _live(v)[name_a]
                    and _holders(v, "w1") == [name_b] and v, 30)
    assert view and _live(view) == {name_a: False, name_b: True}, view
    assert two.connected(two.b) == {"w1"}
    text = cli("furl-master", "list-workers", "-d", str(two.a), "--cluster", check=True).stdout
    assert re.search(rf"master {re.escape(name_a)}: no heartbeat for \d+ s \(stopped or dead",
                     text), text  # (A's own directory says it too: files only)
    assert f"w1  held by {name_b} (from 127.0.0.1:" in text, text
    cli("furl-master", "stop", "-d", str(two.b), check=True)
    assert [p.name for p in cl.iterdir()] == [f"{cluster.master_id(name_a)}.json"]  # B's gone
