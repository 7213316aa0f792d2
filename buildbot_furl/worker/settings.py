"""furl-worker.conf: what ``buildbot.tac`` said besides where to connect.

``DIR/furl-worker.conf`` (written by ``create-worker``, read by ``start``;
no secret in it)::

    [worker]
    umask = 022        # the mode mask of files the builds create (default: inherited)
    numcpus = 8        # reported to the master (default: detected)
    maxretries = 10    # give up after this many failed connection attempts (0: never)
    metrics_listen = tcp:9102:interface=127.0.0.1   # /metrics, /healthz, /readyz (default: off)

A key left out keeps its default; options of ``start`` override the file.
"""

from __future__ import annotations

import configparser
import dataclasses
from typing import Any

from buildbot_furl.errors import ConfigError
from buildbot_furl.metrics.serve import check_listen
from buildbot_furl.privatefiles import write_private

SECTION = "worker"
KEYS = ("umask", "numcpus", "maxretries", "metrics_listen")
#: each key's option (start, restart, create-worker, settings): --KEY unless named here
OPTIONS = {"metrics_listen": "--metrics"}


def option(key: str) -> str:
    """The command-line option that sets ``key``."""
    return OPTIONS.get(key, f"--{key}")


def parse_umask(text: str | int) -> int:
    """``022`` (always octal, like buildbot.tac's ``0o22``): 0 to 0o777."""
    s = str(text).strip()
    digits = s[2:] if s[:2].lower() == "0o" else s
    if not (1 <= len(digits) <= 4 and all(c in "01234567" for c in digits)):
        raise ConfigError(f"{s!r} is not an octal mode from 000 to 777 (e.g. 022)")
    value = int(digits, 8)
    if value > 0o777:
        raise ConfigError(f"{s!r} is not an octal mode from 000 to 777 (e.g. 022)")
    return value


def _int(text: str | int, least: int, hint: str) -> int:
    s = str(text).strip()
    try:
        value = int(s, 10)
    except ValueError:
        value = least - 1
    if value < least or not s.lstrip("+").isdigit():
        raise ConfigError(f"{s!r} is not {hint}")
    return value


def parse_numcpus(text: str | int) -> int:
    return _int(text, 1, "a positive whole number")


def parse_maxretries(text: str | int) -> int:
    return _int(text, 0, "a whole number of 0 or more (0: retry forever)")


PARSERS: dict[str, Any] = {"umask": parse_umask, "numcpus": parse_numcpus,
                           "maxretries": parse_maxretries, "metrics_listen": check_listen}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The stored settings; None keeps the default (inherited umask,
    detected CPUs, retry forever, no metrics endpoint)."""

    umask: int | None = None
    numcpus: int | None = None
    maxretries: int | None = None
    #: a Twisted endpoint to serve /metrics, /healthz, /readyz on
    metrics_listen: str | None = None

    def over(self, base: Settings) -> Settings:
        """These settings where set, ``base``'s elsewhere."""
        return Settings(*(getattr(self, k) if getattr(self, k) is not None else getattr(base, k)
                          for k in KEYS))

    def to_text(self) -> str:
        lines = [f"[{SECTION}]"]
        if self.umask is not None:
            lines.append(f"umask = {self.umask:03o}")
        if self.numcpus is not None:
            lines.append(f"numcpus = {self.numcpus}")
        if self.maxretries is not None:
            lines.append(f"maxretries = {self.maxretries}")
        if self.metrics_listen is not None:
            lines.append(f"metrics_listen = {self.metrics_listen}")
        return "\n".join(lines) + "\n"


def parse_settings(text: str, where: str) -> Settings:
    """The settings in ``text`` (a furl-worker.conf); ConfigError naming ``where``."""
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        cp.read_string(text, where)
    except configparser.Error as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{where}: {first}") from None
    unknown = [s for s in cp.sections() if s != SECTION]
    if unknown:
        raise ConfigError(f"{where}: unknown section [{unknown[0]}] (only [{SECTION}])")
    if not cp.has_section(SECTION):
        return Settings()
    values: dict[str, Any] = {}
    for key, raw in cp.items(SECTION):
        if key not in PARSERS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(KEYS)})")
        try:
            values[key] = PARSERS[key](raw)
        except ConfigError as e:
            raise ConfigError(f"{where}: {key}: {e}") from None
    return Settings(**values)


def read_settings(path: str) -> Settings:
    """``path``'s settings; the defaults when it does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read(65537)
    except FileNotFoundError:
        return Settings()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > 65536:
        raise ConfigError(f"{path} is larger than a settings file can be (64 KiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    return parse_settings(text, path)


def write_settings(path: str, settings: Settings) -> None:
    """Store ``settings`` in ``path`` (atomically; 0600, as the worker's other files)."""
    write_private(path, settings.to_text())
