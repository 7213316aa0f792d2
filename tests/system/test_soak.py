"""The soak: the product used as it is used, with faults, for a few minutes.

A real Buildbot 4.3 master and FURL workers running builds back to back
(every worker-touching step Buildbot ships, files at every transfer
boundary) while a guesser hammers the workers' own address, a link is cut,
a worker is revoked and rotated, and the master is reconfigured; and the
standalone master's run/put/get, interleaved, with a guesser and cuts.
The machinery is buildbot_furl/testing/soak*.py (python -m bench.soak runs the
same for longer).  Run it alone: ``scripts/test.sh -n 1 tests/system/test_soak.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from buildbot_furl.testing.procs import Procs

from buildbot_furl.testing import soak
from buildbot_furl.testing.soak_buildbot import BuildbotSoak
from buildbot_furl.testing.soak_standalone import StandaloneSoak
pytestmark = [
    pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL X509 objects:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL PKey objects:DeprecationWarning"),
]

BUILDBOT_SECONDS = float(os.environ.get("SOAK_SECONDS", 60))  # of builds; faults at FAULTS


def _transfer_bounds() -> tuple[int, int]:
    """The chunk and the read-ahead window the worker uses (where they live
    moves with the transfer contract's rework: protocol/transfer.py)."""
    try:
        from buildbot_furl.protocol.transfer import CONTRACT  # type: ignore[import-not-found]
    except ImportError:
        from buildbot_furl.worker import streams
        return streams.CHUNK, streams.FILE_WINDOW * streams.CHUNK
    return CONTRACT.chunk, CONTRACT.ahead


def test_the_sizes_are_the_transfer_boundaries() -> None:
    """The soak's chunk and window are the worker's (soak.py, on the
    neutral side, may not import the worker's)."""
    assert (soak.CHUNK, soak.WINDOW) == _transfer_bounds()
    for n in (0, 1, soak.CHUNK - 1, soak.CHUNK + 1, soak.WINDOW - 1, soak.WINDOW + 1):
        assert n in soak.SIZES


def test_schedule_and_log_checks() -> None:
    assert [w for _, w in soak.schedule(100)] == ["guess", "cut", "rotate", "reconfig", "cut"]
    assert [w for _, w in soak.schedule(300, cycle=100)].count("guess") == 1
    assert len(soak.schedule(300, cycle=100)) == 13
    log = ("worker w1: refused a read at 1048576 that skips bytes after 12\n"
           "refused attach from 127.0.0.1:4242: unknown FURL (wrong secret)\n"
           "worker w12 attached\n"
           "worker w2 cut off after 10 protocol violations\n")
    assert soak.bad_lines(log, ("w1", "w2")) == [log.splitlines()[0], log.splitlines()[3]]
    assert soak.bad_lines("Traceback (most recent call last):", ("w1",)) != []


# The guesser's refusals, rationed (the soak's own check holds the lines about the
# well-behaved workers to none); and a worker redialing while the test stops the
# Buildbot master, whose configuration is gone by then.
GUESSER_LINES = (r"refused attach from .*: unknown FURL",
                 r"refused \d+ attach attempts from", r"refused \d+ more attach attempts")


@pytest.mark.expect_log(*GUESSER_LINES, r"refused worker w\d: master.cfg configures no")
@pytest_twisted.ensureDeferred
async def test_buildbot_soak(tmp_path: Path, procs: Procs) -> None:
    """Every build SUCCESS with byte-exact files and logs; no violation,
    refusal or cut-off line about a well-behaved worker; no unplanned
    detach; the master's RSS flat after warm-up."""
    run = BuildbotSoak(tmp_path, procs, seconds=BUILDBOT_SECONDS, build_timeout=45,
                       say=print)
    try:
        report = await run.run()
    finally:
        await run.close()
    (tmp_path / "soak-report.txt").write_text(report.summary(limit=1000) + "\n")
    print(report.summary())
    assert report.ok > 0 and not report.problems, report.summary()


STANDALONE_SECONDS = float(os.environ.get("SOAK_STANDALONE_SECONDS", 35))


@pytest.mark.expect_log(*GUESSER_LINES)
def test_standalone_soak(tmp_path: Path, procs: Procs) -> None:
    """run/put/get of every boundary size, interleaved with a streaming
    command on each worker, a guesser and cuts: every operation exact, no
    bad line about a worker, the master's RSS flat."""
    run = StandaloneSoak(tmp_path, procs, seconds=STANDALONE_SECONDS, say=print)
    try:
        report = run.run()
    finally:
        procs.cleanup()
        run.close()
    (tmp_path / "soak-report.txt").write_text(report.summary(limit=1000) + "\n")
    print(report.summary())
    assert report.ok > 0 and not report.problems, report.summary()


def test_warm_up_lasts_until_each_kind_of_fault_has_happened_once() -> None:
    """A first reconfig keeps memory for good (Buildbot's new configuration);
    growth after it would be a leak, growth at it is not."""
    from buildbot_furl.testing.soak import Report, RssCheck, warm_up_until

    r = Report("buildbot", seconds=60.0)
    r.faults = [(6.0, "guess", ""), (18.0, "cut", ""), (42.0, "reconfig", ""), (51.0, "cut", "")]
    r.rss = [(t, 280_000 if t < 45 else 318_000) for t in range(0, 61, 5)]
    assert warm_up_until(r) == 47.0
    assert RssCheck(r.rss, warm_up_until(r)).problem() is None
    r.rss[-3:] = [(50, 360_000), (55, 380_000), (60, 400_000)]  # growing after it: a leak
    assert RssCheck(r.rss, warm_up_until(r)).problem() is not None
    r.faults.append((58.0, "rotate", ""))  # too late to leave samples: the fraction
    assert warm_up_until(r) == 0.35 * 60
