"""Peer text shown on a terminal: no control, format or unassigned characters."""

from hypothesis import given
from hypothesis import strategies as st

from buildbot_furl.display import printable, without_furls
from buildbot_furl.furl import new_swissnum


def test_escapes_and_bidi_overrides_are_replaced() -> None:
    assert printable("a\x1b[2Jb\x07c\u202ed\x9be") == "a?[2Jb?c?d?e"
    assert printable("line1\nline2\r", keep_newlines=True) == "line1\nline2?"
    assert printable("naïve 漢字 ok") == "naïve 漢字 ok"


@given(st.text())
def test_nothing_unprintable_survives(text: str) -> None:
    out = printable(text)
    assert len(out) == len(text)
    assert out.isprintable()


_AROUND = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(_AROUND, st.sampled_from(["pb://", "pb:/", ""]),
       st.sampled_from(["tcp:127.0.0.1:9", "tcp:a:1,tcp:b:2", ""]),
       st.sampled_from(["'", '"', " ", "(", ""]), _AROUND)
def test_no_furl_secret_survives_wherever_it_is_typed(
        before: str, scheme: str, hints: str, quote: str, after: str) -> None:
    secret = new_swissnum()
    furl = f"{scheme}{'b' * 32}@{hints}/{secret}"
    text = f"{before}{quote}{furl}{quote}{after}"
    assert secret not in without_furls(text)


def test_text_without_a_furl_is_left_alone() -> None:
    for text in ("no worker 'w1' in /tmp/m/workers.furls", "mail root@example.org",
                 "chmod 600 '/srv/my master/workers.furls'"):
        assert without_furls(text) == text
