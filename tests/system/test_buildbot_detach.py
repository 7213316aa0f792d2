"""When Buildbot hears that a FURL worker is gone: at once when its session
ends, and not before.

A session outlives its TCP connection for its grace period (the build goes
on, Buildbot is told nothing); once the session ends (dropped: revoked, cut
off, refused; or its grace is over), Buildbot is told in that same turn of
the reactor, never when TCP gets round to closing, so that the worker is
free at once for the connection that replaces it.

A real Buildbot master runs in this process (see test_buildbot_plugin.py);
the worker is a bot in this process too, so that the test sees both ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from buildbot_furl.testing.waiting import wait_for
from test_buildbot_plugin import Env, env_factory, running  # noqa: F401 - a fixture
from test_malicious_worker import EvilBot

from buildbot_furl.buildbot import FurlHub
from buildbot_furl.errors import BadRequest
from buildbot_furl.privatefiles import write_private
from buildbot_furl.protocol import PROTOCOL_VERSIONS, call, remote_method
from buildbot_furl.protocol.messages import AttachInfo
from buildbot_furl.tubs import make_tub

pytestmark = [
    pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL X509 objects:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL PKey objects:DeprecationWarning"),
]


class SilentBot(EvilBot):
    """A worker that fails Buildbot's greeting (``print``): Buildbot's
    ``newConnection`` refuses it, and so the hub refuses the attach."""

    def __init__(self, on_print: Callable[[], None]) -> None:
        super().__init__(lambda *args: None)
        self.on_print = on_print

    @remote_method
    def remote_print(self, message: str) -> None:
        self.on_print()
        raise BadRequest("this worker does not print")


async def _tub_with(furl: str) -> tuple[Any, Any]:
    tub = make_tub(None, keepalive=0, disconnect_timeout=0)
    tub.startService()
    return tub, await tub.getReference(furl)


def _hub(env: Env) -> FurlHub:
    assert env.master is not None
    return next(s for s in env.master.services if isinstance(s, FurlHub))


@pytest_twisted.ensureDeferred
async def test_a_refused_attach_is_told_before_the_worker_hears_the_refusal(
        env_factory: Callable[..., Env]) -> None:
    """The hub refuses an attach after it handed the connection to
    Buildbot: that connection is disconnected (everyone subscribed to it
    told) before the refusal even leaves the master, not when the refused
    worker is hung up on a second later."""
    env = env_factory()
    furl = env.create_worker("fw")
    async with running(env):
        await env.start_master()
        hub = _hub(env)
        told: list[str] = []

        def on_print() -> None:  # Buildbot is greeting the worker: it has the connection
            for session, conn in hub.connections.items():
                conn.notifyOnDisconnect(lambda s=session: told.append(s.name))

        tub, login = await _tub_with(furl)
        try:
            with pytest.raises(BadRequest, match="does not print"):  # Buildbot's refusal
                await call(login, "attach", SilentBot(on_print),
                           AttachInfo(PROTOCOL_VERSIONS, "test", {}).to_wire())
            assert told == ["fw"]  # at once: before the answer reached us
            assert hub.connections == {}
            assert not env.connected("fw")
        finally:
            await tub.stopService()


# the previous test's refused session is dropped a second after it (a delayed
# call of that in-process master), and may land in this test's log
@pytest.mark.expect_log(r"dropping connection of worker fw \(attach refused\)")
@pytest_twisted.ensureDeferred
async def test_buildbot_hears_of_a_detach_when_the_session_ends_not_before(
        env_factory: Callable[..., Env]) -> None:
    env = env_factory()
    env.worker_kwargs = {"session_grace": 300}
    furl = env.create_worker("fw")
    async with running(env):
        m = await env.start_master()
        hub = _hub(env)
        tub, login = await _tub_with(furl)
        await call(login, "attach", EvilBot(lambda *args: None),
                   AttachInfo(PROTOCOL_VERSIONS, "test", {}).to_wire())
        await env.wait_connected("fw")
        conn = env.bb_worker("fw").conn
        assert hub.host is not None and hub.host.registry is not None
        session = hub.host.registry.sessions["fw"]
        await tub.stopService()  # the link drops: the session waits for the worker
        assert await wait_for(lambda: session.detached_at is not None, 30)
        assert env.bb_worker("fw").conn is conn and m.workers.connections["fw"] is conn
        # the admin revokes the worker: its session ends, and Buildbot knows
        # in the same turn (no wait for any timer or socket)
        lines = [ln for ln in env.furls_path.read_text().splitlines(keepends=True)
                 if not ln.startswith("fw ")]
        write_private(str(env.furls_path), "".join(lines))
        hub.host.registry.reload()
        assert session.gone
        assert env.bb_worker("fw").conn is None
        assert "fw" not in m.workers.connections
