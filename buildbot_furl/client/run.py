"""``furl-master run``: a command on a worker, its output streamed here."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from zope.interface import implementer

from buildbot_furl.client.connect import require_standalone, run_with_admin
from buildbot_furl.client.output import OrderedWriter
from buildbot_furl.exits import Exit
from buildbot_furl.layout import MasterPaths
from buildbot_furl.protocol import RIOutput, call, remote_method
from buildbot_furl.protocol.messages import NOTICE, RunAnswer, RunRequest, decode_output



@implementer(RIOutput)
class OutputSink(Referenceable):
    """Receives a run's output and writes it to our stdout/stderr as it comes.

    Writing never blocks the reactor (a paused reader would have silenced
    the link until the master dropped it): the answer to an output call is
    held back while the writer holds more than its bound, and the master
    sends nothing more for the run until it gets that answer.
    """

    def __init__(self, writer: OrderedWriter, fds: dict[str, int], verbose: bool = False,
                 notices: bool = False) -> None:
        self.writer = writer
        self.fds = fds  # "stdout"/"stderr" -> our descriptor
        self.verbose = verbose
        self.notices = notices or verbose

    @property
    def broken(self) -> bool:
        """A stream of ours was closed (``| head``): output is dropped from then on."""
        return self.writer.broken

    @remote_method
    def remote_output(self, batch: bytes) -> defer.Deferred[None]:
        for key, text in decode_output(batch):
            if key == NOTICE:
                if self.notices:
                    self._put("stderr", f"furl-master: {text}\n".encode())
                continue
            if key == "header":
                if self.verbose:
                    self._put("stderr", text.encode("utf-8", "replace"))
                continue
            if key in self.fds:
                self._put(key, text.encode("utf-8", "surrogateescape"))
        return self.writer.room()

    def _put(self, key: str, data: bytes) -> None:
        self.writer.write(self.fds[key], data)


class RunOperation:
    """One ``run``: its request, its output sink, and how often Ctrl-C was hit.

    A remote signal N gives 128+N; the first Ctrl-C interrupts the remote
    command (and the exit code is 130), a second one gives up waiting.
    """

    def __init__(self, paths: MasterPaths, worker: str, argv: list[str], workdir: str | None,
                 env: dict[str, str], timeout: float | None, verbose: bool = False) -> None:
        self.paths = paths
        self.worker = worker
        self.request = RunRequest(argv, f"cli-{secrets.token_hex(8)}", workdir or ".", env,
                                  timeout)
        self.timeout = timeout
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
        self.writer = OrderedWriter(reactor, (out, err), on_broken=self._interrupt)
        self.sink = OutputSink(self.writer, {"stdout": out, "stderr": err}, verbose,
                               notices=sys.stderr.isatty())
        self.interrupts = 0
        self.admin: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            # straight to the descriptor, best effort: stderr may be a full
            # pipe in non-blocking mode, and this is a signal handler
            with contextlib.suppress(OSError):
                os.write(sys.stderr.fileno(), b"\ninterrupting the remote command "
                         b"(Ctrl-C again to stop waiting)\n")
            reactor.callFromThread(self._interrupt)
        else:
            self.writer.restore()  # the shell gets its descriptors back as they were
            os._exit(Exit.INTERRUPTED)

    def _interrupt(self) -> None:
        d = defer.Deferred.fromCoroutine(call(self.admin, "interrupt", self.request.run_id))
        d.addErrback(lambda f: None)

    async def _go(self, admin: Any) -> RunAnswer:
        require_standalone(admin)
        self.admin = admin
        signal.signal(signal.SIGINT, self._on_sigint)
        try:
            answer = await call(admin, "run", self.worker, self.request.to_wire(), self.sink)
        finally:
            await self.writer.drained()  # every byte out before we stop
        return RunAnswer.from_wire(answer)

    def run(self) -> tuple[int, str | None]:
        """Run it; (exit code, a message for stderr or None)."""
        self.writer.start()
        try:
            result = run_with_admin(self.paths, self._go)
        finally:
            self.writer.stop()
        if self.writer.error is not None:  # a full disk, a terminal gone: not '| head'
            return 1, f"cannot write the output: {self.writer.error.strerror}"
        if self.sink.broken:  # the remote command was stopped: nobody reads its output
            return Exit.BROKEN_PIPE, None  # '| head' closed it: as SIGPIPE would
        if self.interrupts:
            return Exit.INTERRUPTED, "interrupted"
        message = None
        if result.failure_reason in ("timeout", "timeout_without_output"):
            message = f"the command timed out after {self.timeout:g} s and was killed"
        if result.signal:
            return 128 + result.signal, message or f"killed by signal {result.signal}"
        return (result.rc if 0 <= result.rc < 256 else 1), message
