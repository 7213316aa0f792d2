"""The cluster directory: which master of a cluster holds which worker.

Every master of a multi-master cluster writes a heartbeat record of its own,
``CLUSTER_DIR/<master id>.json`` (0600, atomically), every few seconds and
soon after a worker attaches or detaches (master/heartbeat.py); it removes
it at a clean stop.  ``furl-master list-workers --cluster`` reads them all
(files only, no network) and says, for each worker, which live master holds
it.  A record older than :data:`STALE_FACTOR` times its own interval is a
master that is gone: its workers are not held by it any more.

The record is defined here, once (:class:`MasterRecord`), since the daemon
writes it and the CLI reads it.  It holds no secret: master and worker names,
addresses and times, never a FURL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

from buildbot_furl.errors import FurlError

#: the record's format (a record of another format is refused)
FORMAT = 1
#: seconds between two heartbeats, unless furl-master.conf says otherwise
DEFAULT_HEARTBEAT = 10.0
#: a record older than this many of its own intervals is a master that is gone
STALE_FACTOR = 3
#: the default cluster directory's name, beside the shared workers.furls
DEFAULT_NAME = "furl-cluster"
#: what ``cluster_dir`` says to have none, even beside a linked workers.furls
OFF = "off"
#: what a record may weigh (about 150 bytes per attached worker)
MAX_SIZE = 16 * 1024 * 1024
SUFFIX = ".json"
#: states of an attached worker, as the record says them
HELD_STATES = ("connected", "draining")
WAITING_STATE = "reconnecting"  # its link is gone, its session waits (grace)


class ClusterRecordError(FurlError):
    """A file of the cluster directory is not a master's heartbeat record."""


def master_id(name: str) -> str:
    """The record's file name stem: a digest of the master's name (safe as a
    file name whatever the name holds; the same after a restart)."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class HeldWorker:
    """One worker a master holds a session of."""

    name: str
    since: float  # when its connection attached (wall time)
    peer: str  # its address, as the master sees it
    state: str = "connected"  # connected, draining, reconnecting

    @property
    def held(self) -> bool:
        """Attached now (a reconnecting one only waits for its worker)."""
        return self.state in HELD_STATES


@dataclasses.dataclass(frozen=True)
class MasterRecord:
    """One write of a master's heartbeat record."""

    master_id: str
    name: str  # Buildbot's master name, or hostname:basedir
    pid: int
    location: tuple[str, ...]  # what workers dial
    port: str  # what this master listens on
    updated: float  # wall time of the write
    interval: float  # seconds until the next one, at the latest
    workers: tuple[HeldWorker, ...] = ()

    def age(self, now: float) -> float:
        return now - self.updated

    def stale(self, now: float) -> bool:
        """Gone: no heartbeat for :data:`STALE_FACTOR` intervals."""
        return self.age(now) > STALE_FACTOR * self.interval

    def to_wire(self) -> dict[str, Any]:
        return {"format": FORMAT, "master_id": self.master_id, "name": self.name,
                "pid": self.pid, "location": list(self.location), "port": self.port,
                "updated": self.updated, "interval": self.interval,
                "workers": [dataclasses.asdict(w) for w in self.workers]}

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), indent=1) + "\n"

    @classmethod
    def from_wire(cls, v: Any) -> MasterRecord:
        """ClusterRecordError (saying what is wrong) for anything but a record."""
        if not isinstance(v, dict):
            raise ClusterRecordError("not a map")
        if v.get("format") != FORMAT:
            raise ClusterRecordError(f"'format' is {v.get('format')!r}, not {FORMAT}")
        location = v.get("location")
        if not isinstance(location, list) or not all(isinstance(h, str) for h in location):
            raise ClusterRecordError("'location' is not a list of addresses")
        pid = v.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ClusterRecordError("'pid' is not a process id")
        interval = _number(v, "interval")
        if interval <= 0:
            raise ClusterRecordError("'interval' is not a positive number")
        workers = v.get("workers")
        if not isinstance(workers, list):
            raise ClusterRecordError("'workers' is not a list")
        held = []
        for w in workers:
            if not isinstance(w, dict):
                raise ClusterRecordError("a worker is not a map")
            state = _text(w, "state")
            if state not in (*HELD_STATES, WAITING_STATE):
                raise ClusterRecordError(f"a worker's 'state' is {state[:40]!r}")
            held.append(HeldWorker(_text(w, "name"), _number(w, "since"), _text(w, "peer"),
                                   state))
        return cls(_text(v, "master_id"), _text(v, "name"), pid, tuple(location),
                   _text(v, "port"), _number(v, "updated"), interval, tuple(held))


