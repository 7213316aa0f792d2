"""Hardened foolscap Tubs, shared by master, worker, plugin and CLI."""

from __future__ import annotations

import os

from foolscap.api import Tub

from buildbot_furl.errors import ConfigError
from buildbot_furl.furls import check_private_mode, write_private

DEFAULT_KEEPALIVE = 30
DEFAULT_DISCONNECT_TIMEOUT = 90


def make_tub(
    cert_file: str | None = None,
    keepalive: int = DEFAULT_KEEPALIVE,
    disconnect_timeout: int = DEFAULT_DISCONNECT_TIMEOUT,
) -> Tub:
    """A Tub that leaks no tracebacks and accepts no third-party references.

    With ``cert_file`` the Tub's key is persistent (created 0600 on first
    use and refused when group or others can read it); that key is what
    a FURL's TUBID pins.
    """
    cert = None
    if cert_file is not None:
        check_private_mode(cert_file)
        if os.path.exists(cert_file):
            try:
                with open(cert_file, "rb") as f:
                    cert = f.read()
            except OSError as e:
                raise ConfigError(f"cannot read {cert_file}: {e.strerror}") from None
    try:
        tub = Tub(certData=cert) if cert else Tub()
    except Exception:
        raise ConfigError(f"{cert_file}: not a valid Tub key/certificate") from None
    if cert_file is not None and cert is None:
        write_private(cert_file, tub.getCertData())
    tub.unsafeTracebacks = False
    tub.setOption("expose-remote-exception-types", False)
    tub.setOption("accept-gifts", False)
    tub.setOption("logLocalFailures", False)
    tub.setOption("logRemoteFailures", False)
    if keepalive:
        tub.setOption("keepaliveTimeout", keepalive)
    if disconnect_timeout:
        tub.setOption("disconnectTimeout", disconnect_timeout)
    return tub


def tubid_of(cert_file: str) -> str:
    """The TUBID a persistent key gives, without starting anything."""
    return make_tub(cert_file).getTubID()
