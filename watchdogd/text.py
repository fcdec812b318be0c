"""Text from the outside world, made safe to store and to show.

Any project member names a volume, any user names a server: a NUL byte stops a
PostgreSQL insert, an ANSI escape rewrites an operator's terminal, a newline forges a
line of a report or a log. Names are kept as they are in memory (actions need the real
ones); at the boundaries, the store, the terminal, the logs and the notifications, they
pass through :func:`safe_text` (for people) or :func:`store_key` (for identities).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

__all__ = ["names_a_secret", "safe_text", "store_key", "table", "unstore_key",
           "without_secrets"]

#: C0 controls, DEL, C1 controls, and the bidirectional overrides and isolates that make
#: a terminal show text in another order than it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object, limit: int | None = None) -> str:
    """``value`` as one printable line: control characters escaped (``\\x1b``, ``\\n``).

    Ordinary unicode stays as it is. With ``limit``, the result is cut to that many
    characters, ending in ``…``.
    """
    text = _UNSAFE.sub(_escape, str(value))
    if limit is not None and len(text) > limit:
        return text[:max(0, limit - 1)] + "…"
    return text


#: the longest identity the store's key columns take (VARCHAR(1024) on PostgreSQL)
MAX_KEY = 1024


def store_key(value: str) -> str:
    """An identity (a finding key, a mark) as the store keeps it: no NUL, never too long.

    Unlike :func:`safe_text`, two different names never give the same key: a backslash is
    doubled, so ``\\x00`` written by a user stays apart from a real NUL. A key longer than
    the column keeps its start and ends in a hash of the whole, so it stays one identity.
    """
    if "\\" in value or "\x00" in value:
        value = value.replace("\\", "\\\\").replace("\x00", "\\0")
    if len(value) > MAX_KEY:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        value = f"{value[:MAX_KEY - 40]}…#{digest}"
    return value


def unstore_key(value: str) -> str:
    """The identity :func:`store_key` stored (a hashed, too long one stays as stored)."""
    if "\\" not in value:
        return value
    return re.sub(r"\\(\\|0)", lambda m: "\\" if m.group(1) == "\\" else "\x00", value)


#: keys whose values are never kept: credentials by name, and a container's env/command
_SECRET_NAME = re.compile(r"token|password|passwd|secret|credential|api[-_]?key|"
                          r"authorization|cookie|private[-_]?key", re.IGNORECASE)


def names_a_secret(name: str) -> bool:
    """Whether a key's name says its value is a credential (logs, evidence, audit)."""
    return _SECRET_NAME.search(name) is not None


_DROPPED = frozenset({"env", "envFrom", "command", "args", "stringData", "data"})
MASK = "***"


def without_secrets(value: object) -> object:
    """``value`` (JSON-like) with credentials masked, for the audit log and the report.

    A second line of defence behind the checks' own before-images: whatever a check puts
    in evidence or a before-image, a key that names a credential keeps no value.
    """
    if isinstance(value, dict):
        out: dict[object, object] = {}
        for key, item in value.items():
            name = str(key)
            secret = (names_a_secret(name) and bool(item)
                      and not isinstance(item, bool | int))
            if (name in _DROPPED and item) or secret:
                out[key] = MASK
            else:
                out[key] = without_secrets(item)
        return out
    if isinstance(value, list | tuple):
        return [without_secrets(item) for item in value]
    return value


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *,
          rule: bool = False) -> str:
    """A left-aligned text table, every cell through :func:`safe_text`; ``rule`` underlines
    the headers. Numbers are formatted by the caller."""
    cells = [[safe_text(str(c)) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
