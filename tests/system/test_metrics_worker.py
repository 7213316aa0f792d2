"""The worker's metrics endpoint (issue 18), on real processes: a master, a
worker started with ``--metrics`` whose link goes through a FaultProxy,
scraped over HTTP on loopback while it attaches, runs commands, moves
files, is cut and resumes, and loses its master.  Off unless asked; a
bad or busy endpoint fails the start in one line; no secret in a scrape."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from buildbot_furl.exits import Exit
from buildbot_furl.testing.farm import Farm, cli
from buildbot_furl.testing.procs import free_port
from buildbot_furl.testing.scrape import http_get as get

P = "buildbot_furl_worker_"


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics: ``name{labels}`` -> value."""
    code, text = get(port, "/metrics")
    assert code == 200
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def total(samples: dict[str, float], name: str) -> float:
    """The sum of ``name``'s series (over its labels)."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


@pytest.mark.expect_log(r"lost the connection to the master",
                        r"cannot reach the master|connection failed|not the master",
                        r"refused .* by the policy|refused by the worker's policy|policy")
def test_the_worker_metrics_move_with_the_link_and_the_work(cut_farm: Farm,
                                                             tmp_path: Path) -> None:
    farm = cut_farm
    assert farm.proxy is not None
    furl = farm.create_worker("w1")
    farm.start_master()
    port = free_port()
    wdir = farm.wdir("w1")
    wdir.mkdir()
    (wdir / "furl-worker.policy").write_text("[commands]\nallow = echo, sh\n")
    (wdir / "furl-worker.policy").chmod(0o600)
    farm.start_worker("w1", furl, "--metrics", f"tcp:{port}:interface=127.0.0.1")
    s = scrape(port)
    assert total(s, P + "policy_refusals_total") == 0
    assert s[P + 'link_state{state="attached"}'] == 1
    assert total(s, P + "link_state") == 1
    assert s[P + "attach_duration_seconds_count"] >= 1
    assert s[P + "reconnects_total"] == 0
    assert s[P + "commands_running"] == 0
    assert 'role="worker"' in get(port, "/metrics")[1]
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")

    # a command and a transfer each way
    assert farm.run("w1", "echo", "hello").returncode == 0
    assert farm.run("w1", "sh", "-c", "exit 3").returncode == 3
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100_000)
    farm.master("put", "w1", str(src), "got.bin", check=True)
    farm.master("get", "w1", "got.bin", str(tmp_path / "back.bin"), check=True)
    s = scrape(port)
    assert s[P + 'commands_total{command="shell",result="success"}'] == 1
    assert s[P + 'commands_total{command="shell",result="failure"}'] == 1
    assert s[P + 'commands_total{command="furl.put",result="success"}'] == 1
    assert s[P + 'commands_total{command="furl.get",result="success"}'] == 1
    assert s[P + "update_bytes_total"] > 0
    assert s[P + 'transfer_bytes_total{direction="download"}'] >= 100_000
    assert s[P + 'transfer_bytes_total{direction="upload"}'] >= 100_000
    # the worker's policy refuses a program it does not list: counted by rule
    p = farm.run("w1", "cat", "no-such-file-7q")
    assert p.returncode == Exit.UNAVAILABLE, p.stderr
    s = scrape(port)
    assert s[P + 'policy_refusals_total{rule="commands"}'] == 1
    assert total(s, P + "policy_refusals_total") == 1
    assert s[P + 'commands_total{command="shell",result="refused"}'] == 1

    # the link is cut: the worker reattaches and the master gives its session back
    farm.proxy.cut()
    farm.wait_for(lambda: scrape(port)[P + "reconnects_total"] >= 1, 30)
    farm.wait_for(lambda: scrape(port)[P + 'link_state{state="attached"}'] == 1, 30)
    s = scrape(port)
    assert s[P + "session_resumes_total"] >= 1
    assert s[P + "attach_duration_seconds_count"] >= 2

    # no secret, no FURL, no path in what anyone reaching the port reads
    text = get(port, "/metrics")[1] + get(port, "/readyz")[1]
    for secret in farm.secrets:
        assert secret not in text
    assert "pb://" not in text and str(farm.tmp) not in text
    assert "echo" not in text and "got.bin" not in text and "no-such-file-7q" not in text
    assert "secret" not in text

    # the master goes: not ready, and why
    farm.stop_master()
    farm.wait_for(lambda: get(port, "/readyz")[0] == 503, 30)
    code, body = get(port, "/readyz")
    assert body.startswith("not ready: ") and "\n" == body[-1]
    assert get(port, "/healthz")[0] == 200  # the worker itself is fine
    farm.wait_for(lambda: total(scrape(port), P + "attach_failures_total") >= 1, 30)
    assert scrape(port)[P + 'link_state{state="attached"}'] == 0


def test_no_endpoint_unless_asked_and_a_bad_or_busy_one_fails_the_start(farm: Farm) -> None:
    furl = farm.create_worker("w1")
    farm.start_master()
    wdir = farm.wdir("w1")
    # a bad endpoint, by option or in furl-worker.conf: one line, exit 1, nothing started
    p = farm.start_worker("w1", furl, "--metrics", "nope:1", check=False)
    assert p.returncode == Exit.ERROR
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert "--metrics: not a Twisted endpoint" in p.stderr
    (wdir / "furl-worker.conf").write_text("[worker]\nmetrics_listen = tcp:notaport\n")
    p = farm.start_worker("w1", furl, check=False)
    assert p.returncode == Exit.ERROR and p.stderr.strip().count("\n") == 0
    assert "metrics_listen" in p.stderr and "Traceback" not in p.stderr
    # a busy port: the daemon cannot listen, so the start fails, in one line
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        (wdir / "furl-worker.conf").write_text(
            f"[worker]\nmetrics_listen = tcp:{taken}:interface=127.0.0.1\n")
        p = farm.start_worker("w1", furl, check=False)
    assert p.returncode == Exit.ERROR, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert f"cannot serve metrics on tcp:{taken}:interface=127.0.0.1" in p.stderr
    assert cli("furl-worker", "status", str(wdir)).returncode == Exit.NOT_RUNNING
    # the option overrides the file; without either, nothing listens
    port = free_port()
    farm.start_worker("w1", furl, "--metrics", f"tcp:{port}:interface=127.0.0.1")
    assert get(port, "/readyz") == (200, "ready\n")
    cli("furl-worker", "stop", str(wdir), check=True)
    (wdir / "furl-worker.conf").write_text("[worker]\n")
    farm.start_worker("w1", furl)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
