"""The hub as its users reach it: ``GET {public_url}/hub/health`` through the proxy.

JupyterHub answers its health endpoint without authentication, so the probe sends no
credential at all (the public URL may be any host). What the proxy answered is the
observation: a 200, a gateway error (configurable-http-proxy answers 503 when the hub
refuses connections; an ingress in front of it 502 or 504), or no answer within the hub's
timeout (CHP has no upstream timeout by default: a hung hub hangs the request). Only a
proxy that cannot be reached at all (refused, unknown host, connect timeout) is a
:class:`~watchdogd.model.SourceError`: then nothing is known about the hub.
"""

from __future__ import annotations

from typing import Any

import requests

from watchdogd.config import HubConfig
from watchdogd.model import SourceError
from watchdogd.sources.base import count_request, note_server_date
from watchdogd.sources.bounded import bound_session, limits
from watchdogd.text import safe_text

__all__ = ["HEALTH_PATH", "HubProbeSource"]

HEALTH_PATH = "/hub/health"
#: of an error page, only the start is kept (CHP's default body is its status text)
BODY_LIMIT = 200


class HubProbeSource:
    """One hub's public URL."""

    def __init__(self, target: str, config: HubConfig) -> None:
        if config.public_url is None:
            raise ValueError(f"hubs.{target}: public_url is not set")
        self.target = target
        self.url = config.public_url.rstrip("/") + HEALTH_PATH
        self.timeout = config.timeout.total_seconds()
        self.max_bytes = int(config.max_response_bytes)
        self.session = bound_session(requests.Session())

    def health(self) -> dict[str, Any]:
        """One ``GET`` of the health endpoint, never retried (a retry would hide a blip the
        check's confirmation already absorbs, and double the time a hung hub costs).

        Returns ``{"url", "status", "timed_out", "body"}``: ``status`` is None when no
        answer came within the timeout (``timed_out``).
        """
        count_request()
        with limits(self.timeout, self.max_bytes) as bound:
            try:
                response = self.session.get(self.url, timeout=self.timeout,
                                            allow_redirects=False)
                body = response.text[:BODY_LIMIT]
            except requests.ConnectTimeout:
                raise self._error(f"cannot connect within {self.timeout:g}s") from None
            except requests.RequestException as exc:
                if bound.exceeded == "size":
                    raise self._error(bound.describe()) from None
                if bound.exceeded or isinstance(exc, requests.Timeout):
                    return {"url": self.url, "status": None, "timed_out": True,
                            "body": f"no answer within {self.timeout:g}s"}
                raise self._error(f"cannot connect: {_reason(exc)}") from None
        note_server_date(response.headers.get("Date"))
        return {"url": self.url, "status": response.status_code, "timed_out": False,
                "body": safe_text(body.strip().splitlines()[0] if body.strip() else "",
                                  BODY_LIMIT)}

    def _error(self, cause: str) -> SourceError:
        return SourceError("probe", self.target, f"GET {self.url}: {cause}")

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Connection reset",
                   "No route to host", "Remote end closed"):
        if marker in text:
            return marker
    return type(exc).__name__
