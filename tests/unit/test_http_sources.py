"""hubapi and proxy sources against a scripted HTTP server: paging, changes mid-list, errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from watchdogd.config import HubConfig
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sources.base import counting
from watchdogd.sources.hubapi import HubApiSource
from watchdogd.sources.proxy import ProxySource

Handler = Callable[[str, str, dict[str, list[str]]], tuple[int, Any]]


class Scripted:
    """An HTTP server whose answers come from a Python function."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[tuple[str, str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                parts = urlsplit(self.path)
                outer.seen.append((self.command, parts.path, self.headers["Authorization"]))
                status, body = outer.handler(self.command, parts.path, parse_qs(parts.query))
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Scripted]]:
    servers: list[Scripted] = []

    def start(handler: Handler) -> Scripted:
        servers.append(Scripted(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def hub_config(url: str) -> HubConfig:
    return HubConfig(cluster="c", api_url=f"{url}/hub/api", api_token=SecretStr("tok-marker-1"),
                     proxy_api_url=url, proxy_token=SecretStr("tok-marker-2"),
                     timeout=timedelta(seconds=2))


def users_page(names: list[str], offset: int, total: int, limit: int = 200) -> dict[str, Any]:
    end = offset + len(names)
    return {"items": [{"name": n, "servers": {"": {"name": "", "ready": True, "pending": None,
                                                     "started": "2026-11-22T01:00:00Z"}}}
                      for n in names],
            "_pagination": {"offset": offset, "limit": limit, "total": total,
                            "next": {"offset": end, "limit": limit} if end < total else None}}


def test_active_servers_reads_every_page(serve: Callable[[Handler], Scripted]) -> None:
    names = [f"user{i}" for i in range(450)]

    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        assert (method, path, query["state"]) == ("GET", "/hub/api/users", ["active"])
        # Like the hub: the asked-for limit is clamped to api_page_max_limit (200).
        offset, limit = int(query["offset"][0]), min(200, int(query["limit"][0]))
        return 200, users_page(names[offset:offset + limit], offset, len(names))

    server = serve(handler)
    with counting() as requests:
        servers = HubApiSource("main", hub_config(server.url)).active_servers()
    assert [s["user"] for s in servers] == names
    assert requests[0] == 3  # ceil(450 / 200): one request per page, never per user
    assert {auth for _, _, auth in server.seen} == {"token tok-marker-1"}


def test_list_that_changes_while_paging_is_an_error(serve: Callable[[Handler], Scripted]) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        offset = int(query["offset"][0])
        return 200, users_page([f"u{offset + i}" for i in range(200)], offset,
                               400 if offset == 0 else 399)

    server = serve(handler)
    with pytest.raises(SourceError, match="changed while paging"):
        HubApiSource("main", hub_config(server.url)).active_servers()


def test_short_list_is_an_error(serve: Callable[[Handler], Scripted]) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        page = users_page(["a", "b"], 0, 5)
        page["_pagination"]["next"] = None
        return 200, page

    with pytest.raises(SourceError, match="got 2 of 5 active users"):
        HubApiSource("main", hub_config(serve(handler).url)).active_servers()


def test_server_errors_are_retried_then_reported(serve: Callable[[Handler], Scripted]) -> None:
    calls = []

    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        calls.append(path)
        return 503, {"status": 503, "message": "hub is restarting"}

    source = HubApiSource("main", hub_config(serve(handler).url))
    source.http._sleep = lambda _s: None
    with pytest.raises(SourceError) as info:
        source.active_servers()
    assert len(calls) == 3
    assert str(info.value) == "hubapi main: GET /hub/api/users: HTTP 503: hub is restarting"


@pytest.mark.parametrize(("status", "expected"), [
    (401, "401 Unauthorized: the API token of hub main (hubs.main.api_token_file) is wrong"),
    (403, "403 Forbidden: the API token of hub main (hubs.main.api_token_file) lacks "
          "permission; it needs the scope list:users"),
])
def test_token_problems_name_the_token_not_its_value(
        serve: Callable[[Handler], Scripted], status: int, expected: str) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        return status, {"status": status, "message": "Action is not authorized"}

    with pytest.raises(SourceError) as info:
        HubApiSource("main", hub_config(serve(handler).url)).active_servers()
    assert expected in str(info.value)
    assert "tok-marker" not in str(info.value)


def test_not_json_is_an_error(serve: Callable[[Handler], Scripted]) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        return 200, None

    with pytest.raises(SourceError, match="not JSON"):
        HubApiSource("main", hub_config(serve(handler).url)).active_servers()


@pytest.mark.parametrize("body", [[1, 2], {"items": "x"}, {"items": [{"nom": "x"}]},
                                  {"items": [{"name": "x", "servers": []}]},
                                  {"items": [{"name": "x", "servers": {"": "running"}}]},
                                  {"items": [{"name": "x"}]}])
def test_malformed_user_lists_are_errors(serve: Callable[[Handler], Scripted], body: Any) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        return 200, body

    with pytest.raises(SourceError):
        HubApiSource("main", hub_config(serve(handler).url)).active_servers()


@pytest.mark.parametrize("body", [[{"name": "cull-idle"}], {"cull-idle": "running"},
                                  {"cull-idle": {"name": "cull-idle", "command": 3}}])
def test_malformed_service_lists_are_errors(serve: Callable[[Handler], Scripted],
                                            body: Any) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        return 200, body

    with pytest.raises(SourceError, match="GET /services"):
        HubApiSource("main", hub_config(serve(handler).url)).services()


@pytest.mark.parametrize(("status", "outcome"), [(204, "stopped (204)"), (202, "accepted")])
def test_stop_server_answers(serve: Callable[[Handler], Scripted], status: int,
                             outcome: str) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        assert (method, path) == ("DELETE", "/hub/api/users/o%27brien%2Fx/servers/my%20lab")
        return status, None

    result = HubApiSource("main", hub_config(serve(handler).url)).stop_server(
        "o'brien/x", "my lab")
    assert outcome in result


def test_stop_refused_by_the_hub_is_a_precondition(serve: Callable[[Handler], Scripted]) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        return 400, {"status": 400, "message": "alice's server is pending stop"}

    with pytest.raises(PreconditionFailed, match="pending stop"):
        HubApiSource("main", hub_config(serve(handler).url)).stop_server("alice")


def test_stop_is_never_retried(serve: Callable[[Handler], Scripted]) -> None:
    calls = []

    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        calls.append(method)
        return 503, None

    with pytest.raises(SourceError):
        HubApiSource("main", hub_config(serve(handler).url)).stop_server("alice")
    assert calls == ["DELETE"]


def test_proxy_routes_and_malformed_routes(serve: Callable[[Handler], Scripted]) -> None:
    table: dict[str, Any] = {"/": {"hub": True, "target": "http://hub:8081"},
                             "/user/a": {"user": "a", "target": "http://10.0.0.1:8888"}}

    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        assert path == "/api/routes"
        return 200, table

    server = serve(handler)
    proxy = ProxySource("main", hub_config(server.url))
    assert proxy.routes() == table
    assert server.seen[-1][2] == "token tok-marker-2"
    table["/user/b"] = {"user": "b"}
    with pytest.raises(SourceError, match="has no target"):
        proxy.routes()


def test_unreachable_hub(serve: Callable[[Handler], Scripted]) -> None:
    server = serve(lambda *_: (200, {}))
    url = server.url
    server.close()
    source = HubApiSource("main", hub_config(url))
    source.http._sleep = lambda _s: None
    with pytest.raises(SourceError, match=r"cannot connect to http://127\.0\.0\.1"):
        source.active_servers()


def test_a_next_page_that_never_ends_is_an_error(serve: Callable[[Handler], Scripted]) -> None:
    def handler(method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        offset = int(query["offset"][0])
        page = users_page(["alice"], offset, 1)
        page["_pagination"]["next"] = {"limit": 200}  # no offset: the hub never says "end"
        return 200, page

    server = serve(handler)
    with pytest.raises(SourceError, match="more than the 1 active users"):
        HubApiSource("main", hub_config(server.url)).active_servers()
