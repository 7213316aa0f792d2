"""tree: directory trees as tar streams and manifests, read and written by
descriptor; unpacking refuses what would leave the destination."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from buildbot_furl import tree
from buildbot_furl.errors import BadRequest, PathRefused


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _unpack(tmp: Path, src: io.BytesIO, name: str = "dest") -> str:
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return tree.unpack(src, fd, name)
    finally:
        os.close(fd)


def test_manifest_sees_content_names_and_links(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "f").write_text("1")
    m1 = tree.manifest_path(str(a))
    (a / "f").write_text("2")
    m2 = tree.manifest_path(str(a))
    (a / "l").symlink_to("f")
    m3 = tree.manifest_path(str(a))
    (a / "l").unlink()
    (a / "l").symlink_to("g")
    m4 = tree.manifest_path(str(a))
    (a / "e").mkdir()
    m5 = tree.manifest_path(str(a))
    assert len({m1, m2, m3, m4, m5}) == 5


def test_pack_then_unpack_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a" / "x.txt").write_text("hello\n")
    (src / "a" / "b" / "blob").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (src / "a" / "link").symlink_to("x.txt")
    (src / "a" / "run.sh").write_text("#!/bin/sh\n")
    (src / "a" / "run.sh").chmod(0o755)
    os.mkfifo(src / "fifo")  # not a file: left out, on both sides
    buf = io.BytesIO()
    sent = tree.pack_path(str(src), buf)
    buf.seek(0)
    got = _unpack(tmp_path, buf)
    assert got == sent == tree.manifest_path(str(src))
    dest = tmp_path / "dest"
    assert (dest / "a" / "link").is_symlink() and os.readlink(dest / "a" / "link") == "x.txt"
    assert os.access(dest / "a" / "run.sh", os.X_OK)
    assert not (dest / "fifo").exists()


@pytest.mark.parametrize("evil", ["../evil", "ok/../../evil", "/abs/evil"])
def test_unpack_refuses_escaping_members(tmp_path: Path, evil: str) -> None:
    src = _tar([_file("fine", b"x"), _file(evil, b"pwned")])
    with pytest.raises(PathRefused):
        _unpack(tmp_path, src)
    assert os.listdir(tmp_path) == []  # nothing left, not even the part written
    assert not Path("/abs/evil").exists()


@pytest.mark.parametrize("members", [
    [_link("l", "/etc/passwd")],                        # absolute
    [_link("l", "../..")],                              # up and out
    [_link("b", "."), _link("a", "b/..")],              # out only through another link
    [_link("l", "."), _file("l/x", b"through a link")],  # a member through a link
    # dangling while unpacked, out once a directory 'x' appears (issue 16)
    [_dir("lf"), _link("lf/link", "x/../../../secret")],
    [_link("l", "x/../.."), _dir("x")],                 # the directory comes later
    [_dir("a"), _link("a/l", "x/../y")],                # inside, until 'x' is a link
])
def test_unpack_refuses_links_out_or_through(tmp_path: Path, members: list) -> None:
    with pytest.raises(PathRefused):
        _unpack(tmp_path, _tar(members))
    assert os.listdir(tmp_path) == []


def test_a_dangling_link_cannot_lead_out_once_its_directories_appear(tmp_path: Path) -> None:
    """The issue-16 trick at this level: a link that dangles when unpacked
    is refused, so no later mkdir (nor a later tree below it, whose own
    links climb) can make it point outside."""
    (tmp_path / "secret").write_text("secret\n")
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(PathRefused, match="'..' after a name"):
        _unpack(work, _tar([_link("link", "x/../../secret")]), "lf")
    assert os.listdir(work) == []
    # across two transfers: the first tree's link names 'a/b/c/x' before it
    # exists; the second, put at lf/a/b, makes c/x a link that climbs two levels
    first = _tar([_link("l", "a/b/c/x/../../../../../secret")])
    with pytest.raises(PathRefused):
        _unpack(work, first, "lf")
    assert os.listdir(work) == []


def test_links_that_stay_inside_are_kept(tmp_path: Path) -> None:
    members = [_dir("a"), _dir("a/b"), _file("top", b"t"), _link("a/b/up", "../../top"),
               _link("down", "a/b/./up"), _link("a/self", ".."), _link("dangling", "a/none")]
    _unpack(tmp_path, _tar(members))
    dest = tmp_path / "dest"
    assert (dest / "down").read_text() == "t"
    assert os.readlink(dest / "a" / "self") == ".."
    assert os.readlink(dest / "dangling") == "a/none"


def test_unpack_refuses_devices_hardlinks_and_garbage(tmp_path: Path) -> None:
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    hard = tarfile.TarInfo("hard")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "fine"
    for members in ([(dev, None)], [_file("fine", b"x"), (hard, None)]):
        with pytest.raises(PathRefused):
            _unpack(tmp_path, _tar(members))
    with pytest.raises(BadRequest):
        _unpack(tmp_path, io.BytesIO(b"this is not a tar archive" * 100))
    assert os.listdir(tmp_path) == []


def test_unpack_strips_setuid_and_world_write(tmp_path: Path) -> None:
    info, data = _file("f", b"x")
    info.mode = 0o6777
    _unpack(tmp_path, _tar([(info, data)]))
    assert (tmp_path / "dest" / "f").stat().st_mode & 0o7777 == 0o755


def test_pack_fails_on_a_file_that_shrinks_while_read(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "shrinks"
    f.write_bytes(b"x" * 100)
    orig = tree._HashingReader.read

    def read_after_shrink(self: tree._HashingReader, n: int = -1) -> bytes:
        f.write_bytes(b"x" * 5)  # after its size was taken for the tar header
        return orig(self, n)

    monkeypatch.setattr(tree._HashingReader, "read", read_after_shrink)
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BadRequest, match="changed while it was being read"):
            tree.pack(fd, io.BytesIO())
    finally:
        os.close(fd)


def test_pack_stops_at_its_limit(tmp_path: Path) -> None:
    """A tree larger than the limit is not packed whole to find out."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(256 * 1024))
    out = io.BytesIO()
    with pytest.raises(tree.TooLarge):
        _pack_limited(src, out, 300 * 1024)
    assert len(out.getvalue()) <= 300 * 1024
    whole = io.BytesIO()
    _pack_limited(src, whole, 4 << 20)  # under the limit: as without one
    assert len(whole.getvalue()) > 2 << 20


def _pack_limited(src: Path, out: io.BytesIO, limit: int) -> str:
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return tree.pack(fd, out, limit)
    finally:
        os.close(fd)
