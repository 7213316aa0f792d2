"""The log check: a daemon's log read as records, and the records that are a
problem (a violation, refusal, cut-off or traceback).

tests/conftest.py reads, at the end of every test, each log its daemons
wrote (furl-master, furl-worker, Buildbot); a problem record fails the test
unless the test declares it (``@pytest.mark.expect_log(REGEX)``).  This
module is that check without pytest: :class:`LogWatch` (what has been read),
:data:`LOGS` (the one the suite uses, which a shared farm registers with) and
:func:`unexpected` (the failure message)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

# The suite's own logs once held the symptom of a bug (a master refusing an
# honest worker's reads) in five tests, and nothing looked.  Every test's
# logs are now read at its end: a line below fails the test unless the test
# says it expects it (it stages an attack, a bad file, a crash):
#
#     @pytest.mark.expect_log(r"refused attach from .*: unknown FURL")
#
# (on a test, a class or a module's ``pytestmark``), or at run time with the
# ``expect_log`` fixture.  A pattern is searched in the whole log record (a
# line and its continuation lines, so a traceback with its exception).

#: a violation, refusal, cut-off or traceback line; an OS-level "connection
#: refused" (a master not up yet) is not a refusal by the peer
LOG_PROBLEM = re.compile(
    r"Traceback \(most recent call last\)|Unhandled [Ee]rror"
    r"|protocol violation|\bcut off\b"
    r"|(?<![Cc]onnection )(?<!was )(?<!Connection was )\brefus(?:ed|es|al)\b(?! by other side)")


def is_log(path: Path) -> bool:
    """A daemon's log: master.log, worker.log, Buildbot's twistd.log, rotated
    ones (NAME.log.N), and the stdout of a --nodaemon daemon (NAME.out)."""
    name = path.name
    return (name.endswith((".log", ".out")) or bool(re.search(r"\.log\.\d+$", name))) \
        and path.is_file()


def log_records(text: str) -> Iterator[str]:
    """A log's records: a line with its continuation lines (indented: Twisted
    indents a multi-line message with a tab); a bare ``Traceback`` runs to
    its exception line."""
    rec: list[str] = []
    in_tb = False
    for line in text.splitlines():
        if rec and (line[:1] in ("\t", " ") or in_tb):
            rec.append(line)
            if in_tb and line[:1] not in ("\t", " "):
                in_tb = False
            continue
        if rec:
            yield "\n".join(rec)
        rec = [line]
        in_tb = line.startswith("Traceback (most recent call last)")
    if rec:
        yield "\n".join(rec)


class LogWatch:
    """Reads each log once: per file (by inode, so a rotated log is not read
    again) how far it has been checked."""

    def __init__(self) -> None:
        #: directories shared beyond one test (a module's farm): open or closed
        self.roots: dict[Path, bool] = {}
        self.offsets: dict[tuple[int, int], int] = {}

    def add(self, root: Path) -> None:
        self.roots[root] = True

    def close(self, root: Path) -> None:
        if root in self.roots:
            self.roots[root] = False

    def problems(self, roots: Iterable[Path]) -> list[tuple[Path, str]]:
        """The new records with a problem in the logs below ``roots``."""
        found = []
        for root in roots:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                with contextlib.suppress(OSError):
                    if not is_log(path):
                        continue
                    st = path.stat()
                    key = (st.st_dev, st.st_ino)
                    start = self.offsets.get(key, 0)
                    if st.st_size < start:  # truncated
                        start = 0
                    with open(path, "rb") as f:
                        f.seek(start)
                        data = f.read()
                    end = data.rfind(b"\n") + 1  # a line being written waits
                    self.offsets[key] = start + end
                    for rec in log_records(data[:end].decode(errors="replace")):
                        if LOG_PROBLEM.search(rec):
                            found.append((path, rec))
        return found

    def drop_closed(self) -> None:
        for root in [r for r, is_open in self.roots.items() if not is_open]:
            del self.roots[root]


LOGS = LogWatch()


def unexpected(found: list[tuple[Path, str]], expected: list[str]) -> str | None:
    """The failure message for the records in ``found`` that no pattern in
    ``expected`` matches; None if every one is expected."""
    pats = [re.compile(p) for p in expected]
    bad = [(path, rec) for path, rec in found if not any(p.search(rec) for p in pats)]
    report = os.environ.get("FURL_TEST_LOG_REPORT")  # a survey: every finding, one per line
    if report and found:
        with open(report, "a") as f:
            for path, rec in found:
                f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""),
                                    "log": str(path), "record": rec[:2000],
                                    "expected": (path, rec) not in bad}) + "\n")
    if not bad:
        return None
    lines = [f"{len(bad)} unexpected log record(s) (a violation, refusal, cut-off or "
             "traceback); if the test stages it, declare it with "
             "@pytest.mark.expect_log(REGEX):"]
    for path, rec in bad[:12]:
        head = rec.splitlines()
        shown = head[:4] + (["\t..."] + head[-1:] if len(head) > 5 else head[4:5])
        lines.append(f"  {path}:")
        lines.extend(f"    {ln[:300]}" for ln in shown)
    if len(bad) > 12:
        lines.append(f"  ... and {len(bad) - 12} more")
    return "\n".join(lines)
