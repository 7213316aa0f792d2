"""The master's invites on a task.Clock with fake wormholes: a claim mints
the FURL then (a new worker, or a rotation), a wrong code burns the invite,
an invite expires, survives a restart (opened again with its code), dies
with its worker, and the file keeping the codes is private."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from buildbot_furl import furlsfile
from buildbot_furl.errors import BadRequest, ConfigError
from buildbot_furl.furl import Furl, new_swissnum, parse_furl
from buildbot_furl.master.invites import InviteError, Invites
from buildbot_furl.master.metrics import MasterMetrics
from buildbot_furl.protocol.messages import (
    InviteClaim,
    InviteGrant,
    InviteRequest,
    invite_stored,
)

TUBID = "a" * 32
LOCATION = ("tcp:127.0.0.1:9999",)


class WrongPasswordError(Exception):
    """Named as magic-wormhole's: how a failed PAKE shows."""


class FakeWormhole:
    made = 0

    def __init__(self, mailbox: str) -> None:
        FakeWormhole.made += 1
        self.mailbox = mailbox
        self.code: str | None = None
        self.sent: list[bytes] = []
        self.inbox: list[defer.Deferred[bytes]] = []
        self.closed = False

    def allocate_code(self, n: int = 2) -> None:
        self.code = f"{FakeWormhole.made}-purple-sausages"

    def set_code(self, code: str) -> None:
        self.code = code

    def get_code(self) -> defer.Deferred[str]:
        if self.code is None:  # an unreachable mailbox: no code, ever
            return defer.Deferred()
        return defer.succeed(self.code)

    def get_welcome(self) -> defer.Deferred[dict[str, str]]:
        return defer.succeed({})

    def get_message(self) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.inbox.append(d)
        return d

    def send_message(self, msg: bytes) -> None:
        self.sent.append(msg)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        for d in self.inbox:
            if not d.called:
                d.errback(Exception("LonelyError"))
        return defer.succeed(None)

    def receive(self, msg: bytes) -> None:
        self.inbox[-1].callback(msg)


class Registry:
    def __init__(self, path: str) -> None:
        self.path = path
        self.reloads = 0

    def knows(self, name: str) -> bool:
        return furlsfile.read(self.path).get(name) is not None

    def reload(self, strict: bool = False) -> bool:
        self.reloads += 1
        return True


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.furls = str(tmp / "workers.furls")
        furlsfile.ensure_exists(self.furls)
        (tmp / "private").mkdir(mode=0o700, exist_ok=True)
        self.book = str(tmp / "private" / "invites.json")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.holes: list[FakeWormhole] = []
        self.metrics = MasterMetrics()
        self.invites = self.make()

    def make(self) -> Invites:
        def hole(mailbox: str) -> FakeWormhole:
            w = FakeWormhole(mailbox)
            self.holes.append(w)
            return w

        inv = Invites(self.book, self.furls, TUBID, LOCATION, "ws://127.0.0.1:4000/v1",
                      Registry(self.furls), self.clock, hole, furlsfile.check_name,
                      self.metrics, in_thread=defer.maybeDeferred)
        inv.startService()
        inv.resume()
        return inv

    def invite(self, name: str, ttl: float = 3600) -> Any:
        d = defer.Deferred.fromCoroutine(self.invites.invite(InviteRequest(name, ttl)))
        result = d.result  # fake wormholes answer at once: no waiting
        if isinstance(result, Failure):
            d.addErrback(lambda f: None)
            result.raiseException()
        return result

    def add(self, name: str) -> Furl:
        furl = Furl(TUBID, LOCATION, new_swissnum())
        with furlsfile.update(self.furls, TUBID) as ff:
            ff.add(name, furl)
        return furl

    def outcome(self, outcome: str) -> float:
        from prometheus_client import generate_latest
        line = f'buildbot_furl_invites_ended_total{{outcome="{outcome}"}}'
        text = generate_latest(self.metrics.registry).decode()
        return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


