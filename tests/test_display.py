"""Peer text shown on a terminal: no control, format or unassigned characters."""

from hypothesis import given
from hypothesis import strategies as st

from buildbot_furl.display import printable


def test_escapes_and_bidi_overrides_are_replaced() -> None:
    assert printable("a\x1b[2Jb\x07c\u202ed\x9be") == "a?[2Jb?c?d?e"
    assert printable("line1\nline2\r", keep_newlines=True) == "line1\nline2?"
    assert printable("naïve 漢字 ok") == "naïve 漢字 ok"


@given(st.text())
def test_nothing_unprintable_survives(text: str) -> None:
    out = printable(text)
    assert len(out) == len(text)
    assert out.isprintable()
