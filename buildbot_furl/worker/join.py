"""The worker's end of an invite: a one-time code in, a FURL out.

``furl-worker create-worker DIR --code CODE`` (and ``set-furl DIR --code
CODE``) open a magic-wormhole with the code the master's admin handed over,
say who they are (:class:`InviteClaim`), receive the FURL the master mints
for them (:class:`InviteGrant`), have it stored, and say so.  The code is
good once: a wrong code fails the wormhole's PAKE on both ends (and the
master burns the invite); a used, cancelled or expired one meets no master.
See :mod:`buildbot_furl.master.invites` for the master's end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from buildbot_furl.errors import BadRequest, ConfigError, FurlError
from buildbot_furl.furl import Furl, parse_furl
from buildbot_furl.protocol.messages import (
    INVITE_APPID,
    INVITE_CODE_RE,
    InviteClaim,
    InviteGrant,
    invite_stored,
)

#: seconds to wait for the master's answer once the code is set
DEFAULT_WAIT = 60.0
#: seconds to reach the mailbox at all
MAILBOX_TIMEOUT = 15.0


class JoinError(FurlError):
    """The invite could not be claimed (said to the worker's admin in one line)."""


def check_code(code: str) -> str:
    """A code as ``furl-master invite`` prints it (``7-guitarist-revenge``)."""
    text = code.strip()
    if not INVITE_CODE_RE.fullmatch(text):
        raise ConfigError("--code: not an invite code (a number and words, like "
                          "7-guitarist-revenge, as 'furl-master invite' printed it)")
    return text


def _why(e: BaseException) -> str:
    return (str(e) or type(e).__name__)[:200]


async def claim(reactor: Any, code: str, mailbox: str, me: InviteClaim,
                store: Callable[[Furl, str], None], wait: float = DEFAULT_WAIT,
                make: Callable[[str], Any] | None = None) -> str:
    """Claim the invite ``code`` on ``mailbox``; ``store(furl, name)`` keeps
    the FURL (raising ConfigError when it cannot).  Answers the worker's
    name.  JoinError (one line, no secret) when the claim fails."""
    if make is None:
        import wormhole  # heavy: only when an invite is claimed

        def make(url: str) -> Any:
            return wormhole.create(INVITE_APPID, url, reactor)

    w = make(mailbox)
    try:
        welcome = w.get_welcome()
        welcome.addTimeout(MAILBOX_TIMEOUT, reactor)
        try:
            await welcome  # told apart from "nobody holds this code"
        except defer.TimeoutError:
            raise JoinError(f"cannot reach the mailbox {mailbox}: no answer within "
                            f"{MAILBOX_TIMEOUT:.0f} s (check --mailbox)") from None
        except Exception as e:
            raise JoinError(f"cannot reach the mailbox {mailbox}: {_why(e)}") from None
        w.set_code(check_code(code))
        w.send_message(me.to_wire())
        d = w.get_message()
        d.addTimeout(wait, reactor)
        try:
            raw = await d
        except defer.TimeoutError:
            raise JoinError(
                f"no master answered this code within {wait:.0f} s: it was used already, "
                "has expired or been cancelled, is mistyped, or the master uses another "
                f"mailbox than {mailbox} (--mailbox)") from None
        except Exception as e:
            name = type(e).__name__
            if name == "WrongPasswordError":
                raise JoinError("the code is wrong (mistyped?); the master has cancelled "
                                "this invite: ask its admin for a new one") from None
            if name in ("ServerConnectionError", "ConnectionRefusedError", "DNSLookupError"):
                raise JoinError(f"cannot reach the mailbox {mailbox}: {_why(e)}") from None
            raise JoinError(f"the invite could not be claimed: {_why(e)}") from None
        try:
            grant = InviteGrant.from_wire(raw)
        except BadRequest:
            raise JoinError("the other end of this code is not a furl master") from None
        if grant.refused:
            raise JoinError(f"the master refused the claim: {grant.refused}")
        try:
            furl = parse_furl(grant.furl)
            store(furl, grant.name)
        except (ConfigError, OSError) as e:
            w.send_message(invite_stored(False, _why(e)))
            raise JoinError(f"the FURL for worker {grant.name!r} came, but could not be "
                            f"stored: {_why(e)}; the master's admin can revoke it and "
                            "invite again") from None
        w.send_message(invite_stored(True))
        return grant.name
    finally:
        try:
            await w.close()
        except Exception:  # noqa: BLE001 - closing after an error fails too; nothing to add
            pass
