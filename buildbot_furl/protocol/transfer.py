"""The read/write contract of a file transfer, defined once for both ends.

A download (master -> worker) is read by offset: the worker keeps up to
``window`` reads of ``chunk`` bytes in flight ahead of what it has
received (:meth:`Contract.next_reads`), and the master answers each from
its source (:meth:`Contract.check_read` says which reads it serves).  An
upload (worker -> master) is written by offset: the worker sends chunks of
at most ``chunk`` bytes one after another, ``window`` of them
unacknowledged at most, and sends again from what the master acknowledged
after a reattach; the master takes each byte once (:meth:`Contract.check_write`).

What a read answers:

* at or past the end of the source: nothing (``b""``), never an error:
  a read-ahead asks past the end of every file whose size is not a
  multiple of its window;
* ahead of what the master has read (within ``ahead`` bytes): the master
  reads its source forward to it and keeps the bytes in between for the
  reads that ask for them;
* behind it (within ``replay`` bytes: reads whose answers a cut lost): the
  same bytes again.

What a write does: bytes already written are skipped (a replay), the rest
are appended.  Only what no well-behaved peer sends is a violation (a
:class:`TransferViolation`, which the master counts against the worker):
a read more than ``ahead`` past the master's position or more than
``replay`` behind it, a write that leaves a gap, a write past the
transfer's announced size.  See docs/protocol.md, "Transfers".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from buildbot_furl.errors import BadRequest
from buildbot_furl.protocol.interfaces import MAX_CHUNK


class TransferViolation(BadRequest):
    """A read or write no well-behaved peer makes (counted as a protocol
    violation); it crosses the wire as the BadRequest it is."""

    def to_wire(self) -> list[Any]:
        return ["error", BadRequest.__name__, {"message": self.message, **self.fields}]


@dataclasses.dataclass(frozen=True)
class Contract:
    """The bounds of one transfer: ``chunk`` bytes a call, ``window`` calls in flight."""

    chunk: int = MAX_CHUNK
    window: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.chunk <= MAX_CHUNK or self.window < 1:
            raise ValueError("a transfer needs 1 <= chunk <= MAX_CHUNK and a window of 1 or more")

    @property
    def ahead(self) -> int:
        """How far past what it has received a reader may ask (exclusive)."""
        return self.window * self.chunk

    @property
    def replay(self) -> int:
        """How many of the last bytes read the source keeps to answer again
        (a cut loses at most ``ahead`` of them; the source may read up to
        ``ahead + chunk`` past the reader's position)."""
        return 2 * self.ahead

    # -- the reader's side (the worker) ------------------------------------------
    def next_reads(self, received: int, requested: int) -> Iterator[int]:
        """Offsets a reader that has ``received`` bytes and has asked up to
        ``requested`` may ask now, ``chunk`` bytes each."""
        offset = max(requested, received)
        while offset < received + self.ahead:
            yield offset
            offset += self.chunk

    # -- the source's side (the master) ------------------------------------------
    def read_length(self, length: int) -> int:
        """A read's length, checked and bounded to one chunk."""
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise BadRequest("read wants a non-negative length")
        return min(length, self.chunk)

    def check_read(self, offset: int, position: int, kept: int) -> None:
        """Whether a read at ``offset`` is one a well-behaved reader makes,
        given the source's ``position`` (bytes it has read, however many of
        them were answered) and the ``kept`` last ones it can answer again."""
        check_offset(offset)
        if offset >= position + self.ahead:
            raise TransferViolation(f"a read at {offset} that skips bytes after {position}")
        if offset < position - kept:
            raise TransferViolation(f"a read at {offset}, too far back to be served again")

    def check_write(self, offset: int, size: int, written: int, limit: int | None) -> int:
        """How many of ``size`` bytes written at ``offset`` were written
        already (and are skipped); raises TransferViolation for a gap or for
        bytes past ``limit`` (the transfer's announced size)."""
        check_offset(offset)
        if size > self.chunk:
            raise TransferViolation(f"a write of {size} bytes (at most {self.chunk})")
        if offset > written:
            raise TransferViolation(f"a write at {offset} that leaves a gap after byte "
                                    f"{written}")
        if limit is not None and offset + size > max(written, limit):
            raise TransferViolation(f"an upload past its announced size ({limit} bytes)")
        return min(written - offset, size)


def check_offset(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest("an offset must be a non-negative integer")
    return value


#: the contract both ends use
CONTRACT = Contract()
