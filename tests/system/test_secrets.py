"""No secret in any output or log, whatever goes wrong.

Every ``furl-master`` and ``furl-worker`` command is run through its
error paths (bad, unknown, revoked, malformed and misdirected FURLs,
unsafe file modes, a corrupted workers.furls, refused and failing
operations, workers and masters that are not there), and both daemons
through theirs.  Then every line any of them printed, every log and state
file is searched for each swissnum the test knows of and for anything
shaped like a session secret (64 hex digits) that is not a digest the
test can account for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from buildbot_furl.testing.farm import Farm, cli

from buildbot_furl.furl import new_swissnum, secret_digest
from buildbot_furl.privatefiles import write_private

HEX64 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")
#: files whose purpose is to hold a secret: not searched
HOLDERS = {"workers.furls", "master.furl", "admin.furl", "tub.pem"}


class Seen:
    """Everything the commands printed, with what produced it."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, what: str, p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        self.texts.append((f"{what} (stdout)", p.stdout))
        self.texts.append((f"{what} (stderr)", p.stderr))
        return p


# staged: every error path, to check that no secret is in its text
@pytest.mark.expect_log(r"with the revoked or rotated FURL of worker", r"unknown FURL \(wrong secret\)",
                        r"refused \d+ attach attempts from", r"refused '[\w.]+' by the policy",
                        r"error in RunProcess._startCommand", r"AbandonChain: .*No such file")
