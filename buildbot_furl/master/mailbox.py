"""The master's own magic-wormhole mailbox (rendezvous) server, for invites.

``mailbox_listen = tcp:4000`` serves one in the master's process (the
``magic-wormhole-mailbox-server`` package), so that a LAN or an air-gapped
farm needs nothing from outside.  Its channels live in memory: a restarted
master opens its pending invites afresh anyway.  Channels nobody listens
on any more are pruned every PRUNE_EVERY seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from buildbot_furl.errors import FurlError
from buildbot_furl.sitesvc import SiteService

PRUNE_EVERY = 3600.0  # seconds between prunes
PRUNE_AFTER = 3600.0  # a channel idle this long, with nobody listening, goes


class CannotServeMailbox(FurlError):
    """The mailbox cannot listen (in use, no permission)."""


class MailboxService(SiteService):
    """A mailbox server listening on ``listen`` (a Twisted endpoint string)."""

    def __init__(self, listen: str, clock: IReactorTime | None = None) -> None:
        super().__init__(listen)
        self.clock = clock if clock is not None else reactor
        self._server: Any = None
        self._prune: LoopingCall | None = None

    async def start(self) -> None:
        """Listen; CannotServeMailbox when the endpoint cannot be had."""
        from wormhole_mailbox_server.database import create_or_upgrade_channel_db
        from wormhole_mailbox_server.server import make_server
        from wormhole_mailbox_server.web import make_web_server

        server = make_server(create_or_upgrade_channel_db(":memory:"), allow_list=False)
        site = make_web_server(server, log_requests=False)
        await self.listen_now(site, CannotServeMailbox, "the invites' mailbox")
        self._server = server
        server.startService()
        self._prune = LoopingCall(self._pruned)
        self._prune.clock = self.clock
        self._prune.start(PRUNE_EVERY, now=False)

    def _pruned(self) -> None:
        now = self.clock.seconds()
        try:
            self._server.prune_all_apps(now, now - PRUNE_AFTER)
        except Exception:  # noqa: BLE001 - the next prune tries again
            pass

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802
        if self._prune is not None and self._prune.running:
            self._prune.stop()
        server, self._server = self._server, None
        if server is not None:
            server.stopService()
        return super().stopService()
