"""The master's view of its workers: logins fed by workers.furls, sessions.

Each line of ``workers.furls`` becomes one :class:`WorkerLogin`, found by
foolscap through a name-lookup handler keyed by the line's swissnum.  A
removed or rotated line's login stops resolving at once, and its live
session (if any) is dropped.  A worker that reaches its login calls
``attach``; the registry makes a :class:`WorkerSession` of it and tells
the master host (:mod:`buildbot_furl.master.host`, which hands it on to
its consumer) through ``on_attach``/``on_detach``/``on_drain``, all given
at construction.  Outside code asks it through its queries (``knows``,
``session_of``, ``listed``, ``furl_of``, ``rows``, ...), never its tables.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from buildbot_furl import __version__, furlsfile
from buildbot_furl.display import printable
from buildbot_furl.errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    DuplicateWorker,
    IncompatibleProtocol,
    Revoked,
    WireError,
)
from buildbot_furl.furl import secret_digest
from buildbot_furl.master.admission import GateSettings
from buildbot_furl.master.metrics import MasterMetrics
from buildbot_furl.master.refusals import DEFAULT_LIMIT, Refusals
from buildbot_furl.master.session import DEFAULT_CALL_TIMEOUT, WorkerSession, peer_of
from buildbot_furl.protocol import PROTOCOL_VERSIONS, RIWorkerLogin, call, remote_method
from buildbot_furl.protocol.messages import (
    AttachAnswer,
    AttachInfo,
    DrainAnswer,
    RefusalCounts,
    SessionProof,
    WorkerRow,
)
from buildbot_furl.tubs import gate_key, sever

log = Logger()

DUPLICATE_PING_TIMEOUT = 5.0

REFUSED_HANGUP_DELAY = 1.0

#: workers named one by one in the log when a reload adds or retires many
NAMED_IN_LOG = 20

AttachHook = Callable[[WorkerSession], Awaitable[None] | None]
DetachHook = Callable[[WorkerSession], None]
#: a graceful stop was asked for a session: stop giving it work, shut it
#: down when idle; answers how many commands (or builds) still run
DrainHook = Callable[[WorkerSession], int]


@implementer(RIWorkerLogin)
class WorkerLogin(Referenceable):
    """The object behind one worker's FURL."""

    def __init__(self, registry: WorkerRegistry, name: str) -> None:
        self.registry = registry
        self.name = name
        #: connections in the middle of an attach on this login: a revocation
        #: severs them too, since they hold it without a session yet
        self.attaching: set[Any] = set()

    @remote_method
    async def remote_attach(self, bot: Any, info: bytes) -> dict[str, Any]:
        try:
            parsed = AttachInfo.from_wire(info)
        except BadRequest:
            # a FURL holder sending garbage, perhaps in a loop: rationed like
            # any refusal, and cut once the answer is on its way
            self.registry.refuse_malformed(self, bot)
            raise
        return await self.registry.attach(self, bot, parsed)

    @remote_method
    def remote_leave(self, session: bytes) -> bool:
        # a malformed proof is a BadRequest answer; a proof of another session, False
        return self.registry.leave(self, SessionProof.from_wire(session))

    @remote_method
    def remote_drain(self, session: bytes) -> dict[str, Any]:
        return self.registry.drain_asked(self, SessionProof.from_wire(session)).to_wire()


