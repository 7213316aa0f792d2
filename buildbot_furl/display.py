"""Text that came from a peer, made safe to show on an admin's terminal.

A worker chooses its ``info/host`` and the text of the errors it sends; a master
chooses what it answers.  Shown raw, an escape sequence in them would drive the
admin's terminal (retitle it, rewrite earlier lines, paste into it).
"""

from __future__ import annotations

import re

#: what stands for each character that is not shown
REPLACEMENT = "?"


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every character Python does not call printable replaced:
    controls, format characters (bidi overrides), separators other than the
    space, surrogates, unassigned ones; ``keep_newlines`` keeps ``\\n``."""
    return "".join(ch if ch.isprintable() or (keep_newlines and ch == "\n") else REPLACEMENT
                   for ch in text)


#: something shaped like a FURL, ``[pb://]TUBID@HINTS/SWISSNUM``: what is past
#: the last ``/`` is the secret (a FURL pasted where a name, a directory or an
#: option's value belongs, and echoed back by an error)
_FURLISH = re.compile(r"(pb:/*)?([^\s'\"()/@]+@[^\s'\"()/]*)/[^\s'\"()]+")


def without_furls(text: str) -> str:
    """``text`` with the secret part of anything that looks like a FURL cut
    off (``pb://TUBID@HINTS/...``): for errors that echo what was typed."""
    return _FURLISH.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}/...", text)
