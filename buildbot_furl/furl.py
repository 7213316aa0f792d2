"""The FURL value: ``pb://TUBID@HINTS/SWISSNUM``.

TUBID pins the master's TLS key, HINTS say where to dial, SWISSNUM is the
secret that is the permission.  Nothing here ever shows the swissnum: the
repr hides it and parse errors describe the problem without echoing it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import secrets

from buildbot_furl.errors import ConfigError

TUBID_RE = re.compile(r"^[a-z2-7]{32}$")
SWISSNUM_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
HINT_RE = re.compile(r"^[^\s,/@]+$")
FURL_RE = re.compile(r"^pb://([^@/\s]+)@([^/\s]*)/([^/\s]+)$")


def new_swissnum() -> str:
    """An unguessable 160-bit swissnum, base32 like foolscap's own."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").lower().rstrip("=")


def secret_digest(swissnum: str) -> str:
    """A stand-in for a swissnum that may be kept and compared (never the secret)."""
    return hashlib.sha256(swissnum.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Furl:
    """A parsed ``pb://TUBID@HINTS/SWISSNUM``; ``str()`` gives it back."""

    tubid: str
    hints: tuple[str, ...]
    swissnum: str

    def __str__(self) -> str:
        return f"pb://{self.tubid}@{','.join(self.hints)}/{self.swissnum}"

    def fingerprint(self) -> tuple[str, str]:
        """(TUBID, digest of the secret): what may be kept and compared."""
        return (self.tubid, secret_digest(self.swissnum))

    def __repr__(self) -> str:  # never show the swissnum by accident
        return f"Furl(tubid={self.tubid!r}, hints={self.hints!r}, swissnum=<secret>)"


def parse_furl(text: str) -> Furl:
    """Parse a FURL; raise ConfigError with a message that omits the secret."""
    text = text.strip()
    m = FURL_RE.match(text)
    if not m:
        raise ConfigError("malformed FURL (expected pb://TUBID@tcp:HOST:PORT/SWISSNUM)")
    tubid, hints, swissnum = m.groups()
    if not TUBID_RE.match(tubid):
        raise ConfigError("malformed FURL: the TUBID is not 32 base32 characters")
    hint_list = tuple(h for h in hints.split(",")) if hints else ()
    if not hint_list or any(not HINT_RE.match(h) for h in hint_list):
        raise ConfigError("malformed FURL: it has no usable connection hint (tcp:HOST:PORT)")
    if not SWISSNUM_RE.match(swissnum):
        raise ConfigError("malformed FURL: the secret part after the last '/' is not valid")
    return Furl(tubid, hint_list, swissnum)
