"""URLs parsed right: database URLs with passwords in them (never shown), HTTPS endpoints.

Operators paste ``postgresql://user:p@ss@host/db`` with an unescaped ``@`` in the
password. SQLAlchemy's parser splits at the first ``@`` and takes ``ss@host`` for the host,
so the driver's "cannot resolve host" error, and every message quoting the host, carried
part of the password. Here the user information ends at the *last* ``@``, and what is
shown never holds the password. (Cheap to import: the configuration uses it.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["redact_url", "split_endpoint", "split_userinfo", "sqlalchemy_url"]


def split_userinfo(url: str) -> tuple[str, str | None, str | None, str]:
    """``(scheme, user, password, rest)`` of ``scheme://user:password@rest``.

    The LAST ``@`` ends the user information: a password may hold an unescaped ``@``
    (``p@ss``), and taking the first one would leave part of it in the "host". A query
    string with an ``@`` then makes more of the URL count as the password, which only
    hides more.
    """
    scheme, sep, after = url.partition("://")
    if not sep:
        return url, None, None, ""
    at = after.rfind("@")
    if at < 0:
        return scheme, None, None, after
    userinfo, rest = after[:at], after[at + 1:]
    user, colon, password = userinfo.partition(":")
    return scheme, user, password if colon else None, rest


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, whatever characters the password has."""
    scheme, user, password, rest = split_userinfo(url)
    if user is None and password is None:
        return url if "://" in url else "<not a URL>"
    shown = f"{user}:***" if password is not None else f"{user}"
    return f"{scheme}://{shown}@{rest}"


def sqlalchemy_url(url: str) -> sa.URL:
    """Parse a database URL whose password may hold unescaped ``@``, ``:`` or ``/``.

    Raises :class:`ValueError` (with no part of the password) when it is not a URL.
    """
    import sqlalchemy as sa  # noqa: PLC0415 - the configuration imports this module

    scheme, user, password, rest = split_userinfo(url)
    try:
        if user is None:
            return sa.make_url(url)
        parsed = sa.make_url(f"{scheme}://{quote(unquote(user), safe='')}@{rest}")
    except sa.exc.ArgumentError:
        raise ValueError(f"not a valid database URL: {redact_url(url)!r}") from None
    return parsed.set(password=unquote(password) if password is not None else None)


def split_endpoint(url: str) -> tuple[str, int]:
    """``https://host[:port]/path``, ``host:port`` or ``host`` -> (host, port); 443 by default."""
    text = url if "://" in url else f"https://{url}"
    parts = urlsplit(text)
    if parts.scheme != "https":
        raise ValueError(f"not an https endpoint: {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in endpoint {url!r}")
    try:
        port = parts.port or 443
    except ValueError:
        raise ValueError(f"bad port in endpoint {url!r}") from None
    return host, port
