"""The worker's remotely callable objects: buildbot-worker's Bot over foolscap.

``FurlBot`` is buildbot-worker's transport-neutral ``BotPbLike`` made a
foolscap Referenceable; builders are its ``WorkerForBuilderPbLike``
children, running commands through :class:`FurlProtocolCommand`.  Each
remote method answers with an ok/error envelope (see protocol/envelope.py).
"""

from __future__ import annotations

import sys
from typing import Any

from buildbot_worker.base import UnknownCommand
from buildbot_worker.pb import BotPbLike, WorkerForBuilderPbLike
from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from buildbot_furl.errors import BadRequest, CommandFailed, PolicyRefused
from buildbot_furl.tree import transferred_mode
from buildbot_furl.layout import WorkerPaths
from buildbot_furl.protocol import RIWorkerBot, remote_method
from buildbot_furl.protocol.messages import (
    RESUMED,
    UNKNOWN_COMMAND,
    BuilderList,
    CommandArgs,
    ResumeState,
)
from buildbot_furl.worker import logfiles, procgroup, transfers
from buildbot_furl.worker.command import Check, FurlProtocolCommand
from buildbot_furl.worker.metrics import NO_METRICS, WorkerEvents
from buildbot_furl.worker.policy import Limits, PolicyFile

log = Logger()

BUFFER_TIMEOUT = 0.1  # seconds output may wait to be batched (PB uses 5)


class FurlWorkerForBuilder(WorkerForBuilderPbLike):
    #: how the next command is judged (set by FurlBot: its policy)
    next_check: Check | None = None

    def ProtocolCommand(self, *args: Any, **kwargs: Any) -> FurlProtocolCommand:  # noqa: N802
        return FurlProtocolCommand(*args, check=self.next_check, clock=self.bot.clock,
                                   events=self.bot.events, **kwargs)


