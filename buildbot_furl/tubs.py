"""Hardened foolscap Tubs, shared by master, worker, plugin and CLI."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from foolscap.api import Tub
from foolscap.broker import Broker
from foolscap.ipb import DeadReferenceError
from foolscap.tokens import Violation
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from buildbot_furl.errors import ConfigError
from buildbot_furl.privatefiles import check_private_mode, write_private

DEFAULT_KEEPALIVE = 10  # ping an idle connection after this many seconds
DEFAULT_DISCONNECT_TIMEOUT = 25  # drop one silent this long (noticed within 2x that)


#: unknown names one connection may ask for before it is hung up
REFUSALS_PER_CONNECTION = 3


@dataclasses.dataclass(frozen=True)
class TubHooks:
    """What a Tub made by :func:`make_tub` tells its owner (the master host),
    fixed when it is made.

    ``on_refused_name(name, host, tubid, key)``: a lookup of a name the Tub
    does not serve; True to answer "no such name", False to cut the
    connection unanswered.  ``on_violation(broker, what)``: a call over
    ``broker`` broke the interface's bounds.  ``connection_gate``: admits
    each connection to the listening port and hears how it goes on (a
    :class:`~buildbot_furl.master.refusals.Refusals`).  ``clock``: the
    brokers' timers (hanging up on a connection that keeps guessing)."""

    on_refused_name: Callable[[str, str, str, Any], bool] | None = None
    on_violation: Callable[[Any, str], None] | None = None
    connection_gate: Any = None
    clock: IReactorTime = reactor  # type: ignore[assignment]


NO_HOOKS = TubHooks()


def _hooks(tub: Any) -> TubHooks:
    return getattr(tub, "hooks", NO_HOOKS)


class _PeerAwareBroker(Broker):
    """A Broker that tells its Tub who asked for a name it does not know
    (``on_refused_name`` of the Tub's :class:`TubHooks`), hangs up on a
    connection that keeps asking for names it does not know, and tells the
    Tub's gate (``connection_gate``) when a connection finished TLS, named a valid
    FURL or ended."""

    refused = 0
    _gate_key: tuple[str, int] | None = None

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        super().connectionMade()
        try:
            peer = self.transport.getPeer()
            self._gate_key = (str(peer.host), int(peer.port))
        except Exception:  # noqa: BLE001 - no address (a test transport): no gate
            self._gate_key = None
        gate = _hooks(self.tub).connection_gate
        if gate is not None and self._gate_key is not None:
            # TLS is done: the gate may know this client Tub (a worker reconnecting)
            gate.negotiated(self._gate_key[0], self._gate_key, self._tubid())

    def connectionLost(self, why: Any) -> None:  # noqa: N802
        gate = _hooks(self.tub).connection_gate
        if gate is not None and self._gate_key is not None:
            gate.closed(self._gate_key[0], self._gate_key)
        super().connectionLost(why)

    def _tubid(self) -> str:
        return self.remote_tubref.getTubID() if self.remote_tubref else ""

    def remote_getReferenceByName(self, name: Any) -> Any:  # noqa: N802
        if self.refused >= REFUSALS_PER_CONNECTION:
            # told three times and still asking: no answer any more (the
            # connection is being hung up; this call dies with it)
            return defer.Deferred()
        host = self._gate_key[0] if self._gate_key else "?"
        try:
            found = super().remote_getReferenceByName(name)
        except KeyError:
            self.refused += 1
            observer = _hooks(self.tub).on_refused_name
            answer = True
            if observer is not None:
                answer = observer(name.decode() if isinstance(name, bytes) else str(name),
                                  host, self._tubid(), self._gate_key)
            if not answer:
                # over the limit: no answer at all, and the connection is cut now
                self.transport.abortConnection()
                return defer.Deferred()
            if self.refused == REFUSALS_PER_CONNECTION:
                # once this answer has gone out: the next try needs a new handshake
                clock = _hooks(self.tub).clock
                clock.callLater(0.1, self.transport.loseConnection)
                clock.callLater(10, self.transport.abortConnection)  # if it is not read
            raise
        gate = _hooks(self.tub).connection_gate
        if gate is not None and self._gate_key is not None:
            gate.resolved(host, self._gate_key, self._tubid())
        return found

    def callFailed(self, f: Any, reqID: Any, delivery: Any = None) -> Any:  # noqa: N802,N803
        # a call the peer made that broke the interface's bounds (too big,
        # wrong types, unknown method): tell the Tub, which knows who it is
        if f.check(Violation):
            observer = _hooks(self.tub).on_violation
            if observer is not None:
                try:
                    observer(self, str(f.value)[:200])
                except Exception:  # noqa: BLE001 - a report must not break the broker
                    pass
        return super().callFailed(f, reqID, delivery)


