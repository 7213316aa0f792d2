"""Every exit code furl-master and furl-worker use, and what it means."""

from __future__ import annotations

import enum

from buildbot_furl.client.connect import MasterUnreachable
from buildbot_furl.errors import (
    CommandNotExecutable,
    CommandNotFound,
    FurlError,
    Interrupted,
    LocalFileError,
)


class Exit(enum.IntEnum):
    OK = 0
    ERROR = 1
    UNAVAILABLE = 2
    NOT_RUNNING = 3
    NOT_ATTACHED = 4
    USAGE = 64
    NOT_EXECUTABLE = 126
    NOT_FOUND = 127
    INTERRUPTED = 130
    TIMEOUT = 137
    BROKEN_PIPE = 141


MEANING = {
    Exit.OK: "success",
    Exit.ERROR: "failed: bad input (a bad value, in a file or an option alike), a bad\n"
                "       or unsafe file, a refused operation",
    Exit.UNAVAILABLE: "the request could not be made or did not finish (no master\n"
                      "       answers, unknown or lost worker, path refused, refused by\n"
                      "       the worker's policy)",
    Exit.NOT_RUNNING: "not running",
    Exit.NOT_ATTACHED: "running, but not attached to its master now",
    Exit.USAGE: "bad command line (unknown command or option, missing argument, a\n"
                "       value of the wrong type)",
    Exit.NOT_EXECUTABLE: "the program exists on the worker but cannot be run",
    Exit.NOT_FOUND: "the program was not found on the worker",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
    Exit.TIMEOUT: "--timeout expired: the command was killed",
    Exit.BROKEN_PIPE: "the output was closed early (e.g. '| head'): the command was\n"
                      "       stopped quietly, as a Unix tool killed by SIGPIPE",
}

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
