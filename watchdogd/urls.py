"""Database URLs with passwords in them: parsed right, never shown.

Operators paste ``postgresql://user:p@ss@host/db`` with an unescaped ``@`` in the
password. SQLAlchemy's parser splits at the first ``@`` and takes ``ss@host`` for the host,
so the driver's "cannot resolve host" error, and every message quoting the host, carried
part of the password. Here the userinfo ends at the *last* ``@`` of the authority, and
what is shown never holds the password.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

import sqlalchemy as sa

__all__ = ["redact_url", "sqlalchemy_url"]


def _split(url: str) -> tuple[str, str | None, str | None, str]:
    """``(scheme, user, password, rest)``: the userinfo ends at the authority's last ``@``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None, None, ""
    end = rest.find("?")
    at = rest.rfind("@", 0, end if end >= 0 else len(rest))
    if at < 0:
        return scheme, None, None, rest
    userinfo, tail = rest[:at], rest[at + 1:]
    user, colon, password = userinfo.partition(":")
    return scheme, user, password if colon else None, tail


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (any characters in it)."""
    scheme, user, password, rest = _split(url)
    if user is None:
        return url
    return f"{scheme}://{user}{':***' if password is not None else ''}@{rest}"


def sqlalchemy_url(url: str) -> sa.URL:
    """Parse a database URL whose password may hold unescaped ``@``, ``:`` or ``/``.

    Raises :class:`ValueError` (with no part of the password) when it is not a URL.
    """
    scheme, user, password, rest = _split(url)
    if user is None:
        try:
            return sa.make_url(url)
        except sa.exc.ArgumentError:
            raise ValueError(f"not a valid database URL: {redact_url(url)!r}") from None
    try:
        parsed = sa.make_url(f"{scheme}://{quote(unquote(user), safe='')}@{rest}")
    except sa.exc.ArgumentError:
        raise ValueError(f"not a valid database URL: {redact_url(url)!r}") from None
    return parsed.set(password=unquote(password) if password is not None else None)
