"""buildbot-worker's commands over foolscap: the ProtocolCommand hooks.

The commands themselves (shell, stat, glob, uploadFile, ...) and the path
semantics are buildbot-worker's own (``ProtocolCommandPb``); this module
only replaces how their output and files travel (:mod:`.streams`):
batched, sequence-numbered, windowed, and kept until the master has them,
so that a command outlives a dropped connection.  A command is ended by
its session (:meth:`FurlProtocolCommand.end`), not by a TCP connection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from buildbot_worker.commands.transfer import TransferCommand, WorkerFileDownloadCommand
from buildbot_worker.pb import ProtocolCommandPb
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from buildbot_furl.errors import PolicyRefused
from buildbot_furl.protocol.messages import (
    FileTimes,
    ResumeState,
    encode_failure,
    update_items,
)
from buildbot_furl.sizes import show_bytes
from buildbot_furl.worker.metrics import NO_METRICS, WorkerEvents
from buildbot_furl.worker.policy import NO_LIMITS, Limits
from buildbot_furl.worker.streams import ChunkWriter, ReadAhead, UpdateSender

log = Logger()

#: the policy's verdict on a command and its arguments: its limits, or PolicyRefused
Check = Callable[[str, dict[str, Any]], Limits]


class FurlProtocolCommand(ProtocolCommandPb):
    """ProtocolCommandPb with its transport hooks replaced by resumable ones."""

    def __init__(self, *args: Any, check: Check | None = None,
                 clock: IReactorTime = reactor,  # type: ignore[assignment]
                 events: WorkerEvents = NO_METRICS, **kwargs: Any) -> None:
        self.clock = clock
        self.events = events
        self.rc: Any = None  # the last rc the command reported (its result, for the metrics)
        self.counted = False  # its result has been counted (once, however it ended)
        self.command_name = ""  # as the master asked for it (shell, uploadFile, ...)
        #: the worker's policy, asked once the arguments are in their final form
        self._check = check
        self.sender: UpdateSender | None = None
        self.chunk_writer: ChunkWriter | None = None
        self.read_ahead: ReadAhead | None = None
        #: what the worker's policy lets this command move
        self.limits: Limits = NO_LIMITS
        self.moved = {"upload": 0, "download": 0}
        self.cut = False  # a transfer stopped by the policy's limits
        self._cut_file: str | None = None  # a download stopped by the policy
        super().__init__(*args, **kwargs)

    def protocol_args_setup(self, command: str, args: dict[str, Any]) -> None:
        """buildbot-worker's path arguments made absolute (relative to the
        builder's directory), then judged by the worker's policy: a
        refused command is never created (PolicyRefused)."""
        self.command_name = command
        super().protocol_args_setup(command, args)
        if self._check is not None:
            self.limits = self._check(command, args)

    # -- updates --------------------------------------------------------------
    def _producer(self) -> Any:
        runprocess = getattr(self.command, "command", None)
        pp = getattr(runprocess, "pp", None)
        return getattr(pp, "transport", None)

    def _pause(self) -> None:
        producer = self._producer()
        if producer is not None and hasattr(producer, "pauseProducing"):
            producer.pauseProducing()

    def _resume(self) -> None:
        producer = self._producer()
        if producer is not None and hasattr(producer, "resumeProducing"):
            producer.resumeProducing()

    def _get_sender(self) -> UpdateSender:
        if self.sender is None:
            self.sender = UpdateSender(self.command_ref, self._pause, self._resume,
                                       self.clock, self.events)
        return self.sender

    def protocol_send_update_message(self, message: list[tuple[str, Any]]) -> None:
        for key, value in message:
            if key == "rc":
                self.rc = value
        self._get_sender().add(update_items(message))

    def protocol_notify_on_disconnect(self) -> None:
        pass  # a lost connection does not end the command: its session does

    @defer.inlineCallbacks
    def protocol_complete(self, failure: Any) -> Any:
        if self._cut_file is not None:  # what a stopped download left is not kept
            with contextlib.suppress(OSError):
                os.unlink(self._cut_file)
        yield self.flush_command_output()
        self.count_result("error" if failure is not None else
                          "success" if self.rc == 0 else "failure")
        text = None
        if failure is not None:
            kind = getattr(failure.type, "__name__", str(failure.type))
            text = f"{kind}: {failure.getErrorMessage()}"
        # the master applies complete only after every batch (calls arrive in
        # order), so there is no need to wait for their acknowledgements
        yield self._get_sender().complete(encode_failure(text))

    def count_result(self, result: str) -> None:
        """Count this command under ``result`` (metrics.RESULTS), the first time only."""
        if not self.counted:
            self.counted = True
            self.events.command_done(self.command_name, result)

    # -- the policy's limits ---------------------------------------------------
    def count_moved(self, way: str, n: int) -> bool:
        """:meth:`_past_limit`, for the worker's own transfer commands."""
        return self._past_limit(way, n)

    def _past_limit(self, way: str, n: int) -> bool:
        """Count ``n`` more bytes moved ``way``; True (and the command is
        stopped) if that is more than the policy allows.

        buildbot-worker's transfer commands are interrupted with the reason
        as their error output (the step fails with it, the master throws
        away what it got); the worker's own transfer commands get
        PolicyRefused, which they report as such."""
        limit = getattr(self.limits, way)
        self.moved[way] += n
        if limit is None or self.moved[way] <= limit:
            return False
        verb = "take from the worker" if way == "upload" else "send to the worker"
        why = (f"refused by the worker's policy: more than the {show_bytes(limit)} it lets "
               f"the master {verb} in one transfer (max_{way})")
        if not isinstance(self.command, TransferCommand):
            log.warn("{command}: {why}", command=self.command_id, why=why)
            self.events.refused(f"max_{way}")
            raise PolicyRefused(why).under(f"max_{way}")
        if not self.command.interrupted:
            log.warn("{command}: {why}", command=self.command_id, why=why)
            self.events.refused(f"max_{way}")
            self.cut = True
            self.command.stderr = why
            self.command.interrupt()
            if isinstance(self.command, WorkerFileDownloadCommand):
                self._cut_file = self.command.path
        return True

    # -- uploads --------------------------------------------------------------
    def _writer(self, writer: Any) -> ChunkWriter:
        if self.chunk_writer is None:
            self.chunk_writer = ChunkWriter(writer)
        return self.chunk_writer

    def protocol_update_upload_file_write(self, writer: Any, data: bytes) -> Any:
        if self._past_limit("upload", len(data)):
            return defer.succeed(None)
        self.events.moved("upload", len(data))
        return self._writer(writer).write(data)

    def protocol_update_upload_directory_write(self, writer: Any, data: bytes) -> Any:
        return self.protocol_update_upload_file_write(writer, data)

    def protocol_update_upload_file_utime(self, writer: Any, access_time: float,
                                          modified_time: float) -> Any:
        return defer.Deferred.fromCoroutine(
            self._writer(writer).finish("utime", FileTimes(access_time, modified_time).to_wire())
        )

    def protocol_update_upload_file_close(self, writer: Any) -> Any:
        return defer.Deferred.fromCoroutine(self._writer(writer).finish("close"))

    def protocol_update_upload_directory(self, writer: Any) -> Any:
        if self.cut:
            return defer.succeed(None)  # half an archive is not unpacked
        return defer.Deferred.fromCoroutine(self._writer(writer).finish("unpack"))

    # -- downloads ------------------------------------------------------------
    def _reader(self, reader: Any) -> ReadAhead:
        if self.read_ahead is None:
            self.read_ahead = ReadAhead(reader)
        return self.read_ahead

    def protocol_update_read_file(self, reader: Any, length: int) -> Any:
        async def read() -> bytes:
            data = await self._reader(reader).read(length)
            if self._past_limit("download", len(data)):
                return b""
            self.events.moved("download", len(data))
            return data
        return defer.Deferred.fromCoroutine(read())

    def protocol_update_read_file_close(self, reader: Any) -> Any:
        return defer.Deferred.fromCoroutine(self._reader(reader).close())

    # -- sessions -------------------------------------------------------------
    @property
    def done(self) -> defer.Deferred[None]:
        """Fires once the master has this command's completion (or the
        session that ran it is over)."""
        return self._get_sender().completed

    def resume(self, status: Any, writer: Any, reader: Any, state: ResumeState) -> None:
        """The worker reattached: the master's fresh objects, and how far it got."""
        self.command_ref = status
        self._get_sender().rebind(status, state.applied, state.completed)
        if self.chunk_writer is not None and writer is not None:
            self.chunk_writer.rebind(writer, state.written)
        if self.read_ahead is not None and reader is not None:
            self.read_ahead.rebind(reader, state.read)

    def end(self, why: Exception) -> None:
        """The session is over: kill what still runs, send nothing more."""
        if not self.is_complete:
            self.count_result("ended")
        for part in (self.sender, self.chunk_writer, self.read_ahead):
            if part is not None:
                part.end(why)
        if not self.is_complete:
            self.command.doInterrupt()
