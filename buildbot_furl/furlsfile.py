"""The ``workers.furls`` file: one ``NAME FURL [# comment]`` line per worker.

The admin may edit the file by hand; every write made here keeps the
admin's comments, blank lines and order, is atomic (temp file, fsync,
rename) and is serialized with a lock file so concurrent writers lose
nothing.  Error messages name the file and line but never echo a FURL:
the swissnum in it is a secret.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
from collections.abc import Iterator

from buildbot_furl.errors import ConfigError
from buildbot_furl.furl import Furl, parse_furl
from buildbot_furl.layout import FURLS_NAME
from buildbot_furl.privatefiles import Changed, check_private_mode, write_private

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
FILENAME = FURLS_NAME
HEADER = (
    "# workers.furls: one worker per line, NAME FURL [# comment].\n"
    "# Each FURL is a secret: whoever holds it can attach as that worker.\n"
    "# Edit by hand or with furl-master create-worker / revoke-worker / rotate-worker;\n"
    "# a running master applies changes within about a second (at once on SIGHUP).\n"
)


def shown_name(name: str, limit: int = 64) -> str:
    """A worker name as an error may echo it, quoted: past a '/' it may be a
    FURL (given first, or without its space), so never shown; and cut short."""
    shown = name if "/" not in name else name.split("/", 1)[0] + "/..."
    if len(shown) > limit:
        shown = f"{shown[:limit]}... ({len(name)} characters)"
    return repr(shown)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(f"invalid worker name {shown_name(name)}: use 1-64 characters "
                          "from A-Z a-z 0-9 . _ -")
    return name


#: Buildbot's own rule for worker names (buildbot.config.master's check of
#: c['workers'], with buildbot.util.identifiers.ident_re), within the
#: characters NAME_RE allows: a letter, '_' or '-' first, no '.', at most 50
#: characters, not a reserved word.  Kept here so that the standalone side
#: imports nothing of Buildbot; tests compare it with Buildbot's own check.
BUILDBOT_NAME_RE = re.compile(r"^[A-Za-z_-][A-Za-z0-9_-]*$")
BUILDBOT_NAME_MAX = 50
BUILDBOT_RESERVED = ("debug", "change", "status")


def buildbot_name_problem(name: str) -> str | None:
    """Why Buildbot refuses ``name`` (a name check_name accepts) as a
    worker name, or None if it takes it."""
    if name in BUILDBOT_RESERVED:
        return "Buildbot reserves that name"
    if len(name) > BUILDBOT_NAME_MAX:
        return f"Buildbot takes at most {BUILDBOT_NAME_MAX} characters"
    if not BUILDBOT_NAME_RE.match(name):
        return ("Buildbot takes only A-Z a-z 0-9 _ - (no '.'), and not a digit "
                "first")
    return None


def check_buildbot_name(name: str) -> str:
    """check_name, and Buildbot's own rule (for a Buildbot master's directory)."""
    check_name(name)
    why = buildbot_name_problem(name)
    if why is not None:
        raise ConfigError(f"invalid worker name {name!r} for a Buildbot master: {why}")
    return name


@dataclasses.dataclass
class Entry:
    """One worker line."""

    name: str
    furl: Furl
    comment: str = ""
    lineno: int = 0
    raw: str = ""  # the line as the admin wrote it, kept until the entry changes

    def render(self) -> str:
        if self.raw:
            return self.raw if self.raw.endswith("\n") else self.raw + "\n"
        line = f"{self.name} {self.furl}"
        if self.comment:
            line += f"  # {self.comment}"
        return line + "\n"


@dataclasses.dataclass
class FurlsFile:
    """The parsed file: ``lines`` holds raw text or an Entry, in file order."""

    path: str
    lines: list[str | Entry]

    @property
    def entries(self) -> list[Entry]:
        return [x for x in self.lines if isinstance(x, Entry)]

    def get(self, name: str) -> Entry | None:
        for e in self.entries:
            if e.name == name:
                return e
        return None

    def render(self) -> str:
        text = "".join(x.render() if isinstance(x, Entry) else x for x in self.lines)
        return text if not text or text.endswith("\n") else text + "\n"

    # -- edits (callers write the result with update()) --------------------
    def add(self, name: str, furl: Furl, comment: str = "") -> Entry:
        check_name(name)
        if self.get(name) is not None:
            raise ConfigError(f"worker {name!r} already exists in {self.path}")
        comment = _clean_comment(comment)
        entry = Entry(name, furl, comment)
        if self.lines and isinstance(self.lines[-1], str) and not self.lines[-1].endswith("\n"):
            self.lines[-1] += "\n"
        self.lines.append(entry)
        return entry

    def remove(self, name: str) -> Entry:
        entry = self._require(name)
        self.lines.remove(entry)
        return entry

    def replace_furl(self, name: str, furl: Furl) -> Entry:
        entry = self._require(name)
        entry.furl = furl
        entry.raw = ""
        return entry

    def _require(self, name: str) -> Entry:
        entry = self.get(name)
        if entry is None:
            raise ConfigError(f"no worker named {shown_name(name)} in {self.path}")
        return entry


def _clean_comment(comment: str) -> str:
    comment = " ".join(comment.split())
    if len(comment) > 500:
        raise ConfigError("comment too long (500 characters at most)")
    return comment


def _lines(text: str) -> list[str]:
    """The lines as an editor counts them: ended by newlines only (``str.splitlines``
    would also end one at a form feed or a control character in a comment)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def parse(text: str, path: str = FILENAME, tubid: str | None = None) -> FurlsFile:
    """Parse the file's text; errors name ``path:line``.

    With ``tubid``, every FURL must belong to that master.
    """
    lines: list[str | Entry] = []
    names: dict[str, int] = {}
    swissnums: dict[str, int] = {}
    for lineno, raw in enumerate(_lines(text), start=1):
        where = f"{path}:{lineno}"
        body = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not body:
            if "\x00" in raw:
                raise ConfigError(f"{where}: the line contains a NUL byte")
            lines.append(raw)
            continue
        comment = raw.split("#", 1)[1].strip() if "#" in raw else ""
        fields = body.split()
        if len(fields) != 2:
            raise ConfigError(
                f"{where}: expected 'NAME FURL [# comment]', found {len(fields)} field(s)"
            )
        name, furl_text = fields
        try:
            check_name(name)
            furl = parse_furl(furl_text)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if name in names:
            raise ConfigError(
                f"{where}: duplicate worker name {name!r} (first on line {names[name]})"
            )
        if furl.swissnum in swissnums:
            raise ConfigError(
                f"{where}: worker {name!r} has the same FURL as line {swissnums[furl.swissnum]}"
                " (every worker needs its own)"
            )
        if tubid is not None and furl.tubid != tubid:
            raise ConfigError(
                f"{where}: worker {name!r}: the FURL belongs to another master "
                f"(tubid {furl.tubid[:8]}..., this master is {tubid[:8]}...)"
            )
        names[name] = lineno
        swissnums[furl.swissnum] = lineno
        lines.append(Entry(name, furl, comment, lineno, raw))
    return FurlsFile(path, lines)


