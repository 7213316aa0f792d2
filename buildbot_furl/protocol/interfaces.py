"""Size bounds, versions and the remote interfaces: what may cross the wire.

Structured values travel as msgpack bytes with a hard size cap (so every
argument of every remote method is bounded before it is decoded); object
references travel as foolscap references constrained to the interface
they must provide.
"""

from __future__ import annotations

from foolscap.api import RemoteInterface
from foolscap.constraint import ByteStringConstraint, IntegerConstraint
from foolscap.schema import ChoiceOf, Nothing
from foolscap.slicers.unicode import UnicodeConstraint

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)

MAX_PAYLOAD = 4 * 1024 * 1024 + 64 * 1024
MAX_CHUNK = 1024 * 1024
#: update bytes a worker leaves unacknowledged per command before it pauses the
#: command's output (it may overshoot by what the pipes already held)
UPDATE_WINDOW = 4 * 1024 * 1024
#: update bytes the master holds unanswered per command before it refuses more:
#: far above what an honest worker sends, well below what fills its memory
UPDATES_IN_FLIGHT = 4 * UPDATE_WINDOW
MAX_NAME = 200  # characters
MAX_TEXT = 64 * 1024  # characters
Payload = ByteStringConstraint(maxLength=MAX_PAYLOAD)
Chunk = ByteStringConstraint(maxLength=MAX_CHUNK)
Name = UnicodeConstraint(maxLength=MAX_NAME)
Text = UnicodeConstraint(maxLength=MAX_TEXT)
Seq = IntegerConstraint(maxBytes=8)
Offset = IntegerConstraint(maxBytes=8)  # a position in a transferred byte stream

#: the worker's confined transfer commands for standalone put/get (beside
#: buildbot-worker's own commands; see buildbot_furl.worker.transfers)
PUT_COMMAND = "furl.put"
GET_COMMAND = "furl.get"


class RIFileWriter(RemoteInterface):
    """Master side of an upload (worker -> master)."""

    __remote_name__ = "buildbot_furl.RIFileWriter.v1"

    def write(offset=Offset, data=Chunk):
        """Bytes at ``offset`` of the stream; a replay of bytes already
        written (after a reattach) is acknowledged, not written twice."""
        return Payload

    def utime(times=Payload):
        return Payload

    def unpack():
        return Payload

    def close():
        return Payload


class RIFileReader(RemoteInterface):
    """Master side of a download (master -> worker)."""

    __remote_name__ = "buildbot_furl.RIFileReader.v1"

    def read(offset=Offset, length=Seq):
        """Up to ``length`` bytes from ``offset``: the next ones, or (after a
        reattach) ones sent recently whose answer was lost."""
        return Payload

    def close():
        return Payload


class RICommandStatus(RemoteInterface):
    """Master side of one running command: receives its updates."""

    __remote_name__ = "buildbot_furl.RICommandStatus.v1"

    def update(seq=Seq, batch=Payload):
        """Apply a batch of updates; answers the highest seq applied."""
        return Payload

    def complete(seq=Seq, failure=Payload):
        return Payload


class RIWorkerBot(RemoteInterface):
    """Worker side: Buildbot's master/worker API, driven by the master."""

    __remote_name__ = "buildbot_furl.RIWorkerBot.v1"

    def print(message=Text):
        return Payload

    def ping():
        return Payload

    def getWorkerInfo():
        return Payload

    def setBuilderList(builders=Payload):
        return Payload

    def startBuild(builder=Name):
        return Payload

    def startCommand(
        builder=Name,
        command_id=Name,
        command=Name,
        args=Payload,
        status=RICommandStatus,
        writer=ChoiceOf(Nothing(), RIFileWriter),
        reader=ChoiceOf(Nothing(), RIFileReader),
    ):
        return Payload

    def interruptCommand(builder=Name, command_id=Name, why=Text):
        return Payload

    def shutdown():
        return Payload

    def resumeCommand(
        builder=Name,
        command_id=Name,
        status=RICommandStatus,
        writer=ChoiceOf(Nothing(), RIFileWriter),
        reader=ChoiceOf(Nothing(), RIFileReader),
        state=Payload,
    ):
        """After a reattach: the command's master-side objects again, and
        how far the master got (``messages.ResumeState``); answers whether
        the worker still has the command."""
        return Payload


class RIWorkerLogin(RemoteInterface):
    """Master side, one per worker, published at that worker's FURL."""

    __remote_name__ = "buildbot_furl.RIWorkerLogin.v1"

    def attach(bot=RIWorkerBot, info=Payload):
        return Payload

    def leave(session=Payload):
        """The worker stops on purpose: end its session now (``session``
        proves it: ``{"session": id, "secret": ...}``)."""
        return Payload

    def drain(session=Payload):
        """A graceful stop, asked by the worker's admin: start no new work
        on this worker, and call its ``shutdown`` once what runs has ended.
        Answers ``{"running": N}`` (an older master: a Violation)."""
        return Payload


class RIOutput(RemoteInterface):
    """The admin CLI's side of a standalone run: receives output."""

    __remote_name__ = "buildbot_furl.RIOutput.v1"

    def output(batch=Payload):
        return Payload


class RIAdminStatus(RemoteInterface):
    """What any master publishes at private/admin.furl: status and workers.
    A Buildbot master publishes only this (its builders own the workers)."""

    __remote_name__ = "buildbot_furl.RIAdminStatus.v1"

    def status():
        return Payload

    def listWorkers():
        return Payload

    def invite(request=Payload):
        """Hold an invite open for a worker: a one-time wormhole code."""
        return Payload

    def cancelInvite(name=Name):
        return Payload

    def listInvites():
        return Payload


class RIAdmin(RemoteInterface):
    """What a standalone master publishes at private/admin.furl: status and
    workers too, and running commands and moving files on its workers."""

    __remote_name__ = "buildbot_furl.RIAdmin.v1"

    def status():
        return Payload

    def listWorkers():
        return Payload

    def run(worker=Name, request=Payload, out=RIOutput):
        return Payload

    def interrupt(run_id=Name):
        return Payload

    def put(worker=Name, request=Payload, source=RIFileReader):
        return Payload

    def get(worker=Name, request=Payload, sink=RIFileWriter):
        return Payload

    def drain(worker=Name):
        """Start no new command on ``worker``; stop it once its running ones end."""
        return Payload

    def invite(request=Payload):
        """Hold an invite open for a worker: a one-time wormhole code."""
        return Payload

    def cancelInvite(name=Name):
        return Payload

    def listInvites():
        return Payload

