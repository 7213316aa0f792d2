"""The master side both RPC transports share: Buildbot's Connection interface.

FURL's ``FurlConnection`` and Buildbot's PB ``Connection`` are driven the
same way, with the same objects: a counting :class:`BenchCommand` (a
``RemoteCommandImpl``, as Buildbot's RemoteCommand is), Buildbot's own
``FileWriter``/``FileReader``, and the arguments Buildbot's steps send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buildbot.process.remotetransfer import FileReader, FileWriter
from buildbot.worker.protocols.base import RemoteCommandImpl
from twisted.internet import defer, reactor

from bench.transport.clock import OP_TIMEOUT, now, within
from bench.transport.sides.base import BUILDDIR, BUILDER, Side

UPLOAD_BLOCKSIZE = 256 * 1024  # buildbot.steps.transfer.FileUpload's default
DOWNLOAD_BLOCKSIZE = 16 * 1024  # buildbot.steps.transfer.FileDownload's default


class BenchCommand(RemoteCommandImpl):
    """Counts output and records rc, like Buildbot's RemoteCommand would see it."""

    def __init__(self) -> None:
        self.nbytes = 0
        self.rc: Any = None
        self.stat: Any = None
        self.failure: Any = None
        self.t_end = 0.0
        self.done: defer.Deferred[None] = defer.Deferred()

    def remote_update(self, updates: list[Any]) -> int:
        for update, _num in updates:
            for key, value in update.items():
                if key == "stdout":
                    self.nbytes += len(value)
                elif key == "rc":
                    self.rc = value
                elif key == "stat":
                    self.stat = value
        return 0

    def remote_complete(self, failure: Any = None) -> None:
        self.t_end = now()
        self.failure = failure
        # like Buildbot's RemoteCommand: act on it a moment later
        reactor.callLater(0, lambda: self.done.called or self.done.callback(None))


def shell_args(cmd: list[str]) -> dict[str, Any]:
    """A ``shell`` command's arguments, as Buildbot's ShellCommand sends them."""
    return {"workdir": "build", "command": cmd, "env": None, "want_stdout": 1,
            "want_stderr": 1, "logfiles": {}, "timeout": 1200, "maxTime": None,
            "sigtermTime": None, "logEnviron": False, "usePTY": False}


class RpcSide(Side):
    """Drives a Buildbot-style Connection (``self.conn``)."""

    conn: Any
    cid = 0

    async def run(self, command: str, args: dict[str, Any]) -> tuple[float, BenchCommand]:
        """Run one command: (seconds until remote_complete, its status object)."""
        rc = BenchCommand()
        self.cid += 1
        t0 = now()
        await self.conn.remoteStartCommand(rc, BUILDER, str(self.cid), command, args)
        await within(rc.done, OP_TIMEOUT, f"{self.key} {command}")
        if rc.failure is not None:
            raise RuntimeError(f"{self.key} {command} failed: {rc.failure}")
        return rc.t_end - t0, rc

    async def checked(self, what: str, command: str, args: dict[str, Any], ok: Any = None
                      ) -> float:
        """``run``, and RuntimeError unless rc is 0 and ``ok(rc)`` holds."""
        elapsed, rc = await self.run(command, args)
        if rc.rc != 0 or (ok is not None and not ok(rc)):
            raise RuntimeError(f"{self.key} {what}: rc {rc.rc}, {rc.nbytes} bytes of output")
        return elapsed

    async def prepare(self) -> None:
        await self.conn.remoteSetBuilderList([(BUILDER, BUILDDIR)])
        await self.run("stat", {"file": str(self.worker_basedir), "workdir": "build"})
        await self.run("shell", shell_args(["true"]))

    async def stream(self, path: Path, size: int) -> float:
        return await self.checked("stream", "shell", shell_args(["cat", str(path)]),
                                  lambda rc: rc.nbytes == size)

    async def upload(self, src: Path, dest: Path) -> float:
        writer = FileWriter(str(dest), None, None)
        return await self.checked("upload", "uploadFile", {
            "workdir": "build", "workersrc": str(src), "writer": writer, "maxsize": None,
            "blocksize": UPLOAD_BLOCKSIZE, "keepstamp": False})

    async def download(self, src: Path, dest_name: str) -> float:
        with open(src, "rb") as fp:  # the reader closes it too
            return await self.checked("download", "downloadFile", {
                "workdir": "build", "workerdest": dest_name, "reader": FileReader(fp),
                "maxsize": None, "blocksize": DOWNLOAD_BLOCKSIZE, "mode": None})

    async def stat(self, path: Path) -> float:
        return await self.checked("stat", "stat", {"file": str(path), "workdir": "build"},
                                  lambda rc: rc.stat)

    async def true(self) -> float:
        return await self.checked("true", "shell", shell_args(["true"]))
