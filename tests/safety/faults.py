"""Fault injectors for the simulators, armed for one pass and removed after it.

Each :class:`Fault` names the source it hurts, arms itself on a simulator (or a file) and
disarms completely; ``fired()`` says whether a request actually met it (for the summary).
Faults that change the world in the middle of a pass set ``unstable``: reads of that pass
may then legitimately differ from the truth read before it.

The HTTP simulators' ``handle`` can be wrapped by a :class:`Tap` (installed for a world's
life) to serve what ``fail()`` cannot: a page shorter than the total it announces, a body
cut in half, a hub whose maximum page is small, the world changing between two pages.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdogd.sim._http import HttpSim, Request, Response

__all__ = [
    "DeleteWatch",
    "DownFault",
    "Fault",
    "FileFault",
    "HttpFault",
    "KubeBodyFault",
    "LockFault",
    "Tap",
    "TapFault",
    "wrap_method",
]


class Fault:
    """Base: armed before a pass, disarmed after it (idempotent)."""

    source = ""
    label = ""
    #: the world changes while the pass reads it
    unstable = False
    #: disarm when the pass's collect stage ends (its first action), not after the pass
    collect_only = False

    def arm(self) -> None:
        raise NotImplementedError

    def disarm(self) -> None:
        raise NotImplementedError

    def fired(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<{self.source}: {self.label}>"


class HttpFault(Fault):
    """``sim.fail(...)``: a status, a hang past the client's timeout, or a cut connection."""

    def __init__(self, source: str, sim: Any, label: str, **fail: Any) -> None:
        self.source = source
        self.sim = sim
        self.label = label
        self.fail = fail
        self._fired = 0

    def arm(self) -> None:
        if "path_regex" in self.fail:  # KubeSim and OpenStackSim take the path first
            args = dict(self.fail)
            self.sim.fail(args.pop("path_regex"), **args)
        else:
            self.sim.fail(**self.fail)

    def disarm(self) -> None:
        faults = getattr(self.sim, "_faults", [])
        self._fired += sum(int(getattr(f, "fired", 0)) for f in faults)
        self.sim.clear_faults()

    def fired(self) -> bool:
        return self._fired > 0


class DownFault(Fault):
    """The service is down for the pass: connections are refused."""

    def __init__(self, source: str, down: Callable[[], None], up: Callable[[], None]) -> None:
        self.source = source
        self.label = "down"
        self._down, self._up = down, up
        self._armed = False

    def arm(self) -> None:
        self._down()
        self._armed = True

    def disarm(self) -> None:
        if self._armed:
            self._up()
            self._armed = False


class FileFault(Fault):
    """A database file that is missing, or replaced by garbage, for the collect stage.

    The simulator keeps its open connection to the real file (renamed), so the world itself
    is unaffected; only a new reader meets the fault.
    """

    collect_only = True

    def __init__(self, source: str, path: Path, mode: str) -> None:
        self.source = source
        self.path = path
        self.label = mode
        self.mode = mode
        self._aside: Path | None = None

    def arm(self) -> None:
        self._aside = self.path.with_name(self.path.name + ".aside")
        self.path.rename(self._aside)
        if self.mode == "corrupt":
            self.path.write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 512)
        elif self.mode == "empty":
            self.path.write_bytes(b"")

    def disarm(self) -> None:
        if self._aside is None:
            return
        self.path.unlink(missing_ok=True)
        self._aside.rename(self.path)
        self._aside = None