class WorkerRegistry:
    """Keeps logins in step with workers.furls and tracks live sessions."""

    def __init__(
        self,
        tub: Any,
        furls_path: str,
        on_attach: AttachHook | None = None,
        on_detach: DetachHook | None = None,
        reload_interval: float = 1.0,
        grace: Callable[[str], float] | float = 0.0,
        refusal_limit: int = DEFAULT_LIMIT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        gate: GateSettings = GateSettings(),
        clock: IReactorTime | None = None,
        on_drain: DrainHook | None = None,
        refusals: Refusals | None = None,
        metrics: MasterMetrics | None = None,
        on_retire: Callable[[str, str], None] | None = None,
    ) -> None:
        #: told when a worker leaves workers.furls or gets a new FURL ("revoked", "rotated")
        self.on_retire = on_retire
        #: what counts attaches, refusals, reloads (and the sessions' events)
        self.metrics = metrics if metrics is not None else MasterMetrics()
        #: the clock of every timer here and in the sessions
        self.clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self.tub = tub
        self.furls_path = furls_path
        self.tubid = tub.getTubID()
        self.on_attach = on_attach
        self.on_detach = on_detach
        self.reload_interval = reload_interval
        #: the port's gate and refusal log (the host's, which its Tub tells too)
        self.refusals = refusals if refusals is not None else \
            Refusals(refusal_limit, gate=gate, clock=self.clock)
        self.call_timeout = call_timeout
        #: how long a worker's session outlives its connection (per name)
        self.grace = grace if callable(grace) else (lambda name, g=float(grace): g)
        self.logins: dict[str, WorkerLogin] = {}  # swissnum -> login
        self.by_name: dict[str, WorkerLogin] = {}
        self.entries: dict[str, furlsfile.Entry] = {}
        self.sessions: dict[str, WorkerSession] = {}
        self.last_seen: dict[str, float] = {}
        self.revoked: dict[str, str] = {}  # sha256(swissnum) -> worker name
        self._stamp: tuple[int, ...] | None = None
        #: why the file as it is now is not applied (None: it is)
        self.problem: str | None = None
        self._loop: LoopingCall | None = None
        self._attaching: set[str] = set()
        #: what carries out a graceful stop (the standalone runner, or Buildbot)
        self.on_drain = on_drain

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Load the file (raising ConfigError if it is bad) and start watching."""
        self.reload(strict=True)
        self.tub.registerNameLookupHandler(self._lookup)
        self.refusals.start()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.reload_interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.tub.unregisterNameLookupHandler(self._lookup)
        self.refusals.stop()
        for session in list(self.sessions.values()):
            session.drop("master shutting down", "shutdown")

    def _lookup(self, name: str) -> WorkerLogin | None:
        return self.logins.get(name)

    def violation(self, broker: Any, what: str) -> None:
        """A call over ``broker`` broke the interface's bounds."""
        for session in self.sessions.values():
            if session.uses(broker):
                session.violation(f"a call out of the protocol's bounds ({what})",
                                  kind="call_bounds")
                return

    def refused(self, name: str, host: str, tubid: str = "", key: Any = None) -> bool:
        """A lookup of a name we do not serve (never logged: it may be a secret);
        whether to answer it (see Refusals.refused)."""
        revoked = self.revoked.get(secret_digest(name))
        self.metrics.refused("revoked_furl" if revoked is not None else "unknown_furl")
        return self.refusals.refused(host, revoked, tubid, key)

    # -- workers.furls --------------------------------------------------------
    def _file_stamp(self) -> tuple[int, ...] | None:
        """What changes when the file's content or its permissions change."""
        try:
            st = os.stat(self.furls_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)

    def poll(self) -> None:
        """Reload if workers.furls changed since it was last read."""
        if self._file_stamp() != self._stamp:
            self.reload()

    def reload(self, strict: bool = False) -> bool:
        """Re-read workers.furls and apply it; a bad file keeps the old state."""
        stamp = self._file_stamp()
        try:
            if stamp is None and not strict:
                # Gone while we run: moved, or a network file system away for a
                # moment (the shared file of a cluster).  Read as empty, that would
                # revoke every worker and kill its commands; only a file that
                # exists and says so removes workers.
                raise ConfigError(f"{self.furls_path} is missing (moved, or its file "
                                  "system is away); restore it, or empty it to remove "
                                  "every worker")
            ff = furlsfile.read(self.furls_path, self.tubid)
        except ConfigError as e:
            self._stamp = stamp
            self.metrics.reloaded(False)
            if strict:
                raise
            if str(e) != self.problem:
                log.error("workers.furls not applied, keeping the previous workers: {err}",
                          err=str(e))
            self.problem = str(e)
            return False
        self._stamp = stamp
        if self.problem is not None:
            log.info("workers.furls is fine again and applied")
            self.problem = None
        new = {e.name: e for e in ff.entries}
        retired = 0
        for name, entry in list(self.entries.items()):
            if name not in new or new[name].furl.swissnum != entry.furl.swissnum:
                retired += 1
                self._retire(name, "revoked" if name not in new else "rotated",
                             quiet=retired > NAMED_IN_LOG)
        if retired > NAMED_IN_LOG:
            log.info("... and {n} more workers revoked or rotated: their old FURLs no longer "
                     "work", n=retired - NAMED_IN_LOG)
        added = []
        for name, entry in new.items():
            old = self.entries.get(name)
            if old is None or old.furl.swissnum != entry.furl.swissnum:
                login = WorkerLogin(self, name)
                self.logins[entry.furl.swissnum] = login
                self.by_name[name] = login
                if old is None and not strict:
                    added.append(name)
        for name in added[:NAMED_IN_LOG]:
            log.info("worker {name} added", name=name)
        if len(added) > NAMED_IN_LOG:  # thousands of lines at once: one line, not thousands
            log.info("... and {n} more workers added ({first} to {last})",
                     n=len(added) - NAMED_IN_LOG, first=added[NAMED_IN_LOG], last=added[-1])
        self.entries = new
        self.metrics.reloaded(True)
        return True

    def _retire(self, name: str, why: str, quiet: bool = False) -> None:
        entry = self.entries.pop(name)
        login = self.logins.pop(entry.furl.swissnum, None)
        self.by_name.pop(name, None)
        self.revoked[secret_digest(entry.furl.swissnum)] = name
        if not quiet:
            log.info("worker {name} {why}: its old FURL no longer works", name=name, why=why)
        session = self.sessions.get(name)
        if session is not None:
            session.drop(f"FURL {why}", why)
        for bot in list(login.attaching if login is not None else ()):
            sever(bot, f"FURL {why}")  # attaching, no session yet: cut as well
        if self.on_retire is not None:
            self.on_retire(name, why)

    # -- attach ---------------------------------------------------------------
    def _current(self, login: WorkerLogin, bot: Any) -> None:
        """Raise Revoked unless ``login`` is still its worker's FURL.  Asked again
        after every wait of an attach: a rotation may land during any of them,
        and a revoked login must never yield a session."""
        if self.by_name.get(login.name) is login:
            return
        self._refuse_and_cut(bot, login.name, "its FURL was revoked", "revoked_furl")
        raise Revoked(f"the FURL of worker {login.name!r} has been revoked or rotated")

    def refuse_malformed(self, login: WorkerLogin, bot: Any) -> None:
        """An attach whose info cannot be read."""
        self._refuse_and_cut(bot, None, "a malformed attach", "malformed")

    def _refuse_and_cut(self, bot: Any, revoked_worker: str | None, why: str,
                        reason: str) -> None:
        """Count a refused attach in the rationed refusal log (its holder may
        call in a loop), and cut the connection once the answer is on its way."""
        self.metrics.refused(reason)
        self.refusals.refused(peer_of(bot).rsplit(":", 1)[0], revoked_worker)
        self.clock.callLater(REFUSED_HANGUP_DELAY, sever, bot, why)

    async def attach(self, login: WorkerLogin, bot: Any, info: AttachInfo) -> dict[str, Any]:
        login.attaching.add(bot)
        # the connection is no longer the gate's to time out: the attach's own
        # steps bound it; attached, it is not pending any more (master/admission.py)
        key = gate_key(bot)
        self.refusals.admission.attaching(key)
        ok = False
        try:
            answer = await self._attach(login, bot, info)
            ok = True
            return answer
        finally:
            login.attaching.discard(bot)
            self.refusals.admission.attach_done(key, ok)

    async def _attach(self, login: WorkerLogin, bot: Any, info: AttachInfo) -> dict[str, Any]:
        name = login.name
        peer = peer_of(bot)
        self._current(login, bot)
        theirs = list(info.protocols)
        common = [v for v in PROTOCOL_VERSIONS if v in theirs]
        if not common:
            log.info("refused attach of worker {name} from {peer}: no common protocol "
                     "(worker speaks {theirs}, master {ours})", name=name, peer=peer,
                     theirs=theirs, ours=list(PROTOCOL_VERSIONS))
            self.metrics.refused("protocol")
            raise IncompatibleProtocol(
                "no common protocol version",
                master=",".join(map(str, PROTOCOL_VERSIONS)),
                worker=",".join(map(str, theirs))[:100],
            )
        if name in self._attaching:
            self.metrics.refused("duplicate")
            raise DuplicateWorker(f"worker {name!r} is attaching from elsewhere right now")
        self._attaching.add(name)
        try:
            old = self.sessions.get(name)
            if old is not None and old.proves(info.resume):
                answer = await self._resume(old, bot, peer, info)
                self._current(login, bot)  # (a revocation dropped the session too)
                self.metrics.attached(resumed=True)
                return answer.to_wire()
            await self._settle_duplicate(name, peer)
            self._current(login, bot)
            # no grace until the worker has the session's secret: a link lost
            # before the answer reaches it leaves a session nobody can resume,
            # which would hold the name (and Buildbot's attach, waiting for the
            # link) for the whole grace period, refusing the worker's next try
            session = WorkerSession(name, bot, info, max(common), peer, 0.0,
                                    self.call_timeout, clock=self.clock,
                                    metrics=self.metrics)
            self.sessions[name] = session
            self.last_seen[name] = self.clock.seconds()
            session.add_disconnect_callback(lambda: self._detached(session))
            log.info("worker {name} attached from {peer} (worker version {version}, "
                     "protocol {proto})", name=name, peer=peer,
                     version=info.version, proto=session.protocol)
            if self.on_attach is not None:
                try:
                    await defer.maybeDeferred(self.on_attach, session)
                except WireError:
                    self.metrics.refused("consumer")
                    # let the refusal reach the worker before hanging up (the
                    # session has no grace yet: a cut meanwhile ends it at once)
                    self._forget(session, drop=False)
                    self.clock.callLater(REFUSED_HANGUP_DELAY, session.drop, "attach refused",
                                        "refused")
                    raise
            self._current(login, bot)  # revoked while Buildbot took it (it was dropped)
            if session.gone:
                raise ConnectionLost(f"worker {name!r} lost its link while attaching")
            session.grant_grace(self.grace(name))
            self.metrics.attached(resumed=False)
            return AttachAnswer(session.protocol, session.session_id,
                                session.hand_out_secret(), session.grace,
                                __version__, name=name).to_wire()
        finally:
            self._attaching.discard(name)

    def leave(self, login: WorkerLogin, proof: SessionProof) -> bool:
        """A worker stops on purpose: its session ends now, not after the grace."""
        session = self.sessions.get(login.name)
        if session is None or not session.proves(proof):
            return False
        log.info("worker {name} is stopping", name=login.name)
        session.end("the worker stopped", "worker_stopped")  # it hangs up itself once it has the answer
        return True

    def drain_asked(self, login: WorkerLogin, proof: SessionProof) -> DrainAnswer:
        """The worker's admin asks for a graceful stop (``furl-worker stop --graceful``)."""
        session = self.sessions.get(login.name)
        if session is None or not session.proves(proof):
            raise BadRequest("a graceful stop needs the worker's current session")
        return DrainAnswer(self.drain(session, "its admin, from the worker"))

    def drain(self, session: WorkerSession, who: str) -> int:
        """Start a graceful stop of ``session``; how much still runs on it."""
        first = session.drain(who)
        running = self.on_drain(session) if self.on_drain is not None else 0
        if first:
            log.info("worker {name}: graceful stop asked by {who}: no new work for it; it "
                     "stops once the {n} running command(s) or build(s) end",
                     name=session.name, who=who, n=running)
        return running

    async def _resume(self, session: WorkerSession, bot: Any, peer: str,
                      info: AttachInfo) -> AttachAnswer:
        """The worker proved it holds ``session``: carry it over to ``bot``."""
        carried = await session.rebind(bot, peer)
        self.last_seen[session.name] = self.clock.seconds()
        assert info.resume is not None
        return AttachAnswer(session.protocol, session.session_id, info.resume.secret,
                            session.grace, __version__, resumed=True, commands=tuple(carried),
                            name=session.name)

    async def _settle_duplicate(self, name: str, peer: str) -> None:
        """Never two live connections for one name: an old one that still
        answers a ping within DUPLICATE_PING_TIMEOUT wins; one that does not
        is dropped and the newcomer attaches.  A session whose connection is
        gone already, and which the newcomer did not prove, ends at once
        (the worker started afresh)."""
        old = self.sessions.get(name)
        if old is None:
            return
        if not old.attached:
            old.drop("the worker attached afresh, without its session", "restarted")
            self._forget(old)
            return
        try:
            d = defer.Deferred.fromCoroutine(call(old.bot, "ping"))
            d.addTimeout(DUPLICATE_PING_TIMEOUT, self.clock)
            await d
        except Exception:
            log.info("worker {name}: old connection from {old} did not answer; "
                     "replacing it with {peer}", name=name, old=old.peer, peer=peer)
            old.drop("replaced by a new connection", "replaced")
            self._forget(old)
            return
        self.metrics.refused("duplicate")
        log.info("refused duplicate attach of worker {name} from {peer}: already "
                 "attached from {old}", name=name, peer=peer, old=old.peer)
        raise DuplicateWorker(
            f"worker {name!r} is already attached from another process that still "
            "answers; stop that one first"
        )

    def _forget(self, session: WorkerSession, drop: bool = True) -> None:
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]
            self.last_seen[session.name] = self.clock.seconds()
            if drop:
                session.drop("forgotten")
            if self.on_detach is not None:
                self.on_detach(session)

    def _detached(self, session: WorkerSession) -> None:
        """The session ended (its connection is gone, or the worker hangs up)."""
        if self.sessions.get(session.name) is session:
            log.info("worker {name} detached ({peer})", name=session.name, peer=session.peer)
            self._forget(session, drop=False)

    # -- queries ------------------------------------------------------------------
    def knows(self, name: str) -> bool:
        """Whether workers.furls lists ``name``; a file changed a moment ago
        is re-read first (a worker added just now counts already)."""
        if name not in self.entries:
            self.poll()
        return name in self.entries

    def session_of(self, name: str) -> WorkerSession | None:
        return self.sessions.get(name)

    def listed(self) -> int:
        """How many workers workers.furls lists."""
        return len(self.entries)

    def furl_of(self, name: str) -> Any:
        """The FURL of a listed worker (a :class:`~buildbot_furl.furl.Furl`), or None."""
        entry = self.entries.get(name)
        return entry.furl if entry is not None else None

    def problems(self) -> tuple[str, ...]:
        """Why workers.furls as it is now is not applied (nothing: it is)."""
        return (self.problem,) if self.problem else ()

    def refusal_counts(self) -> RefusalCounts:
        return self.refusals.counts()

    def rows(self) -> list[WorkerRow]:
        """One row per listed worker, for list-workers."""
        out = []
        for name, entry in self.entries.items():
            s = self.sessions.get(name)
            out.append(WorkerRow(
                name=name,
                comment=entry.comment,
                connected=s is not None and s.attached,
                state=_state(s),
                draining=s is not None and s.draining is not None,
                grace_until=(s.detached_at + s.grace) if s and s.detached_at else None,
                peer=s.peer if s else None,
                connected_since=s.connected_at if s else None,
                last_seen=self.clock.seconds() if s else self.last_seen.get(name),
                host=_info_line(s.worker_info.get("host")) if s else None,
                admin=_info_line(s.worker_info.get("admin")) if s else None,
            ))
        return out


def _state(s: WorkerSession | None) -> str:
    if s is None:
        return "not connected"
    if not s.attached:
        return "reconnecting"
    return "draining" if s.draining is not None else "connected"


def _info_line(value: Any) -> str | None:
    """First line of a worker's info/ file, bounded, for display."""
    if not isinstance(value, str) or not value.strip():
        return None
    return printable(value.strip().splitlines()[0][:200])
