"""Invites: a worker's admin gets its FURL with a one-time code.

``furl-master invite NAME`` asks the running master (standalone or inside
Buildbot) for an invite and returns at once with a magic-wormhole code.
The master holds the wormhole open as part of its service until a worker
claims it, the admin cancels it, or it expires.  A claim goes:

1. the worker sets the code and sends :class:`InviteClaim` (its host and
   admin, as it says them).  The wormhole's PAKE has then agreed a key: a
   wrong code fails here on both ends (``WrongPasswordError``), is logged as
   a possible attack, and burns the invite;
2. the master mints the FURL now (it never existed before, on any channel),
   adds it to workers.furls (or replaces the worker's old one: a rotation)
   and sends :class:`InviteGrant`;
3. the worker stores it 0600 and says so (``invite_stored``); the master
   logs who claimed which invite (never the code, never the FURL).

Pending invites are kept 0600 in ``private/invites.json``, so that they
survive a restart of the master: at start each is opened again with its
code (the wormholes of a stopping master release their nameplates).  A
code is good once: a claimed, cancelled or expired invite's nameplate is
released, and a second try meets nobody.  Removing or rotating the worker
by hand cancels its pending invite.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from buildbot_furl import furlsfile
from buildbot_furl.display import printable
from buildbot_furl.errors import BadRequest, ConfigError, FurlError
from buildbot_furl.furl import Furl, new_swissnum
from buildbot_furl.privatefiles import check_private_mode, write_private
from buildbot_furl.protocol.messages import (
    INVITE_APPID,
    INVITE_CODE_RE,
    InviteAnswer,
    InviteClaim,
    InviteGrant,
    InviteRequest,
    InviteRow,
    invite_stored_from_wire,
)

log = Logger()

#: claims remembered for list-workers
CLAIMS_KEPT = 100
#: seconds a worker has for each step of a claim once it has the code right
CLAIM_STEP_TIMEOUT = 60.0
#: seconds to reach the mailbox and be given a code, before the admin is told
MAILBOX_TIMEOUT = 15.0


class Wormhole(Protocol):
    """The part of magic-wormhole's ``_DeferredWormhole`` used here."""

    def allocate_code(self, code_length: int = 2) -> None: ...

    def set_code(self, code: str) -> None: ...

    def get_code(self) -> defer.Deferred[str]: ...

    def get_welcome(self) -> defer.Deferred[Any]: ...

    def get_message(self) -> defer.Deferred[bytes]: ...

    def send_message(self, msg: bytes) -> None: ...

    def close(self) -> defer.Deferred[Any]: ...


#: makes a wormhole on the given mailbox (tests give fakes)
WormholeFactory = Callable[[str], Wormhole]


def real_wormhole(reactor: Any) -> WormholeFactory:
    """magic-wormhole's Twisted API, with this project's application id."""

    def make(mailbox: str) -> Wormhole:
        import wormhole  # heavy (crypto, autobahn): only once invites are used

        return wormhole.create(INVITE_APPID, mailbox, reactor)  # type: ignore[no-any-return]

    return make


class InviteError(FurlError):
    """An invite cannot be made or cancelled (told to the admin)."""


@dataclasses.dataclass
class Pending:
    """One pending invite, as kept in ``private/invites.json``."""

    name: str
    code: str
    expires: float
    mailbox: str
    rotation: bool = False
    comment: str = ""

    def row(self) -> InviteRow:
        return InviteRow(self.name, "pending", expires=self.expires, rotation=self.rotation)


@dataclasses.dataclass
class Claimed:
    name: str
    at: float
    host: str = ""
    rotation: bool = False

    def row(self) -> InviteRow:
        return InviteRow(self.name, "claimed", rotation=self.rotation, claimed_at=self.at,
                         host=self.host or None)


