"""workers.furls: parsing, clean errors, atomic locked writes, file modes."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildbot_furl import furlsfile
from buildbot_furl.errors import ConfigError
from buildbot_furl.furl import new_swissnum, parse_furl

TUBID = "a" * 32
OTHER = "b" * 32


def furl(swiss: str | None = None, tubid: str = TUBID) -> str:
    return f"pb://{tubid}@tcp:127.0.0.1:9990/{swiss or new_swissnum()}"


def test_parse_keeps_comments_blank_lines_and_order() -> None:
    a, b = furl(), furl()
    text = f"# header\n\nw1 {a}  # first one\n   # indented comment\nw2 {b}\n"
    ff = furlsfile.parse(text, "x.furls", TUBID)
    assert [e.name for e in ff.entries] == ["w1", "w2"]
    assert ff.get("w1").comment == "first one"
    assert str(ff.get("w2").furl) == b
    assert ff.render() == text


@pytest.mark.parametrize("line,needle", [
    ("w1", "expected 'NAME FURL"),
    ("w1 a b", "found 3 field"),
    ("bad/name " + furl("s" * 32), "invalid worker name"),
    ("w1 http://example.org/", "malformed FURL"),
    ("w1 pb://short@tcp:h:1/abcdefghijklmnopqrst", "TUBID"),
    ("w1 pb://" + TUBID + "@/abcdefghijklmnopqrst", "connection hint"),
    ("w1 " + furl("t" * 32, tubid=OTHER), "another master"),
])
def test_errors_name_file_and_line(line: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        furlsfile.parse(f"# c\n{line}\n", "workers.furls", TUBID)
    msg = str(ei.value)
    assert msg.startswith("workers.furls:2: ")
    assert needle in msg


def test_errors_never_echo_the_secret() -> None:
    secret = new_swissnum()
    for bad in (f"w1 pb://{OTHER}@tcp:h:1/{secret}", f"w1 pb://xx@tcp:h:1/{secret}",
                f"w!1 pb://{TUBID}@tcp:h:1/{secret}"):
        with pytest.raises(ConfigError) as ei:
            furlsfile.parse(bad + "\n", "f", TUBID)
        assert secret not in str(ei.value)


def test_duplicate_name_and_duplicate_furl_refused() -> None:
    a = furl()
    with pytest.raises(ConfigError, match="duplicate worker name 'w1' .first on line 1"):
        furlsfile.parse(f"w1 {a}\nw1 {furl()}\n", "f")
    with pytest.raises(ConfigError, match="same FURL as line 1"):
        furlsfile.parse(f"w1 {a}\nw2 {a}\n", "f")


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        ff = furlsfile.parse(text, "f")
    except ConfigError as e:
        assert str(e).startswith("f:")
        return
    # whatever parsed renders back to exactly what was read, its last line ended
    assert ff.render() == (text if not text or text.endswith("\n") else text + "\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.from_regex(furlsfile.NAME_RE, fullmatch=True),
                          st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]),
                                  max_size=30)),
                max_size=8, unique_by=lambda t: t[0]))
def test_added_entries_round_trip(rows: list[tuple[str, str]]) -> None:
    ff = furlsfile.FurlsFile("f", [])
    for name, comment in rows:
        ff.add(name, parse_furl(furl()), comment.replace("#", ""))
    again = furlsfile.parse(ff.render(), "f", TUBID)
    assert [(e.name, str(e.furl)) for e in again.entries] == [
        (e.name, str(e.furl)) for e in ff.entries]


def test_update_writes_0600_atomically_and_keeps_hand_edits(tmp_path) -> None:
    p = str(tmp_path / "workers.furls")
    furlsfile.ensure_exists(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    with open(p, "a") as f:
        f.write("# hand-written note\n")
    with furlsfile.update(p, TUBID) as ff:
        ff.add("w1", parse_furl(furl()), "x")
    text = Path(p).read_text()
    assert "# hand-written note\n" in text and text.index("hand-written") < text.index("w1 ")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_update_through_a_symlink_edits_the_target_and_keeps_the_link(tmp_path) -> None:
    """Masters of a cluster share one workers.furls through symlinks: an edit
    made through any of them reaches all (a rename over the link would
    silently give that master a file of its own)."""
    real = tmp_path / "a" / "workers.furls"
    real.parent.mkdir()
    furlsfile.ensure_exists(str(real))
    link = tmp_path / "b" / "workers.furls"
    link.parent.mkdir()
    link.symlink_to(real)
    furlsfile.ensure_exists(str(link))  # there already: nothing happens
    with furlsfile.update(str(link), TUBID) as ff:
        ff.add("w1", parse_furl(furl()))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "w1 " in real.read_text()
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600
    assert not (tmp_path / "b" / "workers.furls.lock").exists()
    with furlsfile.update(str(link), TUBID) as ff:
        ff.remove("w1")
    assert "w1 " not in real.read_text()
    assert os.listdir(tmp_path / "b") == ["workers.furls"]


def test_failed_update_writes_nothing(tmp_path) -> None:
    p = str(tmp_path / "workers.furls")
    furlsfile.ensure_exists(p)
    before = Path(p).read_text()
    with pytest.raises(ConfigError):
        with furlsfile.update(p, TUBID) as ff:
            ff.add("w1", parse_furl(furl()))
            ff.add("w1", parse_furl(furl()))
    assert Path(p).read_text() == before


def test_group_readable_file_is_refused(tmp_path) -> None:
    p = tmp_path / "workers.furls"
    p.write_text("")
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        furlsfile.read(str(p))


def _adder(path: str, prefix: str, n: int) -> None:
    for i in range(n):
        with furlsfile.update(path, TUBID) as ff:
            ff.add(f"{prefix}{i}", parse_furl(furl()))


def test_concurrent_writers_lose_nothing(tmp_path) -> None:
    p = str(tmp_path / "workers.furls")
    furlsfile.ensure_exists(p)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_adder, args=(p, f"p{k}-", 25)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    names = {e.name for e in furlsfile.read(p, TUBID).entries}
    assert names == {f"p{k}-{i}" for k in range(4) for i in range(25)}


def test_hand_edits_racing_the_cli_are_never_lost(tmp_path: Path) -> None:
    """An editor saving (write a copy, rename it over) while create-worker runs:
    a command that finds the file changed writes nothing; no hand line is lost."""
    import threading
    import time

    from buildbot_furl.privatefiles import write_private

    path = str(tmp_path / "workers.furls")
    with furlsfile.update(path, TUBID):
        pass
    stop = threading.Event()
    refused = []
    added = []

    def cli() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                with furlsfile.update(path, TUBID) as ff:
                    ff.add(f"w{i}", parse_furl(furl()))
                added.append(i)
            except ConfigError:
                refused.append(i)

    t = threading.Thread(target=cli)
    t.start()
    try:
        for n in range(150):
            with open(path) as f:
                text = f.read()
            write_private(path, text + f"# hand edit {n}\n")
            time.sleep(0.02)  # an editor's pace: the CLI gets writes in between
    finally:
        stop.set()
        t.join()
    final = open(path).read()
    lost = [n for n in range(150) if f"# hand edit {n}\n" not in final]
    assert not lost, f"hand edits lost: {lost[:10]} ({len(added)} CLI writes, " \
                     f"{len(refused)} refused)"
    assert added, "the CLI never got a write in"
