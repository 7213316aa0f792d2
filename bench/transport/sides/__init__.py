"""The master side of each transport, by key (one module per transport)."""

from __future__ import annotations

from bench.transport.sides.base import Side
from bench.transport.sides.furl import FurlSide
from bench.transport.sides.pb import PbNoDelaySide, PbSide, PbTlsNoDelaySide, PbTlsSide
from bench.transport.sides.tls import TlsSide

#: in the default order of the columns
SIDES: dict[str, type[Side]] = {cls.key: cls for cls in (
    FurlSide, PbSide, PbTlsSide, TlsSide, PbNoDelaySide, PbTlsNoDelaySide)}
TRANSPORTS = {key: cls.label for key, cls in SIDES.items()}
DEFAULT_TRANSPORTS = ",".join(SIDES)
