"""What every transport's master side has: its workers, their start, the attach.

A side is set up once (``setup(n)`` for ``n`` workers), then each worker
process is started (``spawn``) and timed from ``go`` to the master's attach
hook (``connect``).  The last worker to attach stays; ``prepare`` readies
it and the metrics drive it through ``stream``, ``upload``, ``download``,
``stat`` and (RPC sides) ``true``.  Each returns the seconds it took.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer

from bench.transport.children import Child, Children
from bench.transport.clock import now, within
from bench.transport.testfiles import Cert

BUILDER = "b1"
BUILDDIR = "b1dir"


class Side:
    key = ""
    label = ""
    needs_cert = False
    supports: tuple[str, ...] = ("connect", "stream", "upload", "download", "stat", "true")

    def __init__(self, tmp: Path, children: Children, cert: Cert | None) -> None:
        self.tmp = tmp / self.key
        self.tmp.mkdir()
        self.children = children
        self.cert = cert
        self.waiters: dict[str, defer.Deferred[Any]] = {}
        self.attached_at: dict[str, float] = {}
        self.worker_basedir: Path | None = None
        self.child: Child | None = None
        self.handle: Any = None  # what the attach hook got for the staying worker

    @property
    def build_dir(self) -> Path:
        """The staying worker's build directory (where downloads land)."""
        assert self.worker_basedir is not None
        return self.worker_basedir / BUILDDIR / "build"

    def _attached(self, name: str, handle: Any) -> None:
        """The master's attach hook, for every transport."""
        self.attached_at[name] = now()
        d = self.waiters.get(name)
        if d is not None and not d.called:
            d.callback(handle)

    def spawn(self, i: int) -> Child:
        """Start worker ``w{i}``'s process; it connects at ``go``."""
        name = f"w{i}"
        basedir = self.tmp / f"worker-{name}"
        (basedir / BUILDDIR / "build").mkdir(parents=True)
        self.waiters[name] = defer.Deferred()
        cfg, env = self.child_config(name, str(basedir))
        return self.children.spawn(f"{self.key}-{name}", cfg, env)

    async def connect(self, i: int, child: Child) -> float:
        """``go`` to worker ``w{i}``; milliseconds until it attached."""
        name = f"w{i}"
        t0 = now()
        child.send(b"go")
        handle = await within(self.waiters[name], 30, f"{self.key} worker {name} to attach")
        self.handle, self.worker_basedir = handle, self.tmp / f"worker-{name}"
        return (self.attached_at[name] - t0) * 1000

    # -- what each side provides ---------------------------------------------

    async def setup(self, n: int) -> None:
        """Listen, ready to accept workers w0 .. w{n-1}."""
        raise NotImplementedError

    def child_config(self, name: str, basedir: str) -> tuple[dict[str, Any], dict[str, str]]:
        """(child.py's BENCH_CHILD config, extra environment) for one worker."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Ready the staying worker for the metrics (one warm-up command)."""
        raise NotImplementedError

    async def teardown(self) -> None:
        raise NotImplementedError

    async def stream(self, path: Path, size: int) -> float:
        raise NotImplementedError

    async def upload(self, src: Path, dest: Path) -> float:
        raise NotImplementedError

    async def download(self, src: Path, dest_name: str) -> float:
        raise NotImplementedError

    async def stat(self, path: Path) -> float:
        raise NotImplementedError

    async def true(self) -> float:
        """``shell true`` (only where ``supports`` has it)."""
        raise NotImplementedError