class LockFault(Fault):
    """Another process holds an exclusive lock on a SQLite file: readers wait, then fail."""

    collect_only = True

    def __init__(self, source: str, path: Path) -> None:
        self.source = source
        self.path = path
        self.label = "locked"
        self._conn: sqlite3.Connection | None = None

    def arm(self) -> None:
        self._conn = sqlite3.connect(self.path, timeout=5, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("BEGIN EXCLUSIVE")

    def disarm(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


Mode = Callable[[Request, Response], Response | None]


def wrap_method(obj: Any, name: str, make: Callable[[Any], Any]) -> Callable[[], None]:
    """Replace ``obj.name`` by ``make(current)``; return what puts the previous one back.

    Faults wrap a simulator's request handler for one pass; several may stack in a pass,
    and they are undone in reverse order.
    """
    had = name in vars(obj)
    previous = vars(obj).get(name)
    setattr(obj, name, make(getattr(obj, name)))

    def restore() -> None:
        if had:
            setattr(obj, name, previous)
        else:
            vars(obj).pop(name, None)

    return restore


@dataclass
class _TapState:
    """What a :class:`Tap` does to the next matching answers."""

    mode: str | None = None
    path: str = ""
    remaining: int = 0
    fired: int = 0
    before: Callable[[], None] | None = None
    pages_served: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Tap:
    """Wraps an :class:`HttpSim`'s ``handle`` for the life of a world.

    ``page_cap`` makes the Hub REST API serve at most that many users a page (JupyterHub's
    ``api_page_max_limit`` lowered), so that paging happens with a handful of users.
    """

    def __init__(self, sim: HttpSim, *, page_cap: int | None = None) -> None:
        self.sim = sim
        self.page_cap = page_cap
        self.state = _TapState()
        self._handle = sim.handle
        sim.handle = self._tapped  # type: ignore[method-assign]

    def _tapped(self, req: Request) -> Response:
        state = self.state
        if self.page_cap is not None and req.method == "GET" and req.path.endswith("/users"):
            limit = int(req.arg("limit") or self.page_cap)
            req.query["limit"] = [str(min(limit, self.page_cap))]
        matches = (state.mode is not None and state.remaining > 0
                   and req.method == "GET" and req.path.endswith(state.path))
        if matches and state.mode == "change-between-pages" and state.pages_served >= 1:
            state.remaining -= 1
            state.fired += 1
            if state.before is not None:
                state.before()
        elif matches and state.mode == "change-before" and state.before is not None:
            state.remaining -= 1
            state.fired += 1
            state.before()
        response = self._handle(req)
        if not matches:
            return response
        state.pages_served += 1
        if state.mode == "cut-body" and response.status == 200:
            state.remaining -= 1
            state.fired += 1
            return Response(200, response.body[: max(1, len(response.body) // 2)])
        if state.mode == "short-page" and response.status == 200:
            return self._short_page(response)
        if state.mode == "body":
            state.remaining -= 1
            state.fired += 1
            return Response(int(state.extra.get("status", 200)), state.extra["body"])
        return response

    def _short_page(self, response: Response) -> Response:
        import json

        data = json.loads(response.body)
        if isinstance(data, dict) and data.get("items"):
            self.state.remaining -= 1
            self.state.fired += 1
            data["items"] = data["items"][:-1]
            return Response.json(200, data)
        return response

    def set(self, mode: str | None, path: str, *, times: int = 1,
            before: Callable[[], None] | None = None, **extra: Any) -> None:
        self.state = _TapState(mode, path, times, before=before, extra=extra)


class TapFault(Fault):
    """A :class:`Tap` mode for one pass."""

    def __init__(self, source: str, tap: Tap, mode: str, path: str, *,
                 before: Callable[[], None] | None = None, unstable: bool = False,
                 times: int = 1, **extra: Any) -> None:
        self.source = source
        self.tap = tap
        self.label = mode
        self.mode = mode
        self.path = path
        self.before = before
        self.unstable = unstable
        self.times = times
        self.extra = extra
        self._fired = 0

    def arm(self) -> None:
        self.tap.set(self.mode, self.path, before=self.before, times=self.times, **self.extra)

    def disarm(self) -> None:
        self._fired += self.tap.state.fired
        self.tap.set(None, "")

    def fired(self) -> bool:
        return self._fired > 0


class KubeBodyFault(Fault):
    """The Kubernetes API answers GETs whose path ends with ``path`` with ``body``."""

    def __init__(self, sim: Any, path: str, body: bytes, *, status: int = 200) -> None:
        self.source = "kube"
        self.label = "body"
        self.sim = sim
        self.path = path
        self.body = body
        self.status = status
        self._restore: Callable[[], None] | None = None
        self._fired = 0

    def arm(self) -> None:
        from watchdogd.sim.kube import _Response

        def make(real: Any) -> Any:
            def route(req: Any, ident: Any) -> Any:
                if req.method == "GET" and req.path.endswith(self.path):
                    self._fired += 1
                    return _Response(self.status, self.body)
                return real(req, ident)

            return route

        self._restore = wrap_method(self.sim, "_route", make)

    def disarm(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    def fired(self) -> bool:
        return self._fired > 0


class DeleteWatch:
    """Watches every pod DELETE a KubeSim serves, for the life of a world.

    ``judge(pod)`` gets the pod as it was when the request arrived and returns why deleting
    it would be harm (or None); a harm is recorded only when the pod really went away.
    """

    def __init__(self, kube: Any, judge: Callable[[dict[str, Any]], str | None]) -> None:
        self.kube = kube
        self.judge = judge
        self.harms: list[str] = []

        def make(real: Any) -> Any:
            def route(req: Any, ident: Any) -> Any:
                if req.method != "DELETE" or "/pods/" not in req.path:
                    return real(req, ident)
                parts = req.path.split("/")
                namespace, name = parts[parts.index("namespaces") + 1], parts[-1]
                before = kube.get("Pod", name, namespace)
                answer = real(req, ident)
                after = kube.get("Pod", name, namespace)
                gone = before is not None and (
                    after is None or after["metadata"]["uid"] != before["metadata"]["uid"])
                if gone and before is not None:
                    why = self.judge(before)
                    if why:
                        self.harms.append(f"pod {namespace}/{name} deleted: {why}")
                return answer

            return route

        wrap_method(kube, "_route", make)

    def drain(self) -> list[str]:
        harms, self.harms = self.harms, []
        return harms