def _text(v: dict[str, Any], key: str) -> str:
    value = v.get(key)
    if not isinstance(value, str):
        raise ClusterRecordError(f"{key!r} is {'missing' if key not in v else 'not text'}")
    return value


def _number(v: dict[str, Any], key: str) -> float:
    value = v.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise ClusterRecordError(f"{key!r} is {'missing' if key not in v else 'not a number'}")
    return float(value)


def read_record(path: str) -> MasterRecord:
    """One record; ClusterRecordError naming the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_SIZE + 1)
    except (OSError, UnicodeError) as e:
        raise ClusterRecordError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    try:
        if len(text) > MAX_SIZE:
            raise ClusterRecordError(f"larger than {MAX_SIZE} bytes")
        try:
            value = json.loads(text)
        except ValueError:
            raise ClusterRecordError("not JSON") from None
        record = MasterRecord.from_wire(value)
        if record.master_id + SUFFIX != os.path.basename(path):
            raise ClusterRecordError("its master_id is not its file's name")
    except ClusterRecordError as e:
        raise ClusterRecordError(f"{path} is not a master's heartbeat record: {e}") from None
    return record


@dataclasses.dataclass(frozen=True)
class ClusterView:
    """What the cluster directory says at ``now``."""

    directory: str
    now: float
    records: tuple[MasterRecord, ...]
    problems: tuple[str, ...]  # one sentence per file that is not a record

    @property
    def live(self) -> tuple[MasterRecord, ...]:
        return tuple(r for r in self.records if not r.stale(self.now))

    @property
    def gone(self) -> tuple[MasterRecord, ...]:
        return tuple(r for r in self.records if r.stale(self.now))

    def holders(self, worker: str) -> list[tuple[MasterRecord, HeldWorker]]:
        """The live masters the worker is attached to (two: it should not happen)."""
        return [(r, w) for r in self.live for w in r.workers if w.name == worker and w.held]

    def waiting(self, worker: str) -> list[MasterRecord]:
        """The live masters keeping a session of the worker for it to come back."""
        return [r for r in self.live for w in r.workers
                if w.name == worker and w.state == WAITING_STATE]

    def held_names(self) -> set[str]:
        return {w.name for r in self.live for w in r.workers if w.held}


def read_dir(directory: str, now: float) -> ClusterView:
    """Every record of ``directory``; a file that is not one is a problem
    (a sentence), not an error.  A missing directory has no records."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise ClusterRecordError(f"cannot read the cluster directory {directory}: "
                                 f"{e.strerror or e}") from None
    records, problems = [], []
    for n in names:
        if not n.endswith(SUFFIX) or n.startswith("."):  # (a write's temp file)
            continue
        try:
            records.append(read_record(os.path.join(directory, n)))
        except ClusterRecordError as e:
            problems.append(str(e))
    records.sort(key=lambda r: r.name)
    return ClusterView(directory, now, tuple(records), tuple(problems))


def resolve_dir(setting: str | None, basedir: str, furls_path: str) -> str | None:
    """Where the cluster directory is: ``setting`` (relative to ``basedir``;
    ``off``: none); by default, when workers.furls is a symlink (the way
    masters share it), ``furl-cluster/`` beside the file it points to; else
    none (a lone master)."""
    if setting:
        if setting.strip().lower() == OFF:
            return None
        return os.path.abspath(os.path.join(basedir, os.path.expanduser(setting.strip())))
    if os.path.islink(furls_path):
        return os.path.join(os.path.dirname(os.path.realpath(furls_path)), DEFAULT_NAME)
    return None


def check_heartbeat(value: float) -> float:
    """A heartbeat interval: 0.5 s to an hour."""
    if not 0.5 <= value <= 3600:
        raise ValueError("cluster_heartbeat must be between 0.5 and 3600 seconds")
    return float(value)
