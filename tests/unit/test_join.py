"""The worker's end of an invite, on a task.Clock with a fake wormhole:
each way a claim can fail is one line for the worker's admin, and the
master hears whether the FURL was stored."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from buildbot_furl.errors import ConfigError
from buildbot_furl.furl import Furl
from buildbot_furl.protocol.messages import (
    InviteClaim,
    InviteGrant,
    invite_stored_from_wire,
)
from buildbot_furl.worker.join import JoinError, check_code, claim

FURL = "pb://" + "a" * 32 + "@tcp:127.0.0.1:9999/" + "b" * 32


class WrongPasswordError(Exception):
    pass


class Hole:
    def __init__(self, welcome: bool = True) -> None:
        self.welcome: defer.Deferred[Any] = defer.succeed({}) if welcome else defer.Deferred()
        self.answer: defer.Deferred[bytes] = defer.Deferred()
        self.sent: list[bytes] = []
        self.code: str | None = None
        self.closed = False

    def get_welcome(self) -> defer.Deferred[Any]:
        return self.welcome

    def set_code(self, code: str) -> None:
        self.code = code

    def send_message(self, msg: bytes) -> None:
        self.sent.append(msg)

    def get_message(self) -> defer.Deferred[bytes]:
        return self.answer

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)


def _claim(hole: Hole, clock: Clock, store: Any = None) -> defer.Deferred[str]:
    kept: list[tuple[Furl, str]] = []
    d = defer.Deferred.fromCoroutine(claim(
        clock, "7-guitarist-revenge", "ws://127.0.0.1:4000/v1", InviteClaim("box", "ann", "1"),
        store or (lambda f, n: kept.append((f, n))), 60, make=lambda url: hole))
    d.kept = kept  # type: ignore[attr-defined]
    return d


def _error(d: defer.Deferred[Any]) -> str:
    assert d.called, "still waiting"
    f = d.result
    d.addErrback(lambda _: None)
    assert f.check(JoinError), f
    return str(f.value)


def test_a_claim_stores_the_furl_and_says_so() -> None:
    hole, clock = Hole(), Clock()
    d = _claim(hole, clock)
    assert hole.code == "7-guitarist-revenge"
    assert InviteClaim.from_wire(hole.sent[0]) == InviteClaim("box", "ann", "1")
    hole.answer.callback(InviteGrant("w1", FURL).to_wire())
    assert d.result == "w1" and str(d.kept[0][0]) == FURL  # type: ignore[attr-defined]
    assert invite_stored_from_wire(hole.sent[-1]) == (True, "") and hole.closed


def test_a_wrong_code_is_said_as_such() -> None:
    hole, clock = Hole(), Clock()
    d = _claim(hole, clock)
    hole.answer.errback(WrongPasswordError())
    assert "the code is wrong" in _error(d) and hole.closed


def test_nobody_holding_the_code_is_said_after_the_wait() -> None:
    hole, clock = Hole(), Clock()
    d = _claim(hole, clock)
    clock.advance(59)
    assert not d.called
    clock.advance(1)
    assert "no master answered this code within 60 s" in _error(d)


def test_an_unreachable_mailbox_is_not_mistaken_for_a_bad_code() -> None:
    hole, clock = Hole(welcome=False), Clock()
    d = _claim(hole, clock)
    clock.advance(15)
    assert "cannot reach the mailbox ws://127.0.0.1:4000/v1" in _error(d)
    assert hole.code is None  # the code was never used


def test_a_refusal_and_a_failed_store_are_one_line_each() -> None:
    hole, clock = Hole(), Clock()
    d = _claim(hole, clock)
    hole.answer.callback(InviteGrant(refused="worker 'w1' already exists").to_wire())
    assert "the master refused the claim: worker 'w1' already exists" in _error(d)

    def full(furl: Furl, name: str) -> None:
        raise OSError(28, "No space left on device")

    hole = Hole()
    d = _claim(hole, clock, full)
    hole.answer.callback(InviteGrant("w1", FURL).to_wire())
    msg = _error(d)
    assert "could not be stored" in msg and FURL not in msg and "b" * 32 not in msg
    assert invite_stored_from_wire(hole.sent[-1])[0] is False


def test_codes_are_checked_before_any_use() -> None:
    assert check_code(" 12-purple-sausages\n") == "12-purple-sausages"
    for bad in ("", "guitarist-revenge", "7", "7-", "7-Guitar", "pb://x@y/z", "7-a b"):
        with pytest.raises(ConfigError):
            check_code(bad)
