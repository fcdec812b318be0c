"""Text from the outside world, made safe to show.

Names, messages and labels come from hubs, clusters and clouds that watchdogd does not
control. Before such text reaches a terminal, a log line, a notification or the store,
control characters are written out as escapes, so an ANSI sequence cannot repaint a
terminal, a NUL cannot cut a PostgreSQL text value, and a newline inside a name cannot
forge a second line. Printable unicode (accents, CJK, emoji) is kept as it is.
"""

from __future__ import annotations

import unicodedata

__all__ = ["safe_text"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Embeddings, overrides, isolates and marks: they make text read in another order.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(value: str, limit: int | None = None) -> str:
    """``value`` with control characters escaped, at most ``limit`` characters long.

    ``\\x1b`` becomes the four characters ``\\x1b``, NUL ``\\x00``, a newline ``\\n``.
    Escaped are the C0 and C1 controls and DEL (category ``Cc``), the bidi controls
    that reorder what a reader sees, and the line/paragraph separators. A backslash
    is kept as it is: the result is for people to read, not to be unescaped. Past
    ``limit`` the text is cut at a whole character or escape and ends in ``…``.
    """
    pieces = [_escape(char) if _is_control(char) else char for char in value]
    text = "".join(pieces)
    if limit is None or len(text) <= limit:
        return text
    marker = "…" if limit > 0 else ""
    length = len(text)
    while pieces and length + len(marker) > limit:
        length -= len(pieces.pop())
    return "".join(pieces) + marker


def _is_control(char: str) -> bool:
    return (char in _BIDI or unicodedata.category(char) in ("Cc", "Zl", "Zp"))
