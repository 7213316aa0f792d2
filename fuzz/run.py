"""Coverage-guided fuzzing (atheris/libFuzzer) of the targets in fuzz/targets.py.

    python fuzz/run.py TARGET [--runs N | --seconds S] [--corpus DIR]

TARGET is a name from targets.py or ``all`` (each target gets an equal
share of the runs or seconds).  Every target starts from a small built-in
corpus of valid inputs (a real FURL, real envelopes and messages, a small
tar made by tree.pack, policy files) so it reaches deep code at once.
Each target runs in a child process (libFuzzer ends its process); the
exit status is 0 when no target broke its contract, 1 otherwise, and the
input that broke it is printed (hex, cut to 256 bytes) and kept as
``TARGET-crash-SHA1`` in --artifacts (by libFuzzer: ``TARGET-timeout-*``
for a hang, ``TARGET-oom-*`` past 2 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable

import atheris

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# the parsers, and the standard library parsers they build on
INSTRUMENTED = ["buildbot_furl", "tarfile", "configparser"]
SHOWN = 256  # bytes of a failing input printed (as hex)
MARK = "*** contract violation"

with contextlib.redirect_stderr(io.StringIO()), \
        atheris.instrument_imports(include=INSTRUMENTED):  # quietly
    import tarfile

    from buildbot_furl import tree
    from buildbot_furl.errors import BadRequest, PathRefused
    from buildbot_furl.protocol import PUT_COMMAND, encode
    from buildbot_furl.protocol import messages as m
    from buildbot_furl.worker import statefile
    from fuzz import targets


# -- the built-in corpus ----------------------------------------------------------------------

TUBID = "abcdefghijklmnopqrstuvwxyz234567"
SWISS = "k3bqq4ujkwl7vdoluq3ekz3pzd2d3yrm"
FURL = f"pb://{TUBID}@tcp:127.0.0.1:9990,tcp:example.org:9990/{SWISS}"
SESSION = m.SessionProof("0123456789abcdef0123456789abcdef", "ab" * 32)
SHA = hashlib.sha256(b"x").hexdigest()


def _small_tree() -> bytes:
    """A tar of a small tree as tree.pack writes it, with some members tree.pack never writes."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.makedirs(os.path.join(src, "a", "b"))
        with open(os.path.join(src, "a", "x.txt"), "w") as f:
            f.write("hello\n")
        with open(os.path.join(src, "run.sh"), "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(os.path.join(src, "run.sh"), 0o755)
        os.symlink("x.txt", os.path.join(src, "a", "link"))
        os.symlink("../a", os.path.join(src, "a", "b", "up"))
        buf = io.BytesIO()
        tree.pack_path(src, buf)
    return buf.getvalue()


def _odd_tar() -> bytes:
    """A ustar archive with a hard link, a FIFO and a long name (all refused or kept)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, link in (("d", tarfile.DIRTYPE, ""), ("d/" + "n" * 120, tarfile.REGTYPE, ""),
                                 ("h", tarfile.LNKTYPE, "d"), ("p", tarfile.FIFOTYPE, "")):
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = kind, link
            ti.size = 3 if kind == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(b"abc") if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs for each target."""
    attach = m.AttachInfo((1, 2), "0.1.0", {"os": "linux", "admin": "me"}, SESSION)
    answer = m.AttachAnswer(1, SESSION.session, SESSION.secret, 30.0, "0.1.0", True, ("c1", "c2"))
    envelopes = [encode(["ok", {"a": [1, 2.5, None, True, b"x"]}]),
                 encode(PathRefused("no", path="../x").to_wire()),
                 encode(["error", "SomethingElse", {"message": "m", "k": "v"}])]
    put_get = [m.PutRequest("a/b", "file", SHA, None, 0o644).to_wire(),
               m.PutRequest("d", "dir", SHA, SHA).to_wire(), m.GetRequest("a/b").to_wire()]
    updates = [["stdout", "out\n"], ["stderr", "err"], ["header", "h"], ["log", ["l", "x"]],
               ["rc", 0], ["elapsed", 1.5], ["stat", [33188, 1, 2, 3]], ["files", ["a"]]]
    shell = {"workdir": ".", "command": ["echo", "hi"], "env": {"LANG": "C", "LC_ALL": "C"},
             "logfiles": {"l": "log.txt", "m": {"filename": "sub/m.log"}}}
    check = targets.check_input
    return {
        "furl": [FURL.encode(), FURL.replace(",tcp:example.org:9990", "").encode()],
        "furlsfile": [(f"# header\n\nw1 {FURL}  # first\nw-2 {FURL.replace('k3', 'x7')}\n"
                       f"   # indented\n").encode()],
        "decode": envelopes + [attach.to_wire()],
        "unwrap": envelopes,
        "attach_info": [attach.to_wire(), m.AttachInfo((1,), "x", {}).to_wire()],
        "attach_answer": [encode(answer.to_wire())],
        "resume_state": [m.ResumeState(3, True, 10, 20).to_wire()],
        "run_request": [m.RunRequest(["echo", "hi"], "run-1", "sub", {"A": "b"}, 5.0).to_wire()],
        "run_answer": [encode(m.RunAnswer(0).to_wire()),
                       encode(m.RunAnswer(-1, 9, "killed").to_wire())],
        "put_get_request": put_get,
        "file_info": [encode(m.FileInfo("file", SHA, 10, 0o644).to_wire()),
                      encode(m.FileInfo("dir", SHA, manifest=SHA).to_wire())],
        "updates": [encode(updates)],
        "output": [m.encode_output([["stdout", "x"], [m.NOTICE, "y"]])],
        "failure": [m.encode_failure(None), m.encode_failure("boom")],
        "session": [SESSION.to_wire()],
        "state_file": [statefile.WorkerStatus(
            statefile.Attachment.ATTACHED, 1.5, 42, "h:1", None, "f", statefile.Drain.ASKED,
            statefile.Switch("g", statefile.SwitchResult.FAILED, "no"), "w1").to_json().encode()],
        "drain_answer": [encode(m.DrainAnswer(3).to_wire())],
        "seq": [encode(0), encode(2**40)],
        "transfer_error": [encode(m.transfer_error(BadRequest("bad"))),
                           encode({"class": "Nope", "message": 1})],
        "name_text_arg": [encode("builder-1"), encode("x" * 300)],
        "unpack": [_small_tree(), _odd_tar()],
        "policy": [text.encode() for text in targets.POLICIES if text],
        "policy_check": [check(1, 0, "shell", shell), check(0, 1, "downloadFile", {"path": "s/x"}),
                         check(1, 0, "mkdir", {"paths": ["sub/a", "sub/b"]}),
                         check(2, 0, "cpdir", {"from_path": "sub", "to_path": "/tmp/x"}),
                         check(1, 0, "uploadFile", {"path": "big"}),
                         check(0, 0, "glob", {"path": "sub/*/x"}),
                         check(1, 0, PUT_COMMAND, {"path": "sub/f"})],
    }


# -- running one target -----------------------------------------------------------------------


def _one_input(name: str, fn: Callable[[bytes], None], artifacts: str) -> Callable[[bytes], None]:
    def test_one_input(data: bytes) -> None:
        try:
            fn(data)
        except BaseException as e:
            kept = os.path.join(artifacts, f"{name}-crash-{hashlib.sha1(data).hexdigest()}")
            with open(kept, "wb") as f:
                f.write(data)
            shown = data[:SHOWN].hex() + ("..." if len(data) > SHOWN else "")
            sys.stderr.write(f"\n{MARK} in {name}: {type(e).__name__}: {str(e)[:300]}\n"
                             f"*** input ({len(data)} bytes, hex): {shown}\n"
                             f"*** kept in {kept}\n")
            sys.stderr.flush()
            raise
    return test_one_input


def _child(name: str, flags: list[str], corpus: str, artifacts: str, out_fd: int) -> None:
    """In the forked child: fuzz ``name`` until libFuzzer ends the process."""
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    atheris.Setup([sys.argv[0], *flags, corpus],
                  _one_input(name, targets.TARGETS[name], artifacts))
    atheris.Fuzz()


@dataclasses.dataclass
class Result:
    name: str
    status: int = 0
    runs: int = 0
    seconds: float = 0.0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    violation: str = ""


STATUS_RE = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")
DONE_RE = re.compile(r"^Done (\d+) runs")


def run_target(name: str, flags: list[str], corpus: str, artifacts: str, quiet: bool) -> Result:
    """Fuzz ``name`` in a child process; what it did."""
    res = Result(name)
    os.makedirs(corpus, exist_ok=True)
    for data in seeds()[name]:
        path = os.path.join(corpus, "seed-" + hashlib.sha1(data).hexdigest())
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _child(name, flags, corpus, artifacts, w)
        finally:
            os._exit(3)  # Fuzz() never returns
    os.close(w)
    with os.fdopen(r, "r", errors="replace") as lines:
        for line in lines:
            if line.startswith(MARK):
                res.violation = line.strip()
            if not quiet or res.violation or line.startswith(("ALARM", "==")):
                sys.stderr.write(f"[{name}] {line}")
            if (s := STATUS_RE.match(line)) is not None:
                res.runs, res.cov, res.ft, res.corpus = map(int, s.groups())
            elif (d := DONE_RE.match(line)) is not None:
                res.runs = int(d.group(1))
    _, status = os.waitpid(pid, 0)
    res.seconds = time.monotonic() - start
    res.status = os.waitstatus_to_exitcode(status)
    return res


def main(argv: list[str] | None = None) -> int:
    names = list(targets.TARGETS)
    parser = argparse.ArgumentParser(
        prog="fuzz/run.py", description=__doc__,
        epilog=textwrap.fill("targets: " + ", ".join(names), 79) + "\n\nexamples:\n"
               "  fuzz/run.py all --runs 4200      # a short run, as tests/system/test_fuzz.py does\n"
               "  fuzz/run.py all --seconds 3600 --corpus .fuzz-corpus\n"
               "  fuzz/run.py unpack --seconds 600 --corpus .fuzz-corpus\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=[*names, "all"], metavar="TARGET",
                        help="a target of fuzz/targets.py, or 'all'")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--runs", type=int, help="inputs to try in all (shared by the targets)")
    budget.add_argument("--seconds", type=int,
                        help="time to fuzz in all (shared by the targets); default 60")
    parser.add_argument("--corpus", metavar="DIR",
                        help="keep each target's corpus in DIR/TARGET (seeded, grown, reused "
                             "next time); default: a temporary one")
    parser.add_argument("--artifacts", metavar="DIR", default=".",
                        help="where libFuzzer keeps the inputs that broke a contract "
                             "(default: the current directory)")
    parser.add_argument("--max-len", type=int, default=16384,
                        help="longest input tried, in bytes (default 16384)")
    parser.add_argument("--timeout", type=int, default=10,
                        help="seconds one input may take before it counts as a hang (default 10)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="show only violations and the summary, not libFuzzer's progress")
    args = parser.parse_args(argv)

    chosen = names if args.target == "all" else [args.target]
    flags = [f"-max_len={args.max_len}", f"-timeout={args.timeout}", "-rss_limit_mb=2048",
             "-print_final_stats=1"]
    if args.runs is not None:
        flags.append(f"-runs={max(1, args.runs // len(chosen))}")
    else:
        flags.append(f"-max_total_time={max(1, (args.seconds or 60) // len(chosen))}")
    os.makedirs(args.artifacts, exist_ok=True)
    targets.scratch()  # made here, so that this process removes it at exit
    tmp = tempfile.mkdtemp(prefix="furl-fuzz-corpus-")
    results: list[Result] = []
    try:
        for name in chosen:
            corpus = os.path.join(args.corpus or tmp, name)
            prefix = os.path.join(args.artifacts, f"{name}-")
            results.append(run_target(name, [*flags, f"-artifact_prefix={prefix}"], corpus,
                                      args.artifacts, args.quiet))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'target':<16} {'runs':>9} {'seconds':>8} {'cov':>6} {'ft':>7} {'corpus':>7}  result")
    for r in results:
        outcome = "ok" if r.status == 0 else f"FAILED (exit {r.status}) {r.violation}"
        print(f"{r.name:<16} {r.runs:>9} {r.seconds:>8.1f} {r.cov:>6} {r.ft:>7} {r.corpus:>7}  "
              f"{outcome}")
    total = sum(r.runs for r in results)
    print(f"{'total':<16} {total:>9} {sum(r.seconds for r in results):>8.1f}")
    return 1 if any(r.status != 0 for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
