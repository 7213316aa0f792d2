"""Every exit code furl-master, furl-worker and the worker daemon use, and what
it means (neutral: the daemons use them, the CLI explains them in --help)."""

from __future__ import annotations

import enum


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