class _Handle:
    """What the gate may do to one accepted connection (refusals.Conn)."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def pause(self) -> None:
        self.proto.transport.pauseProducing()

    def resume(self) -> None:
        transport = getattr(self.proto, "transport", None)
        if transport is not None:
            transport.resumeProducing()

    def abort(self) -> None:
        transport = getattr(self.proto, "transport", None)
        if transport is not None:
            transport.abortConnection()


class GatedListener:
    """The Tub's listening factory behind a gate (its hooks' ``connection_gate``,
    a :class:`~buildbot_furl.master.refusals.Refusals`): each new connection
    goes on to TLS, is held unread until the gate resumes it, or is closed
    before TLS, as the gate says."""

    def __init__(self, factory: Any, tub: Any) -> None:
        self.factory = factory
        self.tub = tub

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        gate = _hooks(self.tub).connection_gate
        if gate is None:
            return self.factory.buildProtocol(addr)
        host = str(getattr(addr, "host", ""))
        key = (host, int(getattr(addr, "port", 0)))
        proto = self.factory.buildProtocol(addr)
        handle = _Handle(proto)
        verdict = gate.admit(host, key, handle)
        if verdict == "close":
            return None
        make, lost = proto.makeConnection, proto.connectionLost

        def make_connection(transport: Any) -> None:
            make(transport)
            if verdict == "wait":
                handle.pause()

        def connection_lost(why: Any) -> None:
            # until the Broker takes over (it replaces this), the gate learns here
            gate.closed(host, key)
            lost(why)

        proto.makeConnection = make_connection
        proto.connectionLost = connection_lost
        return proto

    def doStart(self) -> None:  # noqa: N802
        self.factory.doStart()

    def doStop(self) -> None:  # noqa: N802
        self.factory.doStop()

    def logPrefix(self) -> str:  # noqa: N802
        return self.factory.logPrefix()


def make_tub(
    cert_file: str | None = None,
    keepalive: int = DEFAULT_KEEPALIVE,
    disconnect_timeout: int = DEFAULT_DISCONNECT_TIMEOUT,
    hooks: TubHooks = NO_HOOKS,
) -> Tub:
    """A Tub that leaks no tracebacks and accepts no third-party references,
    and tells ``hooks`` what its connections do.

    With ``cert_file`` the Tub's key is persistent (created 0600 on first
    use and refused when group or others can read it); that key is what
    a FURL's TUBID pins.
    """
    cert = None
    if cert_file is not None:
        check_private_mode(cert_file)
        if os.path.exists(cert_file):
            try:
                with open(cert_file, "rb") as f:
                    cert = f.read()
            except OSError as e:
                raise ConfigError(f"cannot read {cert_file}: {e.strerror}") from None
    try:
        tub = Tub(certData=cert) if cert else Tub()
    except Exception:
        raise ConfigError(f"{cert_file}: not a valid Tub key/certificate") from None
    if cert_file is not None and cert is None:
        write_private(cert_file, tub.getCertData())
    tub.brokerClass = _PeerAwareBroker
    tub.hooks = hooks
    tub.unsafeTracebacks = False
    tub.setOption("expose-remote-exception-types", False)
    tub.setOption("accept-gifts", False)
    tub.setOption("logLocalFailures", False)
    tub.setOption("logRemoteFailures", False)
    if keepalive:
        tub.setOption("keepaliveTimeout", keepalive)
    if disconnect_timeout:
        tub.setOption("disconnectTimeout", disconnect_timeout)
    return tub


def gate_key(rref: Any) -> tuple[str, int] | None:
    """The gate's key (peer host, port) of the connection a RemoteReference
    lives on; None if it has none (not the workers' port, or gone)."""
    try:
        return rref.tracker.broker._gate_key  # type: ignore[no-any-return]
    except AttributeError:
        return None


def sever(rref: Any, why: str) -> None:
    """Cut the connection a RemoteReference lives on, now: its pending calls
    fail at once with a lost connection, and the socket is aborted rather
    than closed gracefully (a half-open link would never finish a graceful
    close, and the calls waiting on it would wait forever)."""
    try:
        broker = rref.tracker.broker
    except AttributeError:
        return
    try:
        broker.shutdown(Failure(DeadReferenceError(why)))
    except Exception:  # noqa: BLE001 - best effort: it may be gone already
        pass
    transport = getattr(broker, "transport", None)
    if transport is not None and hasattr(transport, "abortConnection"):
        try:
            transport.abortConnection()
        except Exception:  # noqa: BLE001
            pass


def tubid_of(cert_file: str) -> str:
    """The TUBID of an existing key file, without starting anything."""
    if not os.path.exists(cert_file):
        raise ConfigError(f"{cert_file} is missing: without the master's key no FURL can be "
                          "made or checked")
    return make_tub(cert_file).getTubID()


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """Wraps an endpoint so the caller learns whether listening worked:
    foolscap's Listener starts listening in the background and only logs
    a failure (a port in use would go unnoticed)."""

    def __init__(self, endpoint: Any, tub: Any) -> None:
        self.endpoint = endpoint
        self.tub = tub
        self.result: defer.Deferred[Any] = defer.Deferred()

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        d = self.endpoint.listen(GatedListener(factory, self.tub))

        def ok(port: Any) -> Any:
            self.result.callback(port)
            return port

        def failed(f: Any) -> None:
            self.result.errback(f)
            return None  # reported through .result; foolscap need not log it

        d.addCallbacks(ok, failed)
        return d

    def __str__(self) -> str:
        return str(self.endpoint)


#: pending connections the kernel keeps for a TCP listener (Twisted's default
#: is 50: a thousand workers redialing a restarted master overflow it, and
#: each overflowed SYN costs its worker a kernel retransmit of 1, 3, 7... s)
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """A TCP endpoint description with LISTEN_BACKLOG, unless it names its own."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def listen(tub: Tub, description: str) -> tuple[Any, defer.Deferred[Any]]:
    """``tub.listenOn(description)``: (the foolscap Listener, a Deferred that
    fires once the Tub runs and listens, or fails, e.g. CannotListenError)."""
    try:
        endpoint = serverFromString(reactor, with_backlog(description))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"bad listening endpoint {description!r}: {e}") from None
    wrapper = _ReportingEndpoint(endpoint, tub)
    listener = tub.listenOn(wrapper)
    return listener, wrapper.result
