"""buildbot-worker's commands over foolscap: the ProtocolCommand hooks.

The commands themselves (shell, stat, glob, uploadFile, ...) and the path
semantics are buildbot-worker's own (``ProtocolCommandPb``); this module
only replaces how their output and files travel (:mod:`.streams`):
batched, sequence-numbered, windowed, and kept until the master has them,
so that a command outlives a dropped connection.  A command is ended by
its session (:meth:`FurlProtocolCommand.end`), not by a TCP connection.
"""

from __future__ import annotations

from typing import Any

from buildbot_worker.pb import ProtocolCommandPb
from twisted.internet import defer
from twisted.logger import Logger

from buildbot_furl.protocol import encode
from buildbot_furl.protocol.messages import ResumeState, encode_failure, update_items
from buildbot_furl.worker.streams import ChunkWriter, ReadAhead, UpdateSender

log = Logger()


class FurlProtocolCommand(ProtocolCommandPb):
    """ProtocolCommandPb with its transport hooks replaced by resumable ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sender: UpdateSender | None = None
        self.chunk_writer: ChunkWriter | None = None
        self.read_ahead: ReadAhead | None = None
        super().__init__(*args, **kwargs)

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
            self.sender = UpdateSender(self.command_ref, self._pause, self._resume)
        return self.sender

    def protocol_send_update_message(self, message: list[tuple[str, Any]]) -> None:
        self._get_sender().add(update_items(message))

    def protocol_notify_on_disconnect(self) -> None:
        pass  # a lost connection does not end the command: its session does

    @defer.inlineCallbacks
    def protocol_complete(self, failure: Any) -> Any:
        yield self.flush_command_output()
        text = None
        if failure is not None:
            kind = getattr(failure.type, "__name__", str(failure.type))
            text = f"{kind}: {failure.getErrorMessage()}"
        # the master applies complete only after every batch (calls arrive in
        # order), so there is no need to wait for their acknowledgements
        yield self._get_sender().complete(encode_failure(text))

    # -- uploads --------------------------------------------------------------
    def _writer(self, writer: Any) -> ChunkWriter:
        if self.chunk_writer is None:
            self.chunk_writer = ChunkWriter(writer)
        return self.chunk_writer

    def protocol_update_upload_file_write(self, writer: Any, data: bytes) -> Any:
        return self._writer(writer).write(data)

    def protocol_update_upload_directory_write(self, writer: Any, data: bytes) -> Any:
        return self._writer(writer).write(data)

    def protocol_update_upload_file_utime(self, writer: Any, access_time: float,
                                          modified_time: float) -> Any:
        return defer.Deferred.fromCoroutine(
            self._writer(writer).finish("utime", encode([access_time, modified_time]))
        )

    def protocol_update_upload_file_close(self, writer: Any) -> Any:
        return defer.Deferred.fromCoroutine(self._writer(writer).finish("close"))

    def protocol_update_upload_directory(self, writer: Any) -> Any:
        return defer.Deferred.fromCoroutine(self._writer(writer).finish("unpack"))

    # -- downloads ------------------------------------------------------------
    def _reader(self, reader: Any) -> ReadAhead:
        if self.read_ahead is None:
            self.read_ahead = ReadAhead(reader)
        return self.read_ahead

    def protocol_update_read_file(self, reader: Any, length: int) -> Any:
        return defer.Deferred.fromCoroutine(self._reader(reader).read(length))

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
        for part in (self.sender, self.chunk_writer, self.read_ahead):
            if part is not None:
                part.end(why)
        if not self.is_complete:
            self.command.doInterrupt()
