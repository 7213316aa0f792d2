"""``FurlWorker``: a Buildbot worker that attaches through its FURL, not PB."""

from __future__ import annotations

import os
from typing import Any

from buildbot.config.errors import ConfigErrors
from buildbot.config.errors import error as config_error
from buildbot.worker import Worker
from twisted.internet import defer
from twisted.logger import Logger

from buildbot_furl import furlsfile
from buildbot_furl.buildbot.hub import FurlHub
from buildbot_furl.errors import ConfigError
from buildbot_furl.furl import Furl, parse_furl
from buildbot_furl.master.config import check_grace

log = Logger()


def load_workers(path: str, **worker_kwargs: Any) -> list[FurlWorker]:
    """One :class:`FurlWorker` per line of a ``workers.furls`` file.

    ``path`` may also be the directory holding it.  ``worker_kwargs``
    (``max_builds``, ``properties``, ...) go to every worker.  Errors in
    the file become Buildbot configuration errors naming file and line; a
    line whose name Buildbot refuses (``furlsfile.buildbot_name_problem``)
    is left out with one log line, so that it cannot block a reconfig.
    """
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        path = os.path.join(path, furlsfile.FILENAME)
    if not os.path.exists(path):
        config_error(f"{path} does not exist (make it with: furl-master create-master -d DIR)")
        return []
    try:
        ff = furlsfile.read(path)
    except ConfigError as e:
        config_error(str(e))
        return []
    workers = []
    for e in ff.entries:
        why = furlsfile.buildbot_name_problem(e.name)
        if why is not None:  # one bad line must not make Buildbot refuse the whole config
            log.error("{path}, line {line}: worker {name!r} left out: {why}",
                      path=path, line=e.lineno, name=e.name, why=why)
            continue
        workers.append(FurlWorker(e.name, furl=e.furl, **worker_kwargs))
    return workers


class FurlWorker(Worker):
    """A Buildbot worker that attaches through its FURL instead of PB.

    ``FurlWorker(name, furl=None, session_grace=None, **kwargs)``:
    ``kwargs`` are those of Buildbot's ``Worker`` less ``password`` (a FURL
    worker has none and so can never log in over PB).  ``furl``, if given,
    must belong to this master; whether a worker may attach is decided by
    ``workers.furls`` alone (``furl`` only lets the master warn when the
    two disagree).  ``session_grace``: seconds this worker's session, and
    the build it runs, outlive a lost connection (default: furl-master.conf's
    ``session_grace``, 60; 0: a lost connection is a lost worker, as with PB).
    """

    #: what the hub checks before it hands a connection to a worker of this name
    is_furl_worker = True

    def __init__(self, name: str, furl: str | Furl | None = None,
                 session_grace: float | None = None, **kwargs: Any) -> None:
        if kwargs.pop("password", None) is not None:
            config_error(f"FurlWorker {name!r}: takes no password (its FURL is its credential)")
        self.furl_fingerprint: tuple[str, str] | None = None
        if furl is not None:
            try:
                parsed = furl if isinstance(furl, Furl) else parse_furl(str(furl))
            except ConfigError as e:
                config_error(f"FurlWorker {name!r}: {e}")
            else:
                self.furl_fingerprint = parsed.fingerprint()
        self.session_grace: float | None = None
        if session_grace is not None:
            try:
                self.session_grace = check_grace(float(session_grace))
            except (TypeError, ValueError) as e:
                config_error(f"FurlWorker {name!r}: {e}")
        self.hub: FurlHub | None = None
        super().__init__(name, None, **kwargs)

    def checkConfig(self, name: str, password: Any = None, **kwargs: Any) -> None:
        super().checkConfig(name, None, **kwargs)

    @defer.inlineCallbacks
    def reconfigServiceWithSibling(self, sibling: Any) -> Any:
        self.furl_fingerprint = sibling.furl_fingerprint
        self.session_grace = sibling.session_grace
        yield super().reconfigServiceWithSibling(sibling)
        if self.hub is not None:
            self.hub.check_worker(self)

    @defer.inlineCallbacks
    def reconfigService(self, name: str, password: Any = None, **kwargs: Any) -> Any:
        # password None: the base class then registers nothing with PB
        yield super().reconfigService(name, None, **kwargs)
        try:
            self.hub = yield FurlHub.getService(self.master)
        except Exception as e:
            if isinstance(e, ConfigErrors):
                for msg in e.errors:
                    log.error("FURL workers cannot start: {msg}", msg=msg)
            # a hub that failed to start must not be found by the next worker
            broken = self.master.namedServices.get(FurlHub.getName())
            if broken is not None:
                yield broken.disownServiceParent()
            raise
