"""The HTTP endpoint: ``/metrics`` (Prometheus text format), ``/healthz``
and ``/readyz``.

Collection runs on the reactor thread (not in a thread pool, as
prometheus-client's own Twisted resource does): the collectors read the
master's and the worker's live tables, which only the reactor may touch.
Nothing here reveals a secret: the figures are counts, states and worker
names (see docs/security.md, "Metrics").
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from buildbot_furl.errors import ConfigError, FurlError
from buildbot_furl.sitesvc import SiteService

log = Logger()

#: why the process is not ready (None: it is); asked at each /readyz
Readiness = Callable[[], "str | None"]


def check_listen(value: str, example: str = "tcp:9102:interface=127.0.0.1") -> str:
    """A Twisted server endpoint string (``tcp:9102:interface=127.0.0.1``);
    ConfigError when it cannot be one (the caller names the setting)."""
    text = value.strip()
    if not text:
        raise ConfigError("empty (leave the setting out to serve nothing there)")
    try:
        serverFromString(reactor, text)
    except Exception as e:  # noqa: BLE001 - every parse error is the admin's typo
        raise ConfigError(f"not a Twisted endpoint (e.g. {example}): {e}") from None
    return text


class _Text(Resource):
    isLeaf = True

    def __init__(self, body: Callable[[], tuple[int, bytes, bytes]]) -> None:
        super().__init__()
        self._body = body

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        code, ctype, body = self._body()
        request.setResponseCode(code)
        request.setHeader(b"content-type", ctype)
        request.setHeader(b"cache-control", b"no-store")
        return body


class _Root(Resource):
    def __init__(self, registry: CollectorRegistry, ready: Readiness) -> None:
        super().__init__()
        plain = b"text/plain; charset=utf-8"

        def metrics() -> tuple[int, bytes, bytes]:
            return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(registry)

        def healthz() -> tuple[int, bytes, bytes]:
            # answering at all is the health: the reactor runs
            return 200, plain, b"ok\n"

        def readyz() -> tuple[int, bytes, bytes]:
            why = ready()
            if why is None:
                return 200, plain, b"ready\n"
            return 503, plain, f"not ready: {why}\n".encode()

        self.putChild(b"metrics", _Text(metrics))
        self.putChild(b"healthz", _Text(healthz))
        self.putChild(b"readyz", _Text(readyz))

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"/metrics /healthz /readyz\n"


class CannotServeMetrics(FurlError):
    """The metrics endpoint cannot listen (in use, no permission)."""


class MetricsService(SiteService):
    """Serves ``registry`` and the health checks on ``listen`` (a Twisted
    endpoint string) while running."""

    def __init__(self, listen: str, registry: CollectorRegistry, ready: Readiness) -> None:
        super().__init__(listen)
        self.site = Site(_Root(registry, ready))
        self.site.noisy = False

    async def start(self) -> None:
        """Listen; CannotServeMetrics when the endpoint cannot be had."""
        await self.listen_now(self.site, CannotServeMetrics, "metrics")
        host, port = self.address or ("?", "?")
        log.info("metrics on http://{host}:{port}/metrics (and /healthz, /readyz)",
                 host=host, port=port)