def test_a_claim_mints_the_furl_then_and_the_code_is_forgotten(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    answer = rig.invite("w1")
    assert not answer.rotation and answer.mailbox == "ws://127.0.0.1:4000/v1"
    assert "sausages" not in repr(answer)  # the code is a secret until used
    assert rig.invites.registry.knows("w1") is False  # no FURL exists yet
    assert os.stat(rig.book).st_mode & 0o777 == 0o600
    assert answer.code in Path(rig.book).read_text()
    w = rig.holes[-1]
    w.receive(InviteClaim("build-7", "ann", "0.1").to_wire())
    grant = InviteGrant.from_wire(w.sent[0])
    assert grant.name == "w1" and not grant.refused
    entry = furlsfile.read(rig.furls).get("w1")
    assert entry is not None and str(entry.furl) == grant.furl
    assert parse_furl(grant.furl).tubid == TUBID
    w.receive(invite_stored(True))
    assert w.closed
    assert answer.code not in Path(rig.book).read_text()
    rows = rig.invites.rows()
    assert [(r.name, r.state, r.host) for r in rows] == [("w1", "claimed", "build-7")]
    assert rig.outcome("claimed") == 1
    assert rig.clock.getDelayedCalls() == []  # the expiry timer went with it


def test_a_listed_worker_gets_a_new_furl_by_an_invite(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    old = rig.add("w1")
    assert rig.invite("w1").rotation
    w = rig.holes[-1]
    w.receive(InviteClaim().to_wire())
    new = InviteGrant.from_wire(w.sent[0]).furl
    assert new != str(old) and str(furlsfile.read(rig.furls).get("w1").furl) == new


def test_a_wrong_code_burns_the_invite(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.invite("w1")
    w = rig.holes[-1]
    w.inbox[-1].errback(WrongPasswordError())
    assert w.closed and w.sent == [] and rig.invites.rows() == []
    assert furlsfile.read(rig.furls).get("w1") is None
    assert rig.outcome("wrong_code") == 1
    assert rig.invite("w1").name == "w1"  # a new invite can be made


def test_an_invite_expires_on_the_clock(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.invite("w1", ttl=600)
    rig.clock.advance(599)
    assert [r.state for r in rig.invites.rows()] == ["pending"]
    rig.clock.advance(1)
    assert rig.invites.rows() == [] and rig.holes[-1].closed
    assert rig.outcome("expired") == 1


def test_a_pending_invite_survives_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    code = rig.invite("w1", ttl=600).code
    rig.invite("w2", ttl=100)
    d = rig.invites.stopService()
    assert d.called and all(w.closed for w in rig.holes)  # nameplates released
    rig.clock.advance(200)  # w2's expired meanwhile
    rig.invites = rig.make()
    again = rig.holes[-1]
    assert again.code == code  # opened again with the very code handed out
    assert [(r.name, r.state) for r in rig.invites.rows()] == [("w1", "pending")]
    again.receive(InviteClaim().to_wire())
    assert InviteGrant.from_wire(again.sent[0]).name == "w1"
    rig.clock.advance(400)  # its timer was restarted with what was left, then cancelled
    assert rig.clock.getDelayedCalls() == []


def test_an_invite_for_a_new_furl_dies_with_its_worker(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.add("w1")
    rig.invite("w1")
    rig.invites.worker_gone("w1", "revoked")
    assert rig.invites.rows() == [] and rig.holes[-1].closed


def test_a_worker_removed_before_its_claim_gets_a_refusal_not_a_furl(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.invite("w1")
    rig.add("w1")  # the admin made w1 by hand meanwhile
    w = rig.holes[-1]
    w.receive(InviteClaim().to_wire())
    grant = InviteGrant.from_wire(w.sent[0])
    assert grant.refused and not grant.furl and "already exists" in grant.refused


def test_bad_requests(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.invite("w1")
    with pytest.raises(InviteError, match="pending already"):
        rig.invite("w1")
    with pytest.raises(BadRequest):
        rig.invite("no/slashes")
    with pytest.raises(BadRequest):
        InviteRequest.from_wire(InviteRequest("w2", 10).to_wire())  # under a minute


def test_an_unreachable_mailbox_is_one_line_for_the_admin(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    rig = Rig(tmp_path)
    monkeypatch.setattr(FakeWormhole, "allocate_code", lambda self, n=2: None)
    d = defer.Deferred.fromCoroutine(rig.invites.invite(InviteRequest("w1", 3600)))
    assert not d.called
    rig.clock.advance(15)
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(InviteError)
    assert "cannot reach the mailbox ws://127.0.0.1:4000/v1: no answer within 15 s" in \
        str(failure.value)
    assert rig.invites.rows() == [] and rig.holes[-1].closed


def test_the_file_of_codes_must_be_private(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.invite("w1")
    os.chmod(rig.book, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        rig.make()


def test_a_damaged_file_is_set_aside_not_fatal(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    Path(rig.book).write_text("{not json")
    os.chmod(rig.book, 0o600)
    inv = rig.make()
    assert inv.rows() == [] and os.path.exists(rig.book + ".damaged")
    assert not os.path.exists(rig.book) or json.loads(Path(rig.book).read_text())
