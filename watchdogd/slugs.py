"""How KubeSpawner turns a username into object names and label values (its two schemes).

watchdogd matches pods and claims to hub users by these slugs, and the simulated hub names
its pods with them, so both use this one module: a slug that drifts from KubeSpawner's makes
a healthy user's pod look orphaned. ``tests/unit/test_slugs.py`` checks it against
KubeSpawner's published examples and against the spawner peer that runs in a real hub.
"""

from __future__ import annotations

import hashlib
import re
import string

__all__ = ["escape_slug", "safe_slug"]

_LOWER_ALNUM = frozenset(string.ascii_lowercase + string.digits)
_NOT_LOWER_ALNUM = re.compile(r"[^a-z0-9]+")
#: an RFC 1123 DNS label that starts with a letter, as KubeSpawner 7 accepts a name as-is
_OBJECT_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_HASH_LENGTH = 8


def escape_slug(name: str) -> str:
    """KubeSpawner < 7 (``slug_scheme = "escape"``): every byte outside ``[a-z0-9]`` as
    ``-xx`` (escapism with ``-`` as the escape character), then lowercased."""
    out = []
    for char in name:
        if char in _LOWER_ALNUM:
            out.append(char)
        else:
            out.extend(f"-{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out).lower()


def safe_slug(name: str, max_length: int = 32) -> str:
    """KubeSpawner 7 (``slug_scheme = "safe"``): the name itself when it is a valid object
    name without ``--``; otherwise a readable prefix, ``---`` and 8 hex of its sha256, in
    at most ``max_length`` characters (the hash keeps distinct names distinct)."""
    if "--" not in name and _OBJECT_NAME.match(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HASH_LENGTH]
    room = max_length - (_HASH_LENGTH + 3)
    readable = _NOT_LOWER_ALNUM.sub("-", name.lower()).lstrip("-")[:room].rstrip("-")
    if readable and not readable[0].isalpha():
        readable = "x-" + readable[:room - 2]
    return f"{readable or 'x'}---{digest}"
