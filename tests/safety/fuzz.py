"""Malformed payloads: random JSON, valid answers broken in small ways, bytes that are not JSON.

:func:`broken` takes a *valid* answer (what the real service sends) and damages it: a node
replaced by random JSON, a key dropped, a value of the wrong type, a list where an object
belongs. Small damage reaches deep into a parser, where random documents stop at the first
check. :func:`bodies` turns documents into response bodies, some of them cut short, some
not UTF-8, some not JSON at all.

:class:`PayloadServer` answers every request with the current payload; it is what a
misbehaving or hostile peer looks like to a source.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hypothesis import strategies as st

__all__ = ["PayloadServer", "bodies", "broken", "call_with_deadline", "json_values"]

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12)


def _slots(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of ``doc`` (the root is ``()``)."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _slots(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _slots(value, (*path, index))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def broken(draw: st.DrawFn, valid: Any, *, max_edits: int = 3) -> Any:
    """``valid`` with one to ``max_edits`` small injuries."""
    doc = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, max_edits))):
        path = draw(st.sampled_from(_slots(doc)))
        op = draw(st.sampled_from(["replace", "replace", "retype", "delete", "wrap",
                                   "duplicate"]))
        if not path:
            if op in ("replace", "retype"):
                doc = draw(json_values)
            elif op == "wrap":
                doc = [doc]
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        node = parent[key]
        if op == "replace":
            parent[key] = draw(json_values)
        elif op == "retype":
            parent[key] = draw(st.sampled_from(
                [None, 0, -1, 1.5, "", "x", [], {}, True, str(node)[:20], [node]]))
        elif op == "delete":
            del parent[key]
        elif op == "wrap":
            parent[key] = {"value": node} if not isinstance(node, dict) else [node]
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(node))
    return doc


@st.composite
def bodies(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> bytes:
    """Response bodies: a document as JSON, cut short, not UTF-8, or not JSON at all."""
    kind = draw(st.sampled_from(["json"] * 6 + ["cut", "bytes", "latin1", "empty", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "empty":
        return b""
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        return b"[" * depth + b"]" * depth
    text = json.dumps(draw(docs))
    if kind == "cut":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))].encode()
    if kind == "latin1":
        return text.encode("utf-8") + b"\xff\xfe"
    return text.encode()


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a hostile answer is not news


class PayloadServer:
    """Answers every request with ``(status, body)`` from :attr:`payload`."""

    def __init__(self) -> None:
        self.payload: tuple[int, bytes] = (200, b"{}")
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.requests += 1
                status, body = server.payload
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Quiet(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PayloadServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def call_with_deadline(fn: Callable[[], Any], seconds: float = 10) -> tuple[str, Any]:
    """Run ``fn`` in a thread: ``("ok", value)``, ``("raised", exc)`` or ``("hung", None)``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["ok"] = fn()
        except BaseException as exc:
            box["raised"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return "hung", None
    if "raised" in box:
        return "raised", box["raised"]
    return "ok", box.get("ok")
