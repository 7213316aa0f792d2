"""The worker's builder list: set up as the master asks, and never a hint to
delete the admin's own directories (issue 15, item 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from buildbot_furl.protocol import encode, unwrap
from buildbot_furl.worker.bot import FurlBot


@pytest_twisted.ensureDeferred
async def test_set_builder_list_keeps_quiet_about_other_directories(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()  # what an admin uploaded with put
    (tmp_path / "work" / "data").write_text("precious\n")
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    bot = FurlBot(str(tmp_path))
    bot.startService()
    try:
        # a standalone master's builders all work in the worker's directory
        standalone = [["furl-run-0", "."], ["furl-run-1", "."]]
        for _ in range(2):  # every attach sets it again
            names = unwrap(await bot.remote_setBuilderList(encode(standalone)))
            assert names == ["furl-run-0", "furl-run-1"]
        # a Buildbot master's: one directory each; one moved, one dropped
        names = unwrap(await bot.remote_setBuilderList(encode([["b1", "b1dir"],
                                                               ["b2", "b2dir"]])))
        assert names == ["b1", "b2"] and (tmp_path / "b2dir").is_dir()
        names = unwrap(await bot.remote_setBuilderList(encode([["b1", "elsewhere"]])))
        assert names == ["b1"] and set(bot.builders) == {"b1"}
        assert bot.builders["b1"].basedir == str(tmp_path / "elsewhere")
    finally:
        globalLogPublisher.removeObserver(observe)
        await bot.stopService()
    said = "\n".join(lines)
    assert "leftover" not in said and "delete" not in said, said
    assert (tmp_path / "work" / "data").read_text() == "precious\n"