@implementer(RIWorkerBot)
class FurlBot(Referenceable, BotPbLike):
    WorkerForBuilder = FurlWorkerForBuilder

    def __init__(self, basedir: str,
                 clock: IReactorTime = reactor,  # type: ignore[assignment]
                 events: WorkerEvents = NO_METRICS, **kwargs: Any) -> None:
        self.clock = clock  # the commands' timers
        self.events = events  # what the metrics count (commands, bytes, refusals)
        transfers.register()
        procgroup.install()
        logfiles.install()
        BotPbLike.__init__(self, basedir, **kwargs)
        self.buffer_timeout = BUFFER_TIMEOUT
        #: every command whose completion the master has not acknowledged yet
        self.commands: dict[tuple[str, str], FurlProtocolCommand] = {}
        #: what the worker's admin allows the master (furl-worker.policy)
        self.policy = PolicyFile(WorkerPaths(basedir).policy, basedir)

    def attach_info(self) -> dict[str, Any]:
        """What the worker tells the master at attach: getWorkerInfo less
        the environment (which may hold secrets and is sent only on request)."""
        info = BotPbLike.remote_getWorkerInfo(self)
        info.pop("environ", None)
        info["python"] = sys.executable  # lets the master checksum files here
        return info

    def _builder(self, name: str) -> FurlWorkerForBuilder:
        b = self.builders.get(name)
        if b is None:
            raise BadRequest(f"no builder named {name!r} on this worker")
        return b

    @remote_method
    def remote_print(self, message: str) -> None:
        BotPbLike.remote_print(self, message)

    @remote_method
    def remote_ping(self) -> str:
        return "pong"

    @remote_method
    def remote_getWorkerInfo(self) -> dict[str, Any]:
        info = BotPbLike.remote_getWorkerInfo(self)
        if isinstance(info.get("environ"), dict):  # the policy decides what it sees
            info["environ"] = self.policy.disclose(info["environ"])
        return info

    @remote_method
    async def remote_setBuilderList(self, builders: bytes) -> list[str]:
        wanted = BuilderList.from_wire(builders).pairs
        try:
            self.policy.builder_dirs([d for _, d in wanted])
        except PolicyRefused as e:
            self.events.refused(e.rule)
            raise
        return sorted(await self._set_builders(list(wanted)))

    async def _set_builders(self, wanted: list[tuple[str, str]]) -> list[str]:
        """buildbot-worker's setBuilderList without its scan for leftover
        directories: that one tells the admin to delete every directory that
        is no builder's, on every attach, and here that is often the admin's
        own data (what put uploaded: a standalone master's builders all work
        in the worker's directory itself)."""
        for name, builddir in wanted:
            b = self.builders.get(name)
            if b is None:
                b = self.WorkerForBuilder(name, self.unicode_encoding, self.buffer_size,
                                          self.buffer_timeout, self.max_line_length,
                                          self.newline_re)
                b.setServiceParent(self)
                b.setBuilddir(builddir)
                self.builders[name] = b
            elif b.builddir != builddir:
                log.info("builder {name}: builddir {old} -> {new}", name=name,
                         old=b.builddir, new=builddir)
                b.setBuilddir(builddir)
        names = {name for name, _ in wanted}
        gone = [name for name in self.builders if name not in names]
        await defer.gatherResults(
            [defer.maybeDeferred(self.builders[name].disownServiceParent) for name in gone],
            consumeErrors=True)
        for name in gone:
            del self.builders[name]
        return list(names)

    @remote_method
    def remote_startBuild(self, builder: str) -> None:
        self._builder(builder).remote_startBuild()

    @remote_method
    def remote_startCommand(self, builder: str, command_id: str, command: str, args: bytes,
                            status: Any, writer: Any, reader: Any) -> None:
        b = self._builder(builder)
        cargs = CommandArgs.from_wire(args).with_refs({"writer": writer, "reader": reader})
        key = (builder, command_id)
        if key in self.commands:
            raise BadRequest(f"command {command_id!r} already runs in builder {builder!r}")
        if command == "downloadFile" and isinstance(cargs.get("mode"), int):
            # buildbot-worker chmods to whatever the master asks: no setuid/setgid
            cargs["mode"] = transferred_mode(cargs["mode"])
        running = self.running_commands()

        def check(name: str, final_args: dict[str, Any]) -> Limits:
            return self.policy.check(name, final_args, running)

        b.next_check = check
        try:
            b.remote_startCommand(status, command_id, command, cargs)
        except PolicyRefused as e:
            log.warn("refused {command!r} by the policy: {why}", command=command, why=e)
            self.events.refused(e.rule)
            self.events.command_done(command, "refused")
            raise
        except UnknownCommand as e:
            self.events.command_done(command, "rejected")
            raise CommandFailed(str(e)) from None
        except (ValueError, KeyError, TypeError) as e:
            self.events.command_done(command, "rejected")
            raise CommandFailed(f"cannot start {command!r}: {type(e).__name__}: {e}") from None
        cmd = b.protocol_command
        if isinstance(cmd, FurlProtocolCommand):
            self.commands[key] = cmd
            cmd.done.addBoth(lambda _: self.commands.pop(key, None))

    @remote_method
    def remote_interruptCommand(self, builder: str, command_id: str, why: str) -> None:
        self._builder(builder).remote_interruptCommand(command_id, why)

    @remote_method
    def remote_resumeCommand(self, builder: str, command_id: str, status: Any, writer: Any,
                             reader: Any, state: bytes) -> str:
        cmd = self.commands.get((builder, command_id))
        if cmd is None:
            return UNKNOWN_COMMAND
        cmd.resume(status, writer, reader, ResumeState.from_wire(state))
        return RESUMED

    def running_commands(self) -> int:
        """How many commands run now (the metrics read it at each scrape)."""
        return sum(1 for c in self.commands.values() if not c.is_complete)

    def end_commands(self, why: Exception) -> int:
        """End every command of a session that is over; how many there were."""
        commands = list(self.commands.values())
        self.commands.clear()
        for cmd in commands:
            cmd.end(why)
        return len(commands)

    def keep_only(self, command_ids: set[str], why: Exception) -> int:
        """End the commands the master did not resume; how many."""
        gone = [k for k in self.commands if k[1] not in command_ids]
        for key in gone:
            self.commands.pop(key).end(why)
        return len(gone)

    @remote_method
    def remote_shutdown(self) -> None:
        log.info("worker shutting down on request of the master")
        BotPbLike.remote_shutdown(self)
