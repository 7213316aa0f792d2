"""The master's /metrics, /healthz and /readyz, scraped over HTTP on
loopback from a real furl-master, while a real worker attaches, runs a
command, is cut and resumes, meets a forged attach, and is revoked."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from buildbot_furl.testing.farm import Farm
from buildbot_furl.testing.procs import free_port
from buildbot_furl.testing.scrape import http_get as get

P = "buildbot_furl_"


def scrape(port: int) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], str]:
    code, text = get(port, "/metrics")
    assert code == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out, text


def value(port: int, name: str, **labels: str) -> float:
    return scrape(port)[0].get((P + name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker w1",
                        r"refused \d+ attach attempts from",
                        r"refused attach from 127.0.0.1: unknown FURL")  # staged
def test_the_masters_figures_move_with_its_workers(cut_farm: Farm) -> None:
    farm = cut_farm
    port = free_port()
    furl = farm.create_worker("w1")
    farm.create_worker("w2")
    farm.configure(metrics_listen=f"tcp:{port}:interface=127.0.0.1", session_grace=60)
    farm.start_master()
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    got, _ = scrape(port)
    assert got[(P + "workers_configured", ())] == 2
    assert got[(P + "workers_attached", ())] == 0
    assert got[(P + "worker_attached", (("worker", "w1"),))] == 0
    info = next(k for k in got if k[0] == P + "build_info")
    assert dict(info[1])["role"] == "master"

    farm.start_worker("w1", furl)
    assert value(port, "workers_attached") == 1
    assert value(port, "worker_attached", worker="w1") == 1
    assert value(port, "attaches_total", kind="new") == 1

    p = farm.run("w1", "sh", "-c", "echo hello; echo oops >&2")
    assert p.returncode == 0
    assert farm.wait_for(lambda: value(port, "commands_total", result="completed") >= 1, 10)
    assert value(port, "update_bytes_total") > 0
    assert value(port, "protocol_violations_total", kind="command") == 0

    # a cut: the session waits in its grace, and the worker resumes it
    farm.proxy.cut()
    assert farm.wait_for(lambda: value(port, "attaches_total", kind="resumed") >= 1, 30)
    assert value(port, "grace_duration_seconds_count", outcome="resumed") >= 1 or \
        value(port, "workers_attached") == 1  # a cut the worker noticed first: no grace
    assert farm.wait_for(lambda: value(port, "workers_attached") == 1, 30)
    assert value(port, "session_ends_total", reason="connection_lost") == 0

    # a worker with a FURL the master does not know: refused, counted by reason
    bad = furl.rsplit("/", 1)[0] + "/" + "x" * 32
    p = farm.start_worker("intruder", bad, check=False)
    assert p.returncode != 0
    assert value(port, "attach_refusals_total", reason="unknown_furl") >= 1

    farm.master("revoke-worker", "w1", check=True)
    assert farm.wait_for(lambda: value(port, "session_ends_total", reason="revoked") == 1, 30)
    got, text = scrape(port)
    assert got[(P + "workers_configured", ())] == 1
    assert got[(P + "workers_attached", ())] == 0
    assert (P + "worker_attached", (("worker", "w1"),)) not in got
    assert got[(P + "workers_file_reloads_total", (("result", "applied"),))] >= 2
    # nothing secret in the scrape: no FURL's secret, no session secret
    for secret in farm.secrets:
        assert secret not in text
    assert "pb://" not in text


def test_a_master_that_cannot_serve_its_metrics_does_not_start(farm: Farm) -> None:
    port = free_port()
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        farm.configure(metrics_listen=f"tcp:{port}:interface=127.0.0.1")
        p = farm.master("start")
    assert p.returncode != 0
    assert f"cannot serve metrics on tcp:{port}" in p.stderr
    assert "Traceback" not in p.stderr
    # and a typo is named as one, before anything starts
    farm.configure(metrics_listen="tcpp:nope")
    p = farm.master("start")
    assert p.returncode != 0 and "metrics_listen" in p.stderr and "Traceback" not in p.stderr
