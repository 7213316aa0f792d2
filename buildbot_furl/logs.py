"""Log set-up for the daemons: one text log file, optionally stderr too."""

from __future__ import annotations

import os
import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)


def start_logging(path: str, to_stderr: bool = False, level: LogLevel = LogLevel.info) -> None:
    """Send twisted.logger events to ``path`` (created 0600), and stderr."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    f = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observers = [FilteringLogObserver(textFileLogObserver(f), [predicate])]
    if to_stderr:
        observers.append(FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate]))
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
