"""confine: paths resolved beneath a directory, by descriptor, symlinks included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildbot_furl.confine import Root, open_file_beneath
from buildbot_furl.errors import PathRefused


def _where(res) -> str:  # noqa: ANN001 - a Resolved
    """The real path a Resolved names (through its directory descriptor)."""
    d = os.readlink(f"/proc/self/fd/{res.dir_fd}")
    return os.path.join(d, res.name) if res.name else d


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "sub" / "deep").mkdir(parents=True)
    (r / "sub" / "f.txt").write_text("f")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    return r


def test_plain_paths_and_inner_symlinks_resolve(root: Path) -> None:
    (root / "in").symlink_to("sub/deep")
    (root / "abs-in").symlink_to(root / "sub")
    (root / "sub" / "up").symlink_to("..")
    with Root(str(root)) as r:
        for path, want in [("sub/f.txt", root / "sub" / "f.txt"),
                           ("in", root / "sub" / "deep"),
                           ("in/new.txt", root / "sub" / "deep" / "new.txt"),
                           ("abs-in/f.txt", root / "sub" / "f.txt"),
                           ("sub/up/sub/./f.txt", root / "sub" / "f.txt"),
                           ("sub/deep/../f.txt", root / "sub" / "f.txt")]:
            with r.resolve(path) as res:
                assert _where(res) == str(want), path


@pytest.mark.parametrize("make, path", [
    (lambda r, o: None, "../outside/secret"),
    (lambda r, o: None, "sub/../../outside/secret"),
    (lambda r, o: (r / "lnk").symlink_to(o), "lnk/secret"),
    (lambda r, o: (r / "lnk").symlink_to(o / "secret"), "lnk"),
    (lambda r, o: (r / "lnk").symlink_to("../outside"), "lnk/new"),
    (lambda r, o: (r / "sub" / "up").symlink_to("../.."), "sub/up/outside/secret"),
    (lambda r, o: ((r / "b").symlink_to("."), (r / "a").symlink_to("b/..")), "a/outside"),
    (lambda r, o: (r / "loop").symlink_to("loop"), "loop/x"),
])
def test_escapes_are_refused(root: Path, make, path: str) -> None:  # noqa: ANN001
    make(root, root.parent / "outside")
    with Root(str(root)) as r, pytest.raises(PathRefused):
        r.resolve(path, create_dirs=True)
    assert sorted(os.listdir(root.parent / "outside")) == ["secret"]


def test_absolute_paths_only_inside(root: Path) -> None:
    with Root(str(root)) as r:
        with r.resolve(str(root / "sub" / "f.txt")) as res:
            assert _where(res) == str(root / "sub" / "f.txt")
        with pytest.raises(PathRefused):
            r.resolve("/etc/passwd")


def test_create_dirs_makes_missing_directories_beneath(root: Path) -> None:
    with Root(str(root)) as r, r.resolve("new/a/b/file", create_dirs=True) as res:
        assert _where(res) == str(root / "new" / "a" / "b" / "file")
    assert (root / "new" / "a" / "b").is_dir()
    with Root(str(root)) as r, pytest.raises(FileNotFoundError):
        r.resolve("missing/file")


def test_symlink_swapped_in_after_the_walk_is_never_followed(root: Path) -> None:
    outside = root.parent / "outside"
    with Root(str(root)) as r:
        # the final name becomes a symlink: opening it is refused
        res = r.resolve("sub/target")
        (root / "sub" / "target").symlink_to(outside / "secret")
        with res, pytest.raises(PathRefused):
            res.open(os.O_RDONLY)
        # a directory on the way is swapped for a symlink: the write lands in
        # the directory that was walked, never outside
        res = r.resolve("sub/deep/new.txt")
        (root / "sub" / "deep").rename(root / "sub" / "deep.old")
        (root / "sub" / "deep").symlink_to(outside)
        with res:
            fd = res.open(os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
    assert (root / "sub" / "deep.old" / "new.txt").exists()
    assert sorted(os.listdir(outside)) == ["secret"]


NAMES = st.sampled_from(["a", "b", "c", ".", ".."])
TARGETS = st.lists(NAMES, min_size=1, max_size=4).map("/".join)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(links=st.dictionaries(st.sampled_from(["a", "b", "c", "d/e"]), TARGETS, max_size=4),
       path=st.lists(NAMES, min_size=1, max_size=6).map("/".join))
def test_resolution_never_leaves_the_root(tmp_path_factory: pytest.TempPathFactory,
                                          links: dict[str, str], path: str) -> None:
    """Whatever symlinks a tree holds, a resolved path is beneath the root;
    and a path the kernel resolves beneath the root (to something that
    exists) is not refused."""
    base = tmp_path_factory.mktemp("prop")
    root = base / "r" / "root"
    (root / "d").mkdir(parents=True)
    for name, target in links.items():
        (root / name).symlink_to(target)
    real_root = str(root.resolve())
    try:
        with Root(str(root)) as r, r.resolve(path) as res:
            where = os.path.realpath(_where(res))
            assert where == real_root or where.startswith(real_root + "/")
    except PathRefused:
        kernel = os.path.realpath(root / path)
        if os.path.exists(root / path):
            assert not (kernel == real_root or kernel.startswith(real_root + "/"))
    except (FileNotFoundError, NotADirectoryError):
        pass


def test_a_component_longer_than_the_system_allows_is_refused(tmp_path: Path) -> None:
    """ENAMETOOLONG is a refused path, not an OSError (found by fuzzing archives)."""
    from buildbot_furl import confine

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(PathRefused, match="too long"):
            confine._readlink(fd, "x" * 300)
    finally:
        os.close(fd)


def test_open_file_beneath_checks_where_the_walk_ends(tmp_path: Path) -> None:
    """What a logfile open uses: links are followed as the kernel would, from
    one allowed root into another too, but what is opened must lie in one."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for d in (a, b, out):
        d.mkdir()
    (b / "log").write_text("in b\n")
    (out / "secret").write_text("no\n")
    (a / "to-b").symlink_to(b / "log")
    (a / "up").symlink_to("x/../../out/secret")
    (a / "x").mkdir()
    os.mkfifo(a / "fifo")
    roots = (str(a), str(b))
    fd = open_file_beneath(str(a / "to-b"), roots)
    try:
        assert os.read(fd, 100) == b"in b\n"
    finally:
        os.close(fd)
    for name in ("up", "fifo", "x"):
        with pytest.raises(PathRefused):
            open_file_beneath(str(a / name), roots)
    with pytest.raises(FileNotFoundError):
        open_file_beneath(str(a / "missing"), roots)
