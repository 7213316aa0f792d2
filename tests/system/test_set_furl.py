"""``furl-worker set-furl`` compares whole FURLs, tells the truth, and keeps
the FURL in use (and in master.furl) until the new one has attached."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbot_furl.furl import new_swissnum, parse_furl
from buildbot_furl.testing.farm import Farm, cli
from buildbot_furl.testing.procs import free_port

OTHER_TUBID = "b" * 32


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """A master with one attached worker, w1 (the tests leave it attached
    with its first FURL, or say so)."""
    from buildbot_furl.testing.farm import farm_in
    from buildbot_furl.testing.procs import Procs

    p = Procs()
    try:
        with farm_in(tmp_path_factory.mktemp("setfurl"), p) as f:
            furl = f.create_worker("w1")
            f.start_master()
            given = f.tmp / "w1.furl"
            given.write_text(furl + "\n")
            given.chmod(0o600)
            wd = f.wdir("w1")
            cli("furl-worker", "create-worker", str(wd), "--furl-file", str(given), check=True)
            cli("furl-worker", "start", str(wd), check=True)
            p.track_pidfile(wd / "furl-worker.pid")
            yield f
    finally:
        p.cleanup()


def _attaches(farm: Farm) -> int:
    return (farm.mdir / "master.log").read_text().count("worker w1 attached")


def _state(farm: Farm) -> dict[str, object]:
    return json.loads((farm.wdir("w1") / "furl-worker.state").read_text())


def _set(farm: Farm, tmp_path: Path, furl: str) -> tuple[int, str]:
    farm.secrets.add(parse_furl(furl).swissnum)  # never in a log either (checked at the end)
    f = tmp_path / "new.furl"
    f.write_text(furl + "\n")
    f.chmod(0o600)
    p = cli("furl-worker", "set-furl", str(farm.wdir("w1")), "--furl-file", str(f),
            "--wait", "40")
    for secret in {parse_furl(furl).swissnum} | farm.secrets:
        assert secret not in p.stderr + p.stdout
    return p.returncode, p.stderr


@pytest.mark.parametrize("change", ["address", "tubid", "swissnum"])
@pytest.mark.expect_log(r"refused attach from .*: unknown FURL")  # the mistyped swissnum
def test_a_new_furl_that_does_not_work_is_not_taken(one: Farm, tmp_path: Path,
                                                    change: str) -> None:
    old = one.furls["w1"]
    f = parse_furl(old)
    port = one.port
    if change == "address":
        new = str(f).replace(f"tcp:127.0.0.1:{port}", f"tcp:127.0.0.1:{free_port()}")
    elif change == "tubid":
        new = str(f).replace(f.tubid, OTHER_TUBID)
    else:
        new = str(f).replace(f.swissnum, new_swissnum())
    assert new != old
    before = _attaches(one)
    code, err = _set(one, tmp_path, new)
    assert code == 4, err
    want = {"address": "cannot reach the master at tcp:127.0.0.1:",
            "tubid": "is not the master this FURL names",
            "swissnum": "the master does not know this FURL"}[change]
    assert want in err and "could not use the new FURL" in err, err
    assert f"keeps the previous one (attached to the master at tcp:127.0.0.1:{port})" in err
    assert "master.furl is unchanged" in err
    assert (one.wdir("w1") / "master.furl").read_text().strip() == old
    assert not (one.wdir("w1") / "master.furl.new").exists()
    # the working connection was never dropped
    assert _state(one)["state"] == "attached"
    assert _attaches(one) == before
    assert one.workers()["w1"]["connected"]


def test_a_new_address_that_works_is_taken_and_named(one: Farm, tmp_path: Path) -> None:
    old = one.furls["w1"]
    new = old.replace("tcp:127.0.0.1:", "tcp:localhost:")
    code, err = _set(one, tmp_path, new)
    assert code == 0, err
    assert f"attached to the master at tcp:localhost:{one.port}" in err, err
    assert (one.wdir("w1") / "master.furl").read_text().strip() == new
    assert not (one.wdir("w1") / "master.furl.new").exists()
    # the same again: nothing to do, and said so
    code, err = _set(one, tmp_path, new)
    assert code == 0 and "already uses this FURL" in err, err


# -- the switch's decisions, on a clock ------------------------------------------


class _Switching:
    """A WorkerService that is never started: its FURL switches are recorded."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, reachable: bool) -> None:
        from twisted.internet import error as terror
        from twisted.internet.task import Clock

        from buildbot_furl.layout import WorkerPaths
        from buildbot_furl.privatefiles import write_private
        from buildbot_furl.worker import service

        async def probe(furl: object, timeout: float, clock: object) -> None:
            if not reachable:
                raise terror.ConnectionRefusedError()

        monkeypatch.setattr(service, "probe", probe)
        self.old = parse_furl(f"pb://{'a' * 32}@tcp:127.0.0.1:1/{new_swissnum()}")
        self.new = parse_furl(f"pb://{'a' * 32}@tcp:127.0.0.1:2/{new_swissnum()}")
        self.paths = WorkerPaths(str(tmp))
        write_private(self.paths.furl, f"{self.old}\n")
        self.clock = Clock()
        self.svc = service.WorkerService(self.paths, self.old, clock=self.clock)
        self.dialed: list[str] = []

        def switch(furl: object) -> bool:  # what switch_furl would dial
            self.dialed.append(str(furl))
            self.svc.furl = furl  # type: ignore[assignment]
            return True

        self.svc.switch_furl = switch  # type: ignore[method-assign]

    def stored(self) -> str:
        return Path(self.paths.furl).read_text().strip()

    def result(self) -> tuple[object, object]:
        st = json.loads(Path(self.paths.state).read_text())["switch"]
        return st["result"], st["error"]


def test_a_reached_furl_that_never_attaches_is_given_up_on_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildbot_furl.worker.service import SWITCH_TIMEOUT

    t = _Switching(tmp_path, monkeypatch, reachable=True)
    t.svc.try_furl(t.new)
    assert t.dialed == [str(t.new)] and t.result() == ("trying", None)
    t.clock.advance(SWITCH_TIMEOUT - 0.001)
    assert t.dialed == [str(t.new)]
    t.clock.advance(0.001)
    assert t.dialed == [str(t.new), str(t.old)]  # back to the previous one
    assert t.result() == ("failed", f"not attached within {SWITCH_TIMEOUT:.0f} s")
    assert t.stored() == str(t.old)


def test_a_refused_attach_goes_back_at_once(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    t = _Switching(tmp_path, monkeypatch, reachable=True)
    t.svc.try_furl(t.new)
    t.svc._outcome(False, "this worker's FURL was revoked", fatal=True)
    assert t.dialed == [str(t.new), str(t.old)]
    assert t.result() == ("failed", "this worker's FURL was revoked")
    assert t.stored() == str(t.old) and not t.clock.getDelayedCalls()


def test_an_attached_furl_replaces_the_old_one(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    t = _Switching(tmp_path, monkeypatch, reachable=True)
    t.svc.try_furl(t.new)
    t.svc._outcome(False, "cannot reach the master: connection refused")  # a retry, not fatal
    assert t.dialed == [str(t.new)]
    t.svc._outcome(True, "attached")
    assert t.result() == ("attached", None) and t.stored() == str(t.new)
    assert not t.clock.getDelayedCalls()


def test_an_unreachable_furl_is_never_dialed(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    t = _Switching(tmp_path, monkeypatch, reachable=False)
    t.svc.try_furl(t.new)
    assert t.dialed == []
    result, error = t.result()
    assert result == "failed" and "connection refused" in str(error)
    assert t.stored() == str(t.old)
