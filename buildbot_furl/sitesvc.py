"""A twisted.web site listening on a Twisted endpoint string, as a service:
the metrics endpoint and the invites' mailbox are both one."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort


class SiteService(service.Service):
    """Serves ``site`` on ``listen`` once :meth:`listen_now` succeeded; stops
    listening when stopped."""

    def __init__(self, listen: str) -> None:
        super().__init__()
        self.listen = listen
        self.port: IListeningPort | None = None

    async def listen_now(self, site: Any, failed: type[Exception], what: str) -> None:
        """Listen; ``failed("cannot serve WHAT on LISTEN: why")`` when the
        endpoint cannot be had (in use, no permission): one line for the admin."""
        try:
            self.port = await serverFromString(reactor, self.listen).listen(site)
        except Exception as e:  # noqa: BLE001 - every reason is the admin's to read
            raise failed(f"cannot serve {what} on {self.listen}: {e}") from None

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        return None

    @property
    def address(self) -> tuple[str, int] | None:
        """Where it listens (host, port), once it does."""
        if self.port is None:
            return None
        h = self.port.getHost()
        return h.host, h.port
