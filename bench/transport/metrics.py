"""The metrics, one class each, and the samples they collect.

Each metric but connect+attach is measured on the one worker per transport
that stays after connecting, ``runs`` times, interleaved: run 1 of every
transport, then run 2, ...  With each sample goes its CPU cost: user+system
CPU of the worker process (from /proc; its ``cat``/``true`` children are
not counted) and of this master process, per MiB or per command.  What
each metric times is described in docs/performance.md.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from twisted.internet import defer

from bench.transport.children import Children
from bench.transport.clock import pause, within
from bench.transport.progress import note
from bench.transport.sides import Side
from bench.transport.testfiles import MiB, TestData, sha256

#: sizes in MiB (stream, upload, download), and commands per sample (stat, true)
PROFILES = {
    "full": {"stream": 128, "upload": 200, "download": 200, "stat": 200, "true": 100},
    "quick": {"stream": 16, "upload": 16, "download": 16, "stat": 40, "true": 20},
}


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds of a live process (not of its children)."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def master_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class CpuMeter:
    """CPU used by a worker process and by this one since the meter was made."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.worker0, self.master0 = cpu_seconds(pid), master_cpu_seconds()

    def per_unit(self, units: float) -> tuple[float, float]:
        """(worker, master) milliseconds per unit."""
        worker, master = cpu_seconds(self.pid), master_cpu_seconds()
        return (worker - self.worker0) * 1000 / units, (master - self.master0) * 1000 / units


class Samples:
    """Every run's value and CPU cost, by metric key, then transport key."""

    def __init__(self, keys: list[str]) -> None:
        self.values: dict[str, dict[str, list[float]]] = {
            m.key: {k: [] for k in keys} for m in METRICS}
        self.cpu: dict[str, dict[str, dict[str, list[float]]]] = {
            m.key: {k: {"worker": [], "master": []} for k in keys} for m in METRICS if m.cpu}

    def add(self, metric: str, key: str, value: float,
            cpu: tuple[float, float] | None = None) -> None:
        self.values[metric][key].append(value)
        if cpu is not None:
            self.cpu[metric][key]["worker"].append(cpu[0])
            self.cpu[metric][key]["master"].append(cpu[1])

    def summary(self, metric: Metric) -> str:
        """One progress line: each transport's median."""
        return f"{metric.short}: " + ", ".join(
            f"{k} {metric.fmt.format(statistics.median(v))} {metric.unit}"
            for k, v in self.values[metric.key].items() if v)


class Metric:
    """One metric: what it is called, and how one sample is taken."""

    key = ""
    label = ""  # in the tables
    short = ""  # in progress lines
    unit = "ms"
    higher = False  # is a higher value better?
    fmt = "{:.2f}"
    cpu = True  # is its CPU cost measured?

    def __init__(self, profile: dict[str, int]) -> None:
        #: MiB moved, or commands run, per sample
        self.size = profile.get(self.key, 0)

    async def sample(self, side: Side, data: TestData, run: int, samples: Samples) -> None:
        """Measure once on ``side``'s worker; the check comes after the CPU is read."""
        assert side.child is not None
        meter = CpuMeter(side.child.pid)
        value = await self.measure(side, data)
        cpu = meter.per_unit(self.size)
        self.check(side, data, run)
        samples.add(self.key, side.key, value, cpu)

    async def measure(self, side: Side, data: TestData) -> float:
        raise NotImplementedError

    def check(self, side: Side, data: TestData, run: int) -> None:
        pass


class ConnectAttach(Metric):
    """``go`` to an idle, already started worker process -> the attach hook.

    One fresh process per sample; the last one of each transport stays
    for the other metrics."""

    key, label, short, fmt, cpu = "connect", "connect+attach", "connect+attach", "{:.1f}", False

    async def run_all(self, sides: dict[str, Side], children: Children, runs: int,
                      samples: Samples) -> None:
        note(f"starting {runs * len(sides)} worker processes")
        pending = {(k, i): sides[k].spawn(i) for i in range(runs) for k in sides}
        await within(defer.gatherResults([c.ready for c in pending.values()],
                                         consumeErrors=True), 120, "worker processes to start")
        await pause(0.5)
        for i in range(runs):
            for key, side in sides.items():
                child = pending[(key, i)]
                samples.add(self.key, key, await side.connect(i, child))
                if i < runs - 1:  # the last sample's worker stays for the rest
                    await pause(0.2)
                    await children.stop(child)
                else:
                    side.child = child
        note(samples.summary(self))


class Stream(Metric):
    """A ``shell`` command ``cat FILE`` (text); MiB/s until the rc arrives."""

    key, label, short, unit, higher, fmt = (
        "stream", "shell `cat` output stream", "stream", "MiB/s", True, "{:.0f}")

    async def measure(self, side: Side, data: TestData) -> float:
        return self.size / await side.stream(data.stream_file, self.size * MiB)


class Transfer(Metric):
    """A file moved whole; MiB/s until it is closed and renamed into place.
    Every copy is checked by size, the first run's also by sha256."""

    unit, higher, fmt = "MiB/s", True, "{:.0f}"

    def files(self, side: Side, data: TestData) -> tuple[Path, Path]:
        """(source, where the copy lands)."""
        raise NotImplementedError

    async def move(self, side: Side, src: Path, dest: Path) -> float:
        raise NotImplementedError

    async def measure(self, side: Side, data: TestData) -> float:
        return self.size / await self.move(side, *self.files(side, data))

    def check(self, side: Side, data: TestData, run: int) -> None:
        src, dest = self.files(side, data)
        if dest.stat().st_size != src.stat().st_size or (
                run == 0 and sha256(dest) != data.sums[src]):
            raise RuntimeError(f"{side.key} {self.key}: the file arrived damaged")
        dest.unlink()


class Upload(Transfer):
    key, label, short = "upload", "uploadFile", "upload"

    def files(self, side: Side, data: TestData) -> tuple[Path, Path]:
        return data.blob_up, side.tmp / "uploaded.bin"

    async def move(self, side: Side, src: Path, dest: Path) -> float:
        return await side.upload(src, dest)


class Download(Transfer):
    key, label, short = "download", "downloadFile", "download"

    def files(self, side: Side, data: TestData) -> tuple[Path, Path]:
        return data.blob_down, side.build_dir / "downloaded.bin"

    async def move(self, side: Side, src: Path, dest: Path) -> float:
        return await side.download(src, dest.name)


class RoundTrip(Metric):
    """``size`` commands one after another; the median milliseconds per command."""

    async def measure(self, side: Side, data: TestData) -> float:
        times = [await self.once(side, data) for _ in range(self.size)]
        return statistics.median(times) * 1000

    async def once(self, side: Side, data: TestData) -> float:
        raise NotImplementedError


class Stat(RoundTrip):
    """``stat`` commands: no process is spawned, so pure command RPC."""

    key, label, short = "stat", "`stat` command round trip", "stat"

    async def once(self, side: Side, data: TestData) -> float:
        return await side.stat(data.stream_file)


class ShellTrue(RoundTrip):
    """``shell true`` commands (RPC sides only)."""

    key, label, short = "true", "`shell true` round trip", "true"

    async def once(self, side: Side, data: TestData) -> float:
        return await side.true()


#: in the order they run and appear in the tables
METRICS: list[type[Metric]] = [ConnectAttach, Stream, Upload, Download, Stat, ShellTrue]
