"""What every source shares: request counting and an HTTP client that fails loudly.

Sources are adapters: they fetch plain data or change one thing, and raise
:class:`~watchdogd.model.SourceError` for anything less than a complete answer.
They make no decisions.
"""

from __future__ import annotations

import contextvars
import email.utils
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import requests

from watchdogd.config import DEFAULT_MAX_BYTES
from watchdogd.model import SourceError
from watchdogd.sources.bounded import bound_session, limits

__all__ = ["HttpClient", "attempts", "count_request", "counting", "describe_status",
           "http_date", "note_server_date", "scrub", "secret_values", "server_dates"]

_requests: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "watchdogd_requests", default=None
)


def count_request(n: int = 1) -> None:
    """Count ``n`` requests against whatever is being measured in this context."""
    counter = _requests.get()
    if counter is not None:
        counter[0] += n


@contextmanager
def counting() -> Iterator[list[int]]:
    """Count the requests made inside the block (the report's ``requests``)."""
    counter = [0]
    token = _requests.set(counter)
    try:
        yield counter
    finally:
        _requests.reset(token)


_dates: contextvars.ContextVar[list[datetime] | None] = contextvars.ContextVar(
    "watchdogd_server_dates", default=None
)


def http_date(header: str | None) -> datetime | None:
    """An HTTP ``Date`` header as an aware datetime, or None when absent or garbled."""
    if not header:
        return None
    try:
        value = email.utils.parsedate_to_datetime(str(header))
    except (TypeError, ValueError, IndexError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def note_server_date(header: str | None) -> None:
    """Remember a response's ``Date`` header for whatever is being read in this context.

    The first one of a read is kept: the server's own "now" when it began to answer. A
    check ages the server's timestamps against it, never against watchdogd's clock.
    """
    dates = _dates.get()
    if dates is None or dates:
        return
    value = http_date(header)
    if value is not None:
        dates.append(value)


@contextmanager
def server_dates() -> Iterator[list[datetime]]:
    """Collect the server's clock (the first ``Date``) of the reads inside the block."""
    dates: list[datetime] = []
    token = _dates.set(dates)
    try:
        yield dates
    finally:
        _dates.reset(token)


def secret_values(values: Any) -> list[str]:
    """The secret strings in credential values (``token X`` yields the whole and ``X``).

    Longest first, so that :func:`scrub` masks a whole header before a part of it.
    """
    found: set[str] = set()
    for value in values:
        if not isinstance(value, str) or not value.strip():
            continue
        found.add(value.strip())
        _, _, rest = value.strip().partition(" ")
        if rest.strip():
            found.add(rest.strip())
    return sorted((v for v in found if len(v) >= 4), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by ``***``.

    Error bodies are quoted in messages, and a peer (a gateway's error page, a debug
    proxy) may echo the request's credentials back in them.
    """
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def describe_status(status: int, body: str, *, credential: str, need: str = "") -> str:
    """A one-line cause for an HTTP error that tells the operator what to fix."""
    detail = _error_detail(body)
    if status == 401:
        return f"401 Unauthorized: {credential} is wrong or expired"
    if status == 403 and detail == "Missing or invalid credentials.":
        # JupyterHub answers an unknown token with this 403, never with a 401.
        return f"403 Forbidden: {credential} is wrong or expired ({detail})"
    if status == 403:
        hint = f"; it needs {need}" if need else ""
        return f"403 Forbidden: {credential} lacks permission{hint}" + (
            f" ({detail})" if detail else "")
    return f"HTTP {status}" + (f": {detail}" if detail else "")


def _error_detail(body: str) -> str:
    """The message of a JSON error body, else the first line of the text, short."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        data = None
    if isinstance(data, dict):
        for key in ("message", "error", "reason"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value[:200]
    text = (body or "").strip().splitlines()
    return text[0][:200] if text else ""


#: request headers that carry credentials (their values never appear in a message)
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-auth-token", "cookie", "x-api-key"})


def attempts(count: int, sleep: Callable[[float], None]) -> Iterator[int]:
    """``count`` tries of one read, waiting 0.4 s, 0.8 s... (at most 2 s) before each retry.

    Only reads are retried (a refused connection, a 5xx); the adapters share this so that
    every peer sees the same back-off.
    """
    for attempt in range(count):
        if attempt:
            sleep(min(0.2 * 2**attempt, 2.0))
        yield attempt


class HttpClient:
    """A ``requests`` session bound to one base URL, one credential and one timeout.

    Idempotent reads are retried on connection errors and 502/503/504 with a
    short backoff; writes are never retried here (the engine's confirmation
    decides whether to try again next pass).
    """

    RETRY_STATUSES = frozenset({502, 503, 504})

    def __init__(
        self,
        source: str,
        target: str,
        base_url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        credential: str,
        retries: int = 2,
        sleep: Callable[[float], None] = time.sleep,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.source = source
        self.target = target
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.credential = credential
        self.retries = retries
        self._sleep = sleep
        self.max_bytes = max_bytes
        # Every connection checks the call's total deadline and byte budget (bounded.py).
        self.session = bound_session(requests.Session())
        self.session.headers.update(headers)
        self._secrets = secret_values(value for key, value in headers.items()
                                      if key.lower() in _CREDENTIAL_HEADERS)

    def error(self, cause: str) -> SourceError:
        """A SourceError naming this source and target (credentials masked)."""
        return SourceError(self.source, self.target, self.scrub(cause))

    def scrub(self, text: str) -> str:
        """``text`` without this client's credentials (see :func:`scrub`)."""
        return scrub(text, self._secrets)

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        need: str = "",
        **kwargs: Any,
    ) -> requests.Response:
        """Send one request; return the response when its status is in ``ok``."""
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        last: str = ""
        for _ in attempts(1 + (self.retries if method == "GET" else 0), self._sleep):
            count_request()
            # The timeout is the whole call: connect, headers and body, however they trickle.
            with limits(self.timeout, self.max_bytes) as bound:
                try:
                    response: requests.Response = self.session.request(
                        method, url, timeout=self.timeout, **kwargs)
                except requests.RequestException as exc:
                    if bound.exceeded == "size":
                        raise self.error(f"{method} {self._path(url)}: "
                                         f"{bound.describe()}") from None
                    if bound.exceeded:
                        last = f"{self._where(url)}: {bound.describe()}"
                        if method != "GET":
                            break
                        continue
                    if isinstance(exc, requests.Timeout):
                        last = f"no answer within {self.timeout:g}s from {self._where(url)}"
                        continue
                    if isinstance(exc, requests.ConnectionError):
                        last = f"cannot connect to {self._where(url)}: {_reason(exc)}"
                        continue
                    raise self.error(f"request failed: {type(exc).__name__}") from None
            note_server_date(response.headers.get("Date"))
            if response.status_code in ok:
                return response
            last = describe_status(response.status_code, response.text,
                                   credential=self.credential, need=need)
            if response.status_code not in self.RETRY_STATUSES:
                break
        raise self.error(f"{method} {self._path(url)}: {last}")

    def get_json(self, path: str, *, need: str = "", **kwargs: Any) -> Any:
        """GET and parse JSON; a body that is not JSON is a SourceError."""
        response = self.request("GET", path, need=need, **kwargs)
        try:
            return response.json()
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise self.error(f"GET {self._path(response.url)}: answer is not JSON") from None

    def _where(self, url: str) -> str:
        from urllib.parse import urlsplit  # noqa: PLC0415

        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":")

    def _path(self, url: str) -> str:
        from urllib.parse import urlsplit  # noqa: PLC0415

        return urlsplit(url).path

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "Connection reset", "No route to host", "Remote end closed"):
        if marker in text:
            return marker
    return type(exc).__name__