class InviteBook:
    """``private/invites.json``: the pending invites (with their codes:
    0600, refused when others can read it) and the recent claims."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pending: dict[str, Pending] = {}
        self.claimed: list[Claimed] = []

    def load(self) -> None:
        """Read the file; a damaged one is set aside (logged) rather than
        stopping the master: its invites are lost, nothing else."""
        check_private_mode(self.path)  # ConfigError: the master does not start
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            pending = [Pending(**p) for p in data.get("pending", [])]
            claimed = [Claimed(**c) for c in data.get("claimed", [])]
            if not all(isinstance(p.code, str) and INVITE_CODE_RE.fullmatch(p.code)
                       and isinstance(p.expires, (int, float)) for p in pending):
                raise ValueError("a pending invite is malformed")
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as e:
            aside = self.path + ".damaged"
            os.replace(self.path, aside)
            log.error("pending invites not read ({err}); the file is kept as {aside}, "
                      "and those invites must be made again", err=str(e)[:200], aside=aside)
            return
        self.pending = {p.name: p for p in pending}
        self.claimed = claimed[-CLAIMS_KEPT:]

    def save(self) -> None:
        data = {"pending": [dataclasses.asdict(p) for p in self.pending.values()],
                "claimed": [dataclasses.asdict(c) for c in self.claimed[-CLAIMS_KEPT:]]}
        write_private(self.path, json.dumps(data, indent=1) + "\n")


class Registry(Protocol):
    """What invites need of the worker registry (master/registry.py)."""

    def knows(self, name: str) -> bool: ...

    def reload(self, strict: bool = False) -> bool: ...


class Invites(service.Service):
    """The master's open invites; a child service of the master host."""

    def __init__(self, path: str, furls_path: str, tubid: str, location: tuple[str, ...],
                 mailbox: str, registry: Registry, clock: IReactorTime,
                 wormholes: WormholeFactory, check_name: Callable[[str], str],
                 metrics: Any = None,
                 in_thread: Callable[..., defer.Deferred[Any]] = threads.deferToThread,
                 ) -> None:
        self.book = InviteBook(path)
        self.furls_path = furls_path
        self.tubid = tubid
        self.location = location
        #: the mailbox of new invites (each pending one keeps its own)
        self.mailbox = mailbox
        self.registry = registry
        self.clock = clock
        self.wormholes = wormholes
        #: refuses a name this master cannot take (a Buildbot master is stricter)
        self.check_name = check_name
        self.metrics = metrics
        #: where workers.furls is edited (its lock may wait): a thread, but
        #: not in the clock-driven tests
        self.in_thread = in_thread
        self._open: dict[str, tuple[Wormhole, Any]] = {}  # name -> (wormhole, expiry timer)

    # -- life ---------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802
        """Read the pending invites (ConfigError if the file is readable by
        others); :meth:`resume` opens them again once the mailbox is up."""
        super().startService()
        self.book.load()

    def resume(self) -> None:
        """Open every pending invite again (after a restart), drop the expired."""
        now = self.clock.seconds()
        for p in list(self.book.pending.values()):
            if p.expires <= now:
                log.info("the invite for worker {name} expired while the master was down",
                         name=p.name)
                del self.book.pending[p.name]
                continue
            w = self.wormholes(p.mailbox)
            w.set_code(p.code)
            self._serve(p, w)
        self.book.save()

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802
        """Close every wormhole (their nameplates are released, so that the
        same codes work again after a restart); the invites stay pending."""
        super().stopService()
        closing = [self._close(name) for name in list(self._open)]
        d = defer.DeferredList(closing, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    # -- what the admin asks --------------------------------------------------------
    async def invite(self, request: InviteRequest) -> InviteAnswer:
        name = request.name
        try:
            furlsfile.check_name(name)
        except ConfigError as e:
            raise BadRequest(str(e)) from None
        if name in self.book.pending:
            raise InviteError(f"an invite for worker {name!r} is pending already "
                              f"(cancel it first: furl-master invite --cancel {name})")
        rotation = self.registry.knows(name)
        if not rotation:
            try:
                self.check_name(name)
            except ConfigError as e:
                raise BadRequest(str(e)) from None
        w = self.wormholes(self.mailbox)
        w.allocate_code(2)
        try:
            # magic-wormhole keeps redialing an unreachable mailbox: bounded here
            code = await _within(w.get_code(), MAILBOX_TIMEOUT, self.clock)
        except Exception as e:  # noqa: BLE001 - the mailbox is away: one line for the admin
            await _quietly(w.close())
            why = (f"no answer within {MAILBOX_TIMEOUT:.0f} s"
                   if isinstance(e, defer.TimeoutError) else _why(e))
            raise InviteError(f"cannot reach the mailbox {self.mailbox}: {why} (see "
                              "mailbox_url / mailbox_listen in furl-master.conf)") from None
        if name in self.book.pending:  # asked twice at once
            await _quietly(w.close())
            raise InviteError(f"an invite for worker {name!r} is pending already")
        p = Pending(name, code, self.clock.seconds() + request.ttl, self.mailbox, rotation,
                    request.comment)
        self.book.pending[name] = p
        self.book.save()
        self._serve(p, w)
        log.info("invite for worker {name} made ({what}), good for {hours:.1f} h on the "
                 "mailbox {mailbox}", name=name,
                 what="a new FURL for it" if rotation else "a new worker",
                 hours=request.ttl / 3600, mailbox=self.mailbox)
        return InviteAnswer(name, code, p.expires, self.mailbox, rotation)

    def cancel(self, name: str, why: str = "cancelled by the admin",
               outcome: str = "cancelled") -> bool:
        """Cancel the pending invite for ``name``; False if there is none."""
        p = self.book.pending.pop(name, None)
        if p is None:
            return False
        self.book.save()
        if self.metrics is not None:
            self.metrics.invite_ended(outcome)
        log.info("invite for worker {name} {why}", name=name, why=why)
        _consume(self._close(name))
        return True

    def worker_gone(self, name: str, why: str) -> None:
        """The worker was removed or its FURL replaced by other means: an
        invite for a new FURL of it dies with it."""
        p = self.book.pending.get(name)
        if p is not None and p.rotation:
            self.cancel(name, f"cancelled: the worker was {why}")

    def rows(self) -> list[InviteRow]:
        return ([p.row() for p in self.book.pending.values()] +
                [c.row() for c in self.book.claimed])

    def pending_count(self) -> int:
        return len(self.book.pending)

    # -- one invite's claim ----------------------------------------------------------
    def _serve(self, p: Pending, w: Wormhole) -> None:
        timer = self.clock.callLater(max(0.0, p.expires - self.clock.seconds()),
                                     self._expire, p.name)
        self._open[p.name] = (w, timer)
        _consume(defer.Deferred.fromCoroutine(self._claim(p, w)))

    def _expire(self, name: str) -> None:
        entry = self._open.get(name)
        if entry is not None:
            self._open[name] = (entry[0], None)  # it fired
        self.cancel(name, "expired unclaimed", "expired")

    def _close(self, name: str) -> defer.Deferred[None]:
        entry = self._open.pop(name, None)
        if entry is None:
            return defer.succeed(None)
        w, timer = entry
        if timer is not None and timer.active():
            timer.cancel()
        return defer.Deferred.fromCoroutine(_quietly(w.close()))

    def _still(self, p: Pending) -> bool:
        return self.book.pending.get(p.name) is p

    async def _claim(self, p: Pending, w: Wormhole) -> None:
        try:
            raw = await w.get_message()
        except Exception as e:  # noqa: BLE001 - sorted below
            if _wrong_code(e) and self._still(p):
                log.warn("invite for worker {name}: a wrong code was tried (mistyped, or "
                         "someone guessing); the invite is burned: make a new one",
                         name=p.name)
                self.cancel(p.name, "burned after a wrong code", "wrong_code")
            elif self._still(p) and self.running:
                log.warn("invite for worker {name}: the mailbox failed ({err}); it stays "
                         "pending and is opened again at the next start", name=p.name,
                         err=_why(e))
            return
        if not self._still(p):
            return
        try:
            claim = InviteClaim.from_wire(raw)
        except BadRequest:
            log.warn("invite for worker {name}: the other end sent something that is not "
                     "a claim; the invite is burned", name=p.name)
            self.cancel(p.name, "burned after a malformed claim", "wrong_code")
            return
        # from here on the invite is used, whatever happens next
        del self.book.pending[p.name]
        self.book.save()
        try:
            furl = await self.in_thread(self._mint, p)
        except (ConfigError, OSError) as e:
            why = str(e)[:200]
            log.warn("invite for worker {name}: claimed, but no FURL was made: {err}",
                     name=p.name, err=why)
            w.send_message(InviteGrant(refused=why).to_wire())
            _consume(self._close(p.name))
            return
        self.registry.reload()  # at once, rather than at the next poll
        w.send_message(InviteGrant(p.name, str(furl)).to_wire())
        host = printable(claim.host.strip().splitlines()[0][:100]) if claim.host.strip() \
            else "an unnamed host"
        try:
            stored, why = invite_stored_from_wire(await _within(
                w.get_message(), CLAIM_STEP_TIMEOUT, self.clock))
        except Exception:  # noqa: BLE001 - it has the FURL, or not: the admin can see
            stored, why = False, "no answer from the worker"
        self.book.claimed.append(Claimed(p.name, self.clock.seconds(), host, p.rotation))
        self.book.save()
        if stored:
            log.info("invite for worker {name} claimed by {host} (worker version {v}); "
                     "{what}", name=p.name, host=host, v=printable(claim.version[:40]) or "?",
                     what="its new FURL replaces the old one" if p.rotation
                     else "it is in workers.furls now")
        else:
            log.warn("invite for worker {name} claimed by {host}, but it did not store its "
                     "FURL ({why}); the FURL is in workers.furls: revoke it, or make a new "
                     "invite (a rotation)", name=p.name, host=host, why=printable(why[:100]))
        if self.metrics is not None:
            self.metrics.invite_ended("claimed")
        _consume(self._close(p.name))

    def _mint(self, p: Pending) -> Furl:
        """The new FURL, written to workers.furls (in a thread: the file's lock)."""
        furl = Furl(self.tubid, self.location, new_swissnum())
        with furlsfile.update(self.furls_path, self.tubid) as ff:
            if p.rotation:
                ff.replace_furl(p.name, furl)  # ConfigError if it was removed meanwhile
            else:
                comment = p.comment or "added by an invite"
                ff.add(p.name, furl, comment)  # ConfigError if it exists by now
        return furl


def _wrong_code(e: BaseException) -> bool:
    return type(e).__name__ == "WrongPasswordError"


def _why(e: BaseException) -> str:
    return (str(e) or type(e).__name__)[:200]


async def _quietly(d: Any) -> None:
    """Await ``d``, ignoring its failure (closing a wormhole nobody joined
    fails with LonelyError, on purpose)."""
    try:
        await d
    except Exception:  # noqa: BLE001
        pass


async def _within(d: defer.Deferred[Any], timeout: float, clock: IReactorTime) -> Any:
    d.addTimeout(timeout, clock)
    return await d


def _consume(d: defer.Deferred[Any]) -> None:
    d.addErrback(lambda f: log.failure("invites", f))
