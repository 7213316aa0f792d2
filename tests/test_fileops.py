"""fileops: the checks both ends of put/get run; tar extraction is confined."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from buildbot_furl import fileops


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_manifest_sees_content_names_and_links(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "f").write_text("1")
    m1 = fileops.manifest(str(a))
    (a / "f").write_text("2")
    m2 = fileops.manifest(str(a))
    (a / "l").symlink_to("f")
    m3 = fileops.manifest(str(a))
    assert len({m1, m2, m3}) == 3


@pytest.mark.parametrize("evil", ["../evil", "ok/../../evil"])
def test_unpack_refuses_escaping_members(tmp_path: Path, evil: str) -> None:
    tar = tmp_path / "t.tar"
    _tar(tar, [_file("fine", b"x"), _file(evil, b"pwned")])
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir()
    with pytest.raises(tarfile.TarError):
        fileops.unpack(str(tar), str(dest), "0" * 64)
    assert not dest.exists() and not (tmp_path / "evil").exists()
    assert os.listdir(dest.parent) == []  # no temp dir left either


def test_unpack_confines_absolute_member_names(tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    _tar(tar, [_file("/abs/evil", b"x")])
    dest = tmp_path / "d"
    fileops.unpack(str(tar), str(dest), "0" * 64)  # digest differs: nothing kept
    assert not dest.exists() and not Path("/abs/evil").exists()


def test_unpack_refuses_absolute_symlink(tmp_path: Path) -> None:
    link = tarfile.TarInfo("l")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    tar = tmp_path / "t.tar"
    _tar(tar, [(link, None)])
    with pytest.raises(tarfile.TarError):
        fileops.unpack(str(tar), str(tmp_path / "d"), "0" * 64)
    assert not (tmp_path / "d").exists()


def test_unpack_keeps_only_a_matching_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    want = fileops.manifest(str(src))
    tar = tmp_path / "t.tar"
    _tar(tar, [_file("f", b"data")])
    assert fileops.unpack(str(tar), str(tmp_path / "ok"), want) == want
    assert (tmp_path / "ok" / "f").read_bytes() == b"data"
    _tar(tar, [_file("f", b"DATA")])
    assert fileops.unpack(str(tar), str(tmp_path / "bad"), want) != want
    assert not (tmp_path / "bad").exists()


def test_commit_renames_only_on_match(tmp_path: Path) -> None:
    part = tmp_path / "p"
    part.write_bytes(b"abc")
    digest = fileops.sha256_file(str(part))
    assert fileops.commit(str(part), str(tmp_path / "final"), "0" * 64) == digest
    assert not part.exists() and not (tmp_path / "final").exists()
    part.write_bytes(b"abc")
    fileops.commit(str(part), str(tmp_path / "final"), digest)
    assert (tmp_path / "final").read_bytes() == b"abc"


def test_main_prints_one_line_and_uses_exit_codes(tmp_path: Path, capsys) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    assert fileops.main(["sha256", str(f)]) == 0
    assert capsys.readouterr().out.strip() == fileops.sha256_file(str(f))
    assert fileops.main(["bogus"]) == 2
    assert fileops.main(["sha256", str(tmp_path / "missing")]) == 1
