"""configurable-http-proxy's REST API: the routing table, read only.

watchdogd never edits routes itself: the hub's ``check_routes`` would undo a
route change for a server it believes running, so drift is fixed through the
hub (``POST /hub/api/proxy``) instead.
"""

from __future__ import annotations

from typing import Any

from watchdogd.config import HubConfig
from watchdogd.sources.base import HttpClient

__all__ = ["ProxySource"]


class ProxySource:
    """One hub's CHP API."""

    def __init__(self, target: str, config: HubConfig) -> None:
        if config.proxy_api_url is None or config.proxy_token is None:
            raise ValueError(f"hubs.{target}: proxy_api_url and proxy_token_file are needed")
        self.http = HttpClient(
            "proxy", target, config.proxy_api_url,
            headers={"Authorization": f"token {config.proxy_token.get_secret_value()}"},
            timeout=config.timeout.total_seconds(),
            max_bytes=int(config.max_response_bytes),
            credential=f"the proxy token of hub {target} (hubs.{target}.proxy_token_file)",
        )

    def routes(self) -> dict[str, dict[str, Any]]:
        """All routes: path (no trailing slash) to its data, including ``target``."""
        data = self.http.get_json("/api/routes")
        if not isinstance(data, dict):
            raise self.http.error("GET /api/routes: answer is not an object")
        for path, route in data.items():
            if not isinstance(route, dict) or not isinstance(route.get("target"), str):
                raise self.http.error(f"GET /api/routes: route {path[:80]!r} has no target")
        return data

    def close(self) -> None:
        """Close pooled connections."""
        self.http.close()
