"""The soak's standalone half: ``furl-master run``/``put``/``get``, interleaved.

A furl-master daemon and two furl-workers (w1 behind a FaultProxy, w2
beside the guesser, both on 127.0.0.1), every operation a new CLI process
as an admin types it: files of every boundary size put and got back
byte-exact, commands whose stdout, stderr and exit code are checked, and on
each worker a slow command streaming all the while.  Plain threads, no
reactor: the caller's ``procs`` starts the daemons and stops them by pid.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildbot_furl.testing.faultproxy import FaultProxy
from buildbot_furl.testing.procs import free_port
from buildbot_furl.testing.soak import (PY, SIZES, STANDALONE_FAULTS, warm_up_until, bad_lines,
                                        big_output, big_output_script, child_env, cli_argv,
                                        cut_line, furl_via, guesser_argv, must, payload, Report,
                                        rss_kib, RssCheck, run_cli, schedule, tubid_of,
                                        worker_bad_lines, write_sources)

WORKERS = ("w1", "w2")  # w1 behind the cut link
STREAM_SCRIPT = ("import sys, time\n"
                 "for i in range({n}):\n"
                 "    print('tick %05d' % i, flush=True); time.sleep(0.25)\n")
OUTPUT_LINES = (0, 1, 100, 5000)


class StandaloneSoak:
    """Run for ``seconds`` (at most ``max_ops`` CLI operations); then :meth:`check`."""

    def __init__(self, tmp: Path, procs: Any, seconds: float, max_ops: int = 100_000,
                 cycle: float | None = None, say: Callable[[str], None] = lambda msg: None) -> None:
        self.tmp = tmp
        self.procs = procs
        self.seconds = seconds
        self.max_ops = max_ops
        self.cycle = cycle
        self.say = say
        self.mdir = tmp / "master"
        self.data = tmp / "data"
        self.port = free_port()
        self.proxy = FaultProxy(self.port)
        self.report = Report("standalone")
        self.lock = threading.Lock()
        self.t0 = 0.0
        self.furls: dict[str, str] = {}
        self.master_pid: int | None = None
        self.guesser: Any = None
        self._stop = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def master(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        command, *rest = args
        return subprocess.run(cli_argv("furl-master", command, "-d", str(self.mdir), *rest),
                              capture_output=True, env=child_env(), timeout=timeout,
                              stdin=subprocess.DEVNULL)

    # -- setting up ---------------------------------------------------------------------------
    def setup(self) -> None:
        write_sources(self.data)
        self.proxy.start()
        must(run_cli("furl-master", "create-master", "-d", str(self.mdir), "--location",
                     f"tcp:127.0.0.1:{self.port}", "--port",
                     f"tcp:{self.port}:interface=127.0.0.1"), "create-master")
        for name in WORKERS:
            furl = must(run_cli("furl-master", "create-worker", "-d", str(self.mdir), name),
                        "create-worker").strip()
            self.furls[name] = furl_via(furl, self.proxy.port) if name == "w1" else furl
        self.procs.popen(*cli_argv("furl-master", "start", "-d", str(self.mdir), "--nodaemon"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pidfile = self.mdir / "furl-master.pid"
        if not self._wait(lambda: pidfile.exists() and (self.mdir / "private" / "admin.furl")
                          .exists(), 60):
            raise AssertionError(f"the master did not start; see {self.mdir}/master.log")
        self.master_pid = int(pidfile.read_text().strip())
        for name in WORKERS:
            wdir = self.tmp / f"worker-{name}"
            ffile = self.tmp / f"{name}.furl"
            ffile.touch(0o600)
            ffile.write_text(self.furls[name] + "\n")
            must(run_cli("furl-worker", "create-worker", str(wdir), "--furl-file", str(ffile)),
                 "furl-worker create-worker")
            out = open(self.tmp / f"worker-{name}.out", "ab")  # noqa: SIM115
            self.procs.popen(*cli_argv("furl-worker", "start", str(wdir), "--nodaemon",
                                       "--wait", "0"), stdout=out, stderr=subprocess.STDOUT)
            out.close()
        if not self._wait(lambda: all(self.connected().get(n) for n in WORKERS), 60):
            raise AssertionError(f"the workers did not attach in 60 s; see {self.tmp}")

    def connected(self) -> dict[str, bool]:
        p = self.master("list-workers", "--json", timeout=60)
        if p.returncode != 0:
            return {}
        return {w["name"]: bool(w["connected"]) for w in json.loads(p.stdout)["workers"]}

    @staticmethod
    def _wait(pred: Callable[[], Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.2)
        return bool(pred())

    # -- operations ----------------------------------------------------------------------------
    def _done(self, ok: bool, nbytes: int, problem: str = "") -> None:
        with self.lock:
            self.report.builds += 1
            if ok:
                self.report.ok += 1
                self.report.bytes += nbytes
            else:
                self.report.problem(f"t={self.now():.0f} s: {problem}")

    def op_put_get(self, w: str, i: int, size: int) -> None:
        remote = f"f{i}.bin"
        p = self.master("put", w, str(self.data / f"size-{size}.bin"), remote)
        if p.returncode != 0:
            self._done(False, 0, f"put {size} bytes to {w}: rc {p.returncode}: "
                       f"{p.stderr.decode(errors='replace').strip()[-300:]}")
            return
        self._done(True, size)
        local = self.tmp / "got" / f"{w}-{i}.bin"
        local.parent.mkdir(exist_ok=True)
        p = self.master("get", w, remote, str(local))
        if p.returncode != 0:
            self._done(False, 0, f"get {size} bytes from {w}: rc {p.returncode}: "
                       f"{p.stderr.decode(errors='replace').strip()[-300:]}")
        elif local.read_bytes() != payload(size):
            self._done(False, 0, f"get {size} bytes from {w}: the file differs")
        else:
            self._done(True, size)
        local.unlink(missing_ok=True)
        p = self.master("run", w, "--", "rm", "-f", remote)
        self._done(p.returncode == 0, 0, f"run rm on {w}: rc {p.returncode}")

    def op_run(self, w: str, lines: int) -> None:
        p = self.master("run", w, "--", PY, "-c", big_output_script(lines))
        out, err = big_output(lines)
        got = (p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
        if got != (0, out, err):
            self._done(False, 0, f"run on {w} ({lines} lines): rc {p.returncode}, "
                       f"{len(got[1])}/{len(out)} bytes of stdout, stderr {got[2][-300:]!r}")
        else:
            self._done(True, len(out) + len(err))

    def op_rc(self, w: str) -> None:
        p = self.master("run", w, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
        got = (p.returncode, p.stdout, p.stderr)
        self._done(got == (3, b"out\n", b"err\n"), 0, f"run rc on {w}: {got!r}"[:300])

    def _worker_loop(self, w: str, seed: int) -> None:
        rnd = random.Random(seed)
        i = 0
        while not self._stop.is_set() and self.now() < self.seconds:
            with self.lock:
                if self.report.builds >= self.max_ops:
                    return
            i += 1
            kind = rnd.choice(("put", "put", "run", "rc"))
            t0 = time.monotonic()
            try:
                if kind == "put":
                    self.op_put_get(w, i, rnd.choice(SIZES))
                elif kind == "run":
                    self.op_run(w, rnd.choice(OUTPUT_LINES))
                else:
                    self.op_rc(w)
            except subprocess.TimeoutExpired as e:
                self._done(False, 0, f"{kind} on {w} hung: {e}")
            with self.lock:
                self.report.took("put+get+rm" if kind == "put" else kind, time.monotonic() - t0)

    # -- faults ----------------------------------------------------------------------------------
    def _faults(self) -> None:
        for at, what in schedule(self.seconds, self.cycle, STANDALONE_FAULTS):
            while self.now() < at and not self._stop.is_set():
                time.sleep(min(0.2, at - self.now()))
            if self._stop.is_set():
                return
            self.say(f"t={self.now():.0f} s: {what}")
            if what == "guess":
                self.guesser = self.procs.popen(*guesser_argv(tubid_of(self.furls["w2"]),
                                                              self.port),
                                                stdout=subprocess.PIPE)
                self.report.fault(self.now(), "guess", "forged FURLs from 127.0.0.1")
            elif what == "cut":
                before = self.proxy.cuts
                self.proxy.cut()
                self._wait(lambda: self.proxy.cuts > before, 10)
                self.report.fault(self.now(), "cut", f"w1's link ({self.proxy.cuts - before})")

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            if self.master_pid is not None:
                self.report.rss.append((round(self.now(), 1), rss_kib(self.master_pid)))

    # -- the whole run ----------------------------------------------------------------------------
    def run(self) -> Report:
        self.setup()
        self.t0 = time.monotonic()
        n = int(self.seconds * 4) + 8
        streams = {w: self.procs.popen(*cli_argv("furl-master", "run", "-d", str(self.mdir), w,
                                                 "--", PY, "-c", STREAM_SCRIPT.format(n=n)),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for w in WORKERS}
        threads = [threading.Thread(target=self._worker_loop, args=(w, k), daemon=True)
                   for k, w in enumerate(WORKERS)]
        threads += [threading.Thread(target=self._faults, daemon=True),
                    threading.Thread(target=self._sample, daemon=True)]
        for t in threads:
            t.start()
        try:
            for t in threads[:2]:
                t.join()
            self._stop.set()
            threads[2].join()
            want = "".join(f"tick {i:05d}\n" for i in range(n)).encode()
            for w, p in streams.items():
                out, err = p.communicate(timeout=max(60.0, n * 0.25 + 60))
                ok = (p.returncode, out, err) == (0, want, b"")
                self._done(ok, len(want), f"the streaming run on {w}: rc {p.returncode}, "
                           f"{len(out)}/{len(want)} bytes, stderr {err[-300:]!r}")
        finally:
            self._stop.set()
            self.report.seconds = self.now()
            self.end_guesser()
        self.check()
        return self.report

    def close(self) -> None:
        """After :meth:`run` (and once the caller stopped the daemons)."""
        self.end_guesser()
        self.proxy.stop()

    def end_guesser(self) -> None:
        g, self.guesser = self.guesser, None
        if g is None:
            return
        g.terminate()
        try:
            self.report.guesser = json.loads(g.stdout.readline() or b"{}")
        except ValueError:
            pass
        if self.report.guesser.get("accepted"):
            self.report.problem(f"the guesser got in: {self.report.guesser}")

    def check(self) -> None:
        r = self.report
        if p := RssCheck(r.rss, warm_up_until(r)).problem():
            r.problem(f"master {p}")
        log = (self.mdir / "master.log").read_text(errors="replace")
        r.problems += [f"master.log: {ln}" for ln in bad_lines(log, WORKERS, cut_line("w1"))]
        for w in WORKERS:
            for f in (self.tmp / f"worker-{w}" / "worker.log", self.tmp / f"worker-{w}.out"):
                if f.exists():
                    r.problems += [f"{f.name} ({w}): {ln}" for ln in
                                   worker_bad_lines(f.read_text(errors="replace"))]
