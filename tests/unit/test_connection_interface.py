"""FurlConnection against Buildbot's own Connection interface test, and a
real Buildbot RemoteCommand fed through CommandStatus.

These are trial TestCases run by pytest: they must not leave a Deferred
pending (trial would spin the reactor, which pytest-twisted already runs),
so everything here advances Buildbot's fake reactor instead.

Importing ``buildbot.test`` makes every warning an error for the rest of
the process (buildbot/test/__init__.py); the imports below run inside
``catch_warnings`` so that switch stays confined to them.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

pytest.importorskip("buildbot.test.util.protocols")

with warnings.catch_warnings():
    from buildbot.process import remotecommand
    from buildbot.test.fake import fakemaster
    from buildbot.test.reactor import TestReactorMixin
    from buildbot.test.util.protocols import ConnectionInterfaceTest
    from twisted.internet import defer
    from twisted.trial import unittest

from buildbot_furl.errors import RemoteError
from buildbot_furl.master.connection import CommandStatus, FurlConnection
from buildbot_furl.protocol import encode, unwrap
from buildbot_furl.testing.fakes import FakeBot


class FakeSession:
    name = "w1"
    peer = "127.0.0.1:4242"
    gone = False
    worker_info: dict[str, Any] = {}

    def __init__(self) -> None:
        self.bot = FakeBot(answer=None)
        self.callbacks: list[Any] = []
        self.dropped: list[str] = []

    def add_disconnect_callback(self, cb: Any) -> Any:
        self.callbacks.append(cb)
        return cb

    def drop(self, why: str) -> None:
        self.dropped.append(why)

    def add_rebind_listener(self, cb: Any) -> None:
        pass

    def call_failed(self, bot: Any) -> None:
        pass

    def violation(self, what: str) -> None:
        pass

    def wait_attached(self) -> Any:
        from twisted.internet import defer

        return defer.succeed(None)


class TestFurlConnectionInterface(ConnectionInterfaceTest, TestReactorMixin, unittest.TestCase):
    timeout = 30  # buildbot's test setup makes it 5 s

    async def setUp(self) -> None:  # type: ignore[override]
        self.setup_test_reactor()
        self.master = await fakemaster.make_master(self)
        self.worker = object()
        self.session = FakeSession()
        self.conn = FurlConnection(self.session, self.master, self.worker)

    def test_attributes(self) -> None:
        self.assertIs(self.conn.master, self.master)
        self.assertIs(self.conn.worker, self.worker)
        self.assertIsInstance(self.conn.info, dict)
        self.assertEqual(self.conn.get_peer(), "127.0.0.1:4242")

    def test_lose_connection_delivers_once(self) -> None:
        calls: list[int] = []
        self.conn.notifyOnDisconnect(lambda: calls.append(1))
        started = self.conn.wait_shutdown_started()
        self.conn.loseConnection()
        self.conn.loseConnection()
        for cb in self.session.callbacks:  # the transport going later
            cb()
        self.assertEqual(calls, [1])
        self.assertEqual(len(self.session.dropped), 2)  # drop() itself is idempotent
        self.assertTrue(self.conn.waitShutdown().called)
        self.assertFalse(started.called)  # fires eventually, on the master's reactor
        self.reactor.advance(0)
        self.assertTrue(started.called)
        late: list[int] = []
        self.conn.notifyOnDisconnect(lambda: late.append(1))
        self.reactor.advance(0)
        self.assertEqual(late, [1])


class TestRealRemoteCommand(TestReactorMixin, unittest.TestCase):
    """Buildbot's own RemoteCommand accepts what CommandStatus gives it."""

    timeout = 30

    class Worker:
        def messageReceivedFromWorker(self) -> None:
            pass

    def setUp(self) -> None:
        self.setup_test_reactor()

    def make_command(self) -> remotecommand.RemoteCommand:
        cmd = remotecommand.RemoteCommand("stat", {"file": "x"})
        cmd.worker = self.Worker()
        cmd.active = True
        cmd.deferred = defer.Deferred()
        return cmd

    @defer.inlineCallbacks
    def test_stat_and_files_updates(self) -> Any:
        cmd = self.make_command()
        cs = CommandStatus(cmd)
        st = [33188, 1, 2, 1, 0, 0, 3, 4, 5, 6]
        raw = yield cs.remote_update(1, encode([["stat", st], ["files", ["a", "b"]],
                                                ["elapsed", 0.5]]))
        self.assertEqual(unwrap(raw), 1)
        self.assertEqual(cmd.updates["stat"], [tuple(st)])
        self.assertEqual(cmd.updates["files"], [["a", "b"]])
        self.assertEqual(cmd.updates["elapsed"], [0.5])
        self.assertTrue(cmd.active)  # no assertion inside remote_update failed

    @defer.inlineCallbacks
    def test_failure_reaches_step_as_exception(self) -> Any:
        cmd = self.make_command()
        cmd._is_conn_test_fake = True  # skip its wait for rc on the global reactor
        cs = CommandStatus(cmd)
        raw = yield cs.remote_complete(1, encode("OSError: boom"))
        self.assertEqual(unwrap(raw), 1)
        self.reactor.advance(0)
        self.assertTrue(cmd.deferred.called)
        with self.assertRaises(RemoteError) as e:
            yield cmd.deferred
        self.assertEqual(str(e.exception), "OSError: boom")
