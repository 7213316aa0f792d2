"""A shell command's logfiles under the worker's policy (issue 16 item 6).

buildbot-worker opens a logfile by path on a later poll, not when the
command starts; these run a FurlBot with a policy file against a
FurlConnection (the Pair of test_connection) and check that what is opened
then is still inside ``[paths]``, and that logfiles count towards
``max_upload``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from buildbot.process.remotetransfer import FileReader
from twisted.logger import formatEvent, globalLogPublisher

from buildbot_furl import tree
from buildbot_furl.privatefiles import write_private
from buildbot_furl.protocol import PUT_COMMAND
from test_connection import BUILDDIR, BUILDER, FakeRemoteCommand, Pair, shell, within

SECRET = "TOP SECRET, outside [paths]\n"
#: from BUILDDIR/build/lf: x/.. is lf, then build, BUILDDIR, the worker's
#: directory and its parent, where the secret is
LINK = "x/" + "../" * 5 + "secret"


class Lines:
    """What the worker (in this process) logs meanwhile."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event) or "")

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest_twisted.async_yield_fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[Pair, Lines]]:
    """A worker whose policy allows ``sleep`` only, a secret beside its directory."""
    (tmp_path / "secret").write_text(SECRET)
    base = tmp_path / "w"
    base.mkdir()
    write_private(str(base / "furl-worker.policy"),
                  "[commands]\nallow = sleep, sh\n[limits]\nmax_upload = 1k\n")
    lines = Lines()
    globalLogPublisher.addObserver(lines)
    p = await Pair().start(base)
    try:
        await p.conn.remoteSetBuilderList([(BUILDER, BUILDDIR), ("b2", "b2dir")])
        yield p, lines
    finally:
        await p.stop()
        globalLogPublisher.removeObserver(lines)


async def _start(pair: Pair, args: dict[str, Any]) -> FakeRemoteCommand:
    rc = FakeRemoteCommand()
    await pair.conn.remoteStartCommand(rc, BUILDER, "watch", "shell", args)
    return rc


def _logged(rc: FakeRemoteCommand) -> str:
    return "".join(v[1] for v in rc.values.get("log", []))


async def _mkdir(pair: Pair, path: str) -> None:
    mk = await pair.run("mkdir", {"dir": f"../{BUILDDIR}/build/{path}"}, builder="b2")
    assert mk.rc == 0, mk.text("stderr")


@pytest_twisted.ensureDeferred
async def test_the_issue_a_dangling_link_put_then_a_mkdir(guarded: tuple[Pair, Lines],
                                                          tmp_path: Path) -> None:
    """The exact scenario: logfiles={"loot": "lf/link"} passes its check (lf
    does not exist yet); a put brings lf/link -> x/../../...; mkdir lf/x.
    The put is refused, and the secret never arrives."""
    pair, _ = guarded
    rc = await _start(pair, shell(["sleep", "4"], logfiles={"loot": "lf/link"}))
    model = tmp_path / "model"
    model.mkdir()
    (model / "link").symlink_to(LINK)
    buf = io.BytesIO()
    manifest = tree.pack_path(str(model), buf)
    (tmp_path / "tree.tar").write_bytes(buf.getvalue())
    put = await pair.run(PUT_COMMAND, {
        "path": f"{BUILDDIR}/build/lf", "kind": "dir", "manifest": manifest,
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "reader": FileReader(open(tmp_path / "tree.tar", "rb")),  # noqa: SIM115
    }, builder="b2")
    assert put.rc == 1
    assert "'..' after a name" in put.values["furl_error"][-1]["message"]
    await _mkdir(pair, "lf/x")
    await within(rc.done, 30)
    assert "SECRET" not in _logged(rc)


@pytest_twisted.ensureDeferred
async def test_a_logfile_is_checked_when_it_is_opened(guarded: tuple[Pair, Lines]) -> None:
    """However the link got there, the open on a later poll is confined to
    [paths]: the logfile is skipped with a header line and one worker log line."""
    pair, lines = guarded
    rc = await _start(pair, shell(["sleep", "4"], logfiles={"loot": "lf/link"}))
    lf = pair.path("build", "lf")
    lf.mkdir(parents=True)
    (lf / "link").symlink_to(LINK)  # dangling: buildbot-worker does not open it yet
    await _mkdir(pair, "lf/x")  # now it leads to the secret
    await within(rc.done, 30)
    assert "SECRET" not in _logged(rc)
    header = rc.text("header")
    assert "logfile 'loot' refused by the worker's policy, not watched" in header
    assert "leads outside the paths the worker's policy allows" in header
    assert len(lines.matching("logfile 'loot' refused by the worker's policy")) == 1
    assert not lines.matching("Traceback")


@pytest_twisted.ensureDeferred
async def test_logfiles_inside_paths_still_stream(guarded: tuple[Pair, Lines]) -> None:
    pair, _ = guarded
    rc = await _start(pair, shell(["sh", "-c", "sleep 0.3; mkdir -p d; echo one > d/real.log; "
                                   "ln -s d/real.log in.log; sleep 2.5"],
                                  logfiles={"in": "in.log"}))
    await within(rc.done, 30)
    assert _logged(rc) == "one\n"
    assert "refused" not in rc.text("header")


@pytest_twisted.ensureDeferred
async def test_logfiles_count_towards_max_upload(guarded: tuple[Pair, Lines]) -> None:
    pair, lines = guarded
    rc = await _start(pair, shell(["sh", "-c", "sleep 0.3; head -c 5000 /dev/zero | tr '\\0' a"
                                   " > big.log; sleep 2.5"], logfiles={"big": "big.log"}))
    await within(rc.done, 30)
    assert _logged(rc).rstrip("\n") == "a" * 1024  # buildbot-worker ends the last line
    assert "logfile 'big' cut off: more than the" in rc.text("header")
    assert "(max_upload)" in rc.text("header")
    assert len(lines.matching("logfile 'big' cut off")) == 1