def read(path: str, tubid: str | None = None) -> FurlsFile:
    """Read and parse ``path``; a missing file reads as empty."""
    check_private_mode(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return FurlsFile(path, [])
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return parse(text, path, tubid)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path``.lock while editing ``path``."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _snapshot(path: str) -> tuple[int, int, int, bytes] | None:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return (st.st_ino, st.st_mtime_ns, st.st_size, f.read())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def update(path: str, tubid: str | None = None) -> Iterator[FurlsFile]:
    """Edit the file under the lock: ``with update(p) as ff: ff.add(...)``.

    The new text is written only if the block succeeds.  A hand edit that
    lands between our read and our rename is detected: then nothing is
    written and ConfigError asks the admin to run the command again.

    A symlinked file (masters of a cluster sharing one workers.furls) is
    edited where it points, with the lock beside the target: the link stays.
    """
    path = os.path.realpath(path)
    with locked(path):
        before = _snapshot(path)
        ff = read(path, tubid)
        yield ff
        text = ff.render()
        if before is None:
            text = HEADER + text
        try:
            write_private(path, text, unchanged=lambda old: _snapshot(old) == before)
        except Changed:
            raise ConfigError(
                f"{path} changed while it was being updated (a hand edit?); nothing was "
                "written, run the command again"
            ) from None


def ensure_exists(path: str) -> None:
    """Create an empty (header-only) file, 0600, if there is none."""
    path = os.path.realpath(path)
    with locked(path):
        if not os.path.exists(path):
            write_private(path, HEADER)