def test_no_secret_reaches_any_output_or_log(farm: Farm, tmp_path: Path) -> None:
    seen = Seen()
    fake = [new_swissnum() for _ in range(4)]  # in FURLs the test makes up
    digests: set[str] = set()

    def master(what: str, *args: str) -> subprocess.CompletedProcess[str]:
        return seen.add(f"furl-master {what}", farm.master(*args))

    def run(what: str, *args: str, options: tuple[str, ...] = ()) -> None:
        p = farm.run(*args, options=options)
        seen.texts.append((f"furl-master run: {what}",
                           p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")))

    def worker(what: str, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        return seen.add(f"furl-worker {what}", cli("furl-worker", *args, env=env, timeout=90))

    f1 = farm.create_worker("w1")
    f2 = farm.create_worker("w2")
    farm.create_worker("gone")
    tubid = f1.split("//", 1)[1].split("@", 1)[0]
    here = f1.split("@", 1)[1].rsplit("/", 1)[0]
    unknown = f"pb://{tubid}@{here}/{fake[0]}"
    other_master = f"pb://{'a' * 32}@{here}/{fake[1]}"
    nobody_home = f"pb://{tubid}@tcp:127.0.0.1:1/{fake[2]}"
    malformed = f"pb://{tubid}@/{fake[3]}?x"

    # -- master commands, before it runs ----------------------------------------------
    master("create-master again", "create-master", "--location", "tcp:127.0.0.1:1")
    master("create-worker duplicate", "create-worker", "w1")
    master("create-worker bad name", "create-worker", "no such/name")
    taken = tmp_path / "taken"
    taken.write_text("x")
    master("create-worker -o taken", "create-worker", "w3", "-o", str(taken))
    master("rotate unknown", "rotate-worker", "nobody")
    master("status down", "status")
    run("run down", "w1", "true")
    master("stop down", "stop")
    pem = farm.mdir / "private" / "tub.pem"
    pem.chmod(0o644)
    master("start unsafe key", "start")
    pem.chmod(0o600)

    # -- the master runs; w1 attaches (with a policy), w2 never does ----------------------------
    farm.start_master()
    wdir = farm.wdir("w1")
    farm.start_worker("w1", f1)
    master("start twice", "start")
    run("run unknown worker", "nobody", "true")
    run("run absent worker", "w2", "true")
    run("run missing program", "w1", "/no/such/program")
    run("run failing", "w1", "sh", "-c", "echo out; echo err >&2; exit 3")
    run("run timed out", "w1", "sleep", "5", options=("--timeout", "0.5"))
    write_private(str(wdir / "furl-worker.policy"), "[commands]\nallow = echo, sh\n")
    run("run refused program", "w1", "cat", "/etc/hostname")
    src = tmp_path / "src.txt"
    src.write_text("payload\n")
    digests.add(hashlib.sha256(b"payload\n").hexdigest())
    master("put missing", "put", "w1", str(tmp_path / "nope"), "x")
    master("put escaping", "put", "w1", str(src), "../escape.txt")
    master("put onto the FURL", "put", "w1", str(src), "master.furl")
    master("get the FURL", "get", "w1", "master.furl", str(tmp_path / "stolen"))
    master("get missing", "get", "w1", "nope", str(tmp_path / "nope"))
    master("revoke unknown", "revoke-worker", "nobody")
    master("list", "list-workers")
    master("list json", "list-workers", "--json")
    master("status json", "status", "--json")

    # a corrupted line that holds a swissnum: named, never echoed
    furls = farm.mdir / "workers.furls"
    good = furls.read_text()
    furls.write_text(good + f"broken pb://{tubid}@{here}/{fake[0]} trailing junk ?\n")
    master("list corrupt", "list-workers")
    # the running master notices the change (its log says so; not a pause)
    mlog = farm.mdir / "master.log"
    assert farm.wait_for(lambda: "workers.furls not applied" in mlog.read_text(), 30)
    furls.write_text(good)
    os.chmod(furls, 0o600)
    admin = farm.mdir / "private" / "admin.furl"
    admin.chmod(0o644)
    master("admin furl unsafe", "list-workers")
    admin.chmod(0o600)

    # a revoked worker's FURL, and a rotated one's old FURL
    master("revoke", "revoke-worker", "gone")
    rotated = farm.master("rotate-worker", "w2").stdout.strip()  # prints it: its purpose
    farm.secrets.add(rotated.rsplit("/", 1)[1])

    # -- worker commands -------------------------------------------------------------------
    bad = tmp_path / "bad"
    bad.mkdir()
    for what, furl in [("unknown", unknown), ("other master", other_master),
                       ("nobody home", nobody_home), ("revoked", farm.furls["gone"]),
                       ("rotated away", f2)]:
        d = bad / what.replace(" ", "-")
        worker(f"create-worker {what}", "create-worker", str(d), "--furl", furl)
        worker(f"start {what}", "start", str(d), "--wait", "3")
        farm.procs.track_pidfile(d / "furl-worker.pid")
        worker(f"status {what}", "status", str(d), "--json")
        worker(f"stop {what}", "stop", str(d))
    worker("create malformed", "create-worker", str(bad / "m"), "--furl", malformed)
    (bad / "m2").mkdir()
    (bad / "m3").mkdir()
    worker("start malformed env", "start", str(bad / "m2"), "--wait", "1",
           env={"FURL_WORKER_FURL": malformed})
    worker("create-worker twice", "create-worker", str(wdir), "--furl", f1)
    loose = tmp_path / "loose.furl"
    loose.write_text(f1 + "\n")
    loose.chmod(0o644)
    worker("furl-file unsafe", "start", str(bad / "m3"), "--furl-file", str(loose))
    worker("set-furl malformed", "set-furl", str(wdir), "--furl", malformed)
    worker("set-furl not running", "set-furl", str(bad / "unknown"), "--furl", unknown)
    worker("status", "status", str(wdir))
    worker("policy", "policy", str(wdir))
    worker("stop missing", "stop", str(tmp_path / "no-such-dir"))

    # the worker's master goes away, and the worker's run with it
    slow = farm.run_popen("w1", "sh", "-c", "echo started; sleep 30", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert slow.stdout is not None
    started = slow.stdout.readline()  # it runs (not a pause)
    farm.stop_master()
    out, err = slow.communicate(timeout=60)
    out = started + out
    seen.texts.append(("run cut by the master's stop", out.decode() + err.decode()))
    master("status stopped", "status")
    worker("status masterless", "status", str(wdir), "--json")
    worker("stop", "stop", str(wdir))

    # -- search ------------------------------------------------------------------------------
    farm.procs.cleanup()
    for path in farm.tmp.rglob("*"):
        if path.is_file() and path.name not in HOLDERS and not path.name.endswith(".furl") \
                and (".log" in path.name or path.suffix in (".state", ".json", ".out")):
            seen.texts.append((str(path), path.read_text(errors="replace")))
    secrets = set(farm.secrets) | set(fake)
    digests |= {secret_digest(s) for s in secrets}
    assert len(seen.texts) > 120
    for where, text in seen.texts:
        if not where.startswith("/"):  # what a user is shown (logs may hold tracebacks)
            assert "Traceback" not in text, f"a traceback in {where}:\n{text}"
        for secret in secrets:
            assert secret not in text, f"a swissnum in {where}:\n{text}"
        for m in HEX64.finditer(text):
            assert m.group(0).lower() in digests, \
                f"something like a session secret in {where}: {text[:2000]}"
    printed = json.dumps(seen.texts)
    # the commands did run and say things
    assert "invalid worker name 'no such/...'" in printed
    assert "/no/such/program: command not found on worker 'w1'" in printed
    assert "worker 'w1' refused" in printed
    assert "not connected" in printed
