"""Which error ends a command with which exit code, and the codes' --help text
(the codes themselves: :mod:`buildbot_furl.exits`)."""

from __future__ import annotations

from buildbot_furl.client.connect import MasterUnreachable
from buildbot_furl.errors import (
    CommandNotExecutable,
    CommandNotFound,
    FurlError,
    Interrupted,
    LocalFileError,
)
from buildbot_furl.exits import MEANING, Exit

#: errors whose exit code is theirs whatever the command
BY_ERROR: dict[type[FurlError], Exit] = {
    CommandNotFound: Exit.NOT_FOUND,
    CommandNotExecutable: Exit.NOT_EXECUTABLE,
    Interrupted: Exit.INTERRUPTED,
    LocalFileError: Exit.ERROR,
    MasterUnreachable: Exit.UNAVAILABLE,  # runs, but does not answer: not NOT_RUNNING
}


def code_for(error: FurlError, default: int) -> int:
    for cls, code in BY_ERROR.items():
        if isinstance(error, cls):
            return int(code)
    return default


def epilog(*codes: Exit, passthrough: bool = False) -> str:
    """The 'Exit codes' paragraph of a command's --help."""
    lines = ["Exit codes:"]
    if passthrough:
        lines.append("  N    the remote command's own exit code (0-125)")
    for c in codes:
        lines.append(f"  {int(c):<4} {MEANING[c]}")
    if passthrough:
        lines.append("  128+N the remote command was killed by signal N")
    return "\b\n" + "\n".join(lines)
