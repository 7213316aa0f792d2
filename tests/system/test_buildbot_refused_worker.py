"""A worker the Buildbot master refuses after login backs off (issue 15
item 2b): one typed answer and one log line per attempt on the master, the
worker's real delay in its log, no traceback."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import pytest_twisted
from buildbot_furl.testing.waiting import sleep
from test_buildbot_plugin import Env, env_factory, running  # noqa: F401 - a fixture

from buildbot_furl.buildbot import FurlWorker
from buildbot_furl.furl import new_swissnum

WINDOW = 16.0  # seconds the refused worker is watched


async def _not_substantiating(self: Any, conn: Any) -> None:
    raise RuntimeError(f"Worker {self.name} received connection while not trying to "
                       "substantiate.Disconnecting.")


@pytest.mark.parametrize("how", ["configured-nowhere", "attached-raises"])
@pytest.mark.expect_log(r"refused worker fw2?: ", r"dropping connection of worker fw2? "
                        r"\(attach refused\)", r"the Buildbot master refused worker 'fw2?'")
@pytest_twisted.ensureDeferred
async def test_a_worker_buildbot_refuses_backs_off(env_factory: Callable[..., Env],
                                                    how: str) -> None:
    env = env_factory()
    env.create_worker("fw")
    async with running(env):
        await env.start_master()
        if how == "configured-nowhere":
            # in workers.furls, but no FurlWorker in master.cfg (no reconfig)
            tubid = env.furls["fw"].split("//", 1)[1].split("@", 1)[0]
            furl = f"pb://{tubid}@tcp:127.0.0.1:{env.port}/{new_swissnum()}"
            with open(env.furls_path, "a", encoding="utf-8") as f:
                f.write(f"fw2 {furl}\n")
            name = "fw2"
            patch: Any = contextlib.nullcontext()
        else:
            # a latent worker's attached() refusing it, as Buildbot's does
            name, furl = "fw", env.furls["fw"]
            patch = mock.patch.object(FurlWorker, "attached", _not_substantiating)
        with patch:
            await sleep(1.5)  # the registry has read the new line
            before = env.log_text().count(f"worker {name} attached from")
            p = env.start_furl_worker(name, furl, wait=0)
            await sleep(WINDOW)
            attempts = env.log_text().count(f"worker {name} attached from") - before
        assert p.poll() is None  # it keeps trying...
        # ...under its backoff: 1, 2, 4, 8 s (jittered) in the window, not once a second
        assert 1 <= attempts <= 6, attempts
        out = (env.tmp / f"worker-{name}.out").read_text()
        delays = [int(d) for d in re.findall(r"retrying in (\d+) s", out)]
        assert len(delays) >= 3 and max(delays) >= 3, out[-2000:]
        assert "Traceback" not in env.log_text()
