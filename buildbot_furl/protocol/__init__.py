"""The wire protocol, known to both sides and to neither in particular.

* :mod:`.interfaces` — size bounds, versions, the remote interfaces;
* :mod:`.envelope` — answers as ok/error envelopes, ``call`` and ``remote_method``;
* :mod:`.messages` — the shape of every structured message;
* :mod:`.transfer` — the read/write contract of a file transfer.

See docs/protocol.md.
"""

from buildbot_furl.protocol.envelope import (
    LOST,
    call,
    decode,
    encode,
    remote_method,
    unwrap,
)
from buildbot_furl.protocol.interfaces import (
    GET_COMMAND,
    MAX_CHUNK,
    MAX_NAME,
    MAX_PAYLOAD,
    MAX_TEXT,
    PROTOCOL_VERSIONS,
    PUT_COMMAND,
    RIAdmin,
    RIAdminStatus,
    RICommandStatus,
    RIFileReader,
    RIFileWriter,
    RIOutput,
    RIWorkerBot,
    RIWorkerLogin,
)

__all__ = [
    "GET_COMMAND", "LOST", "MAX_CHUNK", "MAX_NAME", "MAX_PAYLOAD", "MAX_TEXT",
    "PROTOCOL_VERSIONS", "PUT_COMMAND", "RIAdmin", "RIAdminStatus", "RICommandStatus",
    "RIFileReader", "RIFileWriter", "RIOutput", "RIWorkerBot", "RIWorkerLogin", "call",
    "decode", "encode", "remote_method", "unwrap",
]
