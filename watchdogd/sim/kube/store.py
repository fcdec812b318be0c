"""The object store: versions, the resourceVersion counter, watch history, paged list snapshots.

Pagination follows the real server: continue tokens are opaque base64 JSON, a continued list is
served from the snapshot taken at its first page, and a token that outlived its snapshot (or
was expired on purpose) answers 410 Expired with a fresh inconsistent token.  Watches resume
from a resourceVersion while the history still holds it, and answer 410 once it does not.
"""

from __future__ import annotations

import base64
import bisect
import collections
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from watchdogd.sim.kube.errors import ApiError
from watchdogd.sim.kube.resources import RESOURCES, Obj, ResourceType
from watchdogd.sim.kube.selectors import Query

__all__ = ["Entry", "Event", "Gone", "Store", "WatchStream", "clone", "dumps", "object_key"]

_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
dumps: Callable[[Any], str] = _json_encoder.encode

_EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results."
)



def clone(obj: Any) -> Any:
    """Deep copy through JSON: faster than copy.deepcopy and rejects what the API cannot hold."""
    return json.loads(dumps(obj))


class Entry:
    """One immutable version of a stored object (kept without kind/apiVersion, as list items).

    Its JSON is produced once and cached: serving a 500-pod page then is a string join,
    which keeps the simulator from dominating the benchmarks it is used for.
    """

    __slots__ = ("_json", "obj", "rt")

    def __init__(self, rt: ResourceType, obj: Obj, item_json: str | None = None) -> None:
        self.rt = rt
        self.obj = obj
        self._json = item_json

    @property
    def item_json(self) -> str:
        """The object as a list item: no kind, no apiVersion."""
        if self._json is None:
            self._json = dumps(self.obj)
        return self._json

    @property
    def full_json(self) -> str:
        """The object as a GET or watch event carries it: kind and apiVersion first."""
        head = f'{{"kind":{dumps(self.rt.kind)},"apiVersion":{dumps(self.rt.api_version)}'
        item = self.item_json
        return head + "}" if item == "{}" else head + "," + item[1:]

    @property
    def meta(self) -> Obj:
        """The object's metadata (read only)."""
        meta: Obj = self.obj.get("metadata") or {}
        return meta

    def full(self) -> Obj:
        """A private deep copy with kind and apiVersion, for Python callers."""
        out: Obj = json.loads(self.full_json)
        return out


@dataclass
class Event:
    rv: int
    type: str
    entry: Entry
    old: Entry | None = None


@dataclass(eq=False)  # identity hashing: watchers live in a set
class Watcher:
    rt: ResourceType
    query: Query
    events: queue.SimpleQueue[Event | None] = field(default_factory=queue.SimpleQueue)


@dataclass
class Snapshot:
    """The entries of a list at its first page, so that continued pages stay consistent."""

    rv: int
    entries: list[Entry]
    continues: int = 0
    expire_at: int | None = None


class Gone(Exception):
    """A watch asked for history the store no longer has (answered as an ERROR event)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def object_key(namespace: str, name: str) -> str:
    """Keys sort like etcd's ``/registry/<resource>/<ns>/<name>``: lists come out in this order."""
    return f"{namespace}/{name}" if namespace else name


class Store:
    """Objects, the global resourceVersion counter, watch history and list snapshots.

    One lock guards everything: simulated clusters are small enough that contention never
    shows, and a single lock makes "list then watch from its resourceVersion" trivially
    consistent, which is the property clients depend on.
    """

    HISTORY = 50_000  # events kept for watches that resume; older ones answer 410
    SNAPSHOTS = 512

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.rv = 1  # never "0": a watch from "0" means "from any point", not "from the start"
        self.buckets: dict[ResourceType, dict[str, Entry]] = {rt: {} for rt in RESOURCES}
        self._sorted: dict[ResourceType, list[str] | None] = dict.fromkeys(RESOURCES)
        self._entries: dict[ResourceType, list[Entry] | None] = dict.fromkeys(RESOURCES)
        self.history: collections.deque[Event] = collections.deque()
        self.history_floor = 0
        self.watchers: set[Watcher] = set()
        self.snapshots: collections.OrderedDict[str, Snapshot] = collections.OrderedDict()
        self.token_serial = 0
        self.tokens_valid_from = 0
        self.expire_after_pending: int | None = None

    # -- writes ------------------------------------------------------------------------------

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def commit(self, rt: ResourceType, key: str, entry: Entry | None, *,
               deleted: Entry | None = None) -> None:
        """Install a new version (or remove with ``deleted`` as the final state) and notify."""
        bucket = self.buckets[rt]
        old = bucket.get(key)
        self._entries[rt] = None
        if entry is not None:
            if old is None:
                self._sorted[rt] = None
            bucket[key] = entry
            self._emit(Event(self.rv, "MODIFIED" if old else "ADDED", entry, old))
        else:
            if old is None:
                return
            del bucket[key]
            self._sorted[rt] = None
            self._emit(Event(self.rv, "DELETED", deleted or old, old))

    def _emit(self, ev: Event) -> None:
        if len(self.history) >= self.HISTORY:
            self.history_floor = self.history.popleft().rv
        self.history.append(ev)
        for w in self.watchers:
            if w.rt is ev.entry.rt:
                w.events.put(ev)

    # -- reads -------------------------------------------------------------------------------

    def sorted_keys(self, rt: ResourceType) -> list[str]:
        keys = self._sorted[rt]
        if keys is None:
            keys = sorted(self.buckets[rt])
            self._sorted[rt] = keys
        return keys

    def scope(self, rt: ResourceType, namespace: str | None) -> list[Entry]:
        """Entries of one namespace (or all), in key order, as of now.

        The full list is cached until the next write to the resource and is never mutated,
        so it doubles as the consistent snapshot that continued lists are served from.
        """
        keys = self.sorted_keys(rt)
        entries = self._entries[rt]
        if entries is None:
            bucket = self.buckets[rt]
            entries = [bucket[k] for k in keys]
            self._entries[rt] = entries
        if namespace is None or not rt.namespaced:
            return entries
        lo = bisect.bisect_left(keys, namespace + "/")
        hi = bisect.bisect_left(keys, namespace + "0")  # "0" sorts right after "/"
        return entries[lo:hi]

    # -- watches -----------------------------------------------------------------------------

    def open_watch(self, rt: ResourceType, query: Query,
                   rv: str | None) -> tuple[list[Event], Watcher]:
        """Register a watcher and return what it must be sent first, atomically."""
        with self.lock:
            if rv in (None, "", "0"):
                initial = [Event(self.rv, "ADDED", e) for e in self.scope(rt, query.namespace)]
            else:
                try:
                    since = int(str(rv))
                except ValueError:
                    raise ApiError(400, f"invalid resource version: {rv}") from None
                if since < self.history_floor:
                    raise Gone(f"too old resource version: {since} ({self.history_floor + 1})")
                initial = []
                for ev in reversed(self.history):
                    if ev.rv <= since:
                        break
                    if ev.entry.rt is rt:
                        initial.append(ev)
                initial.reverse()
            watcher = Watcher(rt, query)
            self.watchers.add(watcher)
            return initial, watcher

    def close_watch(self, watcher: Watcher) -> None:
        with self.lock:
            self.watchers.discard(watcher)

    def wake_watchers(self) -> None:
        """End every open watch (the server is going down)."""
        with self.lock:
            for w in self.watchers:
                w.events.put(None)


    # -- writes that skip the API rules, and real removal -------------------------------------

    def install(self, rt: ResourceType, key: str, body: Obj, now: str, *,
                serialize: bool = False) -> Entry:
        """Store ``body`` as the new version at ``key`` (lock held): uid and creationTimestamp
        kept from the version it replaces (or new), resourceVersion always new."""
        meta = body["metadata"]
        old = self.buckets[rt].get(key)
        old_meta = old.meta if old is not None else {}
        meta["uid"] = meta.get("uid") or old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = (meta.get("creationTimestamp")
                                     or old_meta.get("creationTimestamp") or now)
        meta["resourceVersion"] = str(self.next_rv())
        entry = Entry(rt, body, dumps(body) if serialize else None)
        self.commit(rt, key, entry)
        return entry

    def get(self, rt: ResourceType, namespace: str, name: str) -> Entry | None:
        """The current version of one object, or None."""
        with self.lock:
            return self.buckets[rt].get(object_key(namespace, name))

    @staticmethod
    def with_rv(entry: Entry, rv: int, **meta_changes: Any) -> Entry:
        """A copy of ``entry`` at resourceVersion ``rv`` with some metadata changed."""
        obj = dict(entry.obj)
        obj["metadata"] = {**entry.meta, "resourceVersion": str(rv), **meta_changes}
        return Entry(entry.rt, obj)

    @staticmethod
    def finalizers(entry: Entry) -> list[str]:
        """What keeps the object from going away (a namespace's spec.finalizers too)."""
        found = list(entry.meta.get("finalizers") or [])
        if entry.rt.kind == "Namespace":
            found += (entry.obj.get("spec") or {}).get("finalizers") or []
        return found

    def remove(self, rt: ResourceType, key: str, entry: Entry, **meta_changes: Any) -> Entry:
        """Delete for real (lock held); a namespace takes its content with it."""
        final = self.with_rv(entry, self.next_rv(), **meta_changes)
        self.commit(rt, key, None, deleted=final)
        if rt.kind == "Namespace":
            name = entry.meta["name"]
            for other in RESOURCES:
                if other.namespaced:
                    for e in self.scope(other, name):
                        k = object_key(name, e.meta["name"])
                        self.commit(other, k, None, deleted=self.with_rv(e, self.next_rv()))
        return final

    # -- paged lists ---------------------------------------------------------------------------

    def _encode_token(self, rv: int, last: str, sid: str | None) -> str:
        self.token_serial += 1
        token = {"v": "meta.k8s.io/v1", "rv": rv, "start": last + "\x00", "sid": sid,
                 "n": self.token_serial}
        return base64.urlsafe_b64encode(dumps(token).encode()).decode().rstrip("=")

    @staticmethod
    def _decode_token(text: str) -> Obj:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            token = json.loads(raw)
            if not isinstance(token, dict) or token.get("v") != "meta.k8s.io/v1":
                raise ValueError("unsupported version")
            int(token["rv"])
            str(token["start"])
            int(token["n"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, f"continue key is not valid: {exc}") from None
        return token

    def page(self, rt: ResourceType, query: Query, limit_text: str | None, cont: str | None,
             page_max: int) -> tuple[list[Entry], Obj]:
        """Select one page of a list; returns the entries and the list metadata."""
        try:
            limit = int(limit_text or 0)
        except ValueError:
            raise ApiError(400, f"invalid limit: {limit_text!r}") from None
        if limit > 0:
            limit = min(limit, page_max)
        with self.lock:
            snap: Snapshot | None = None
            sid: str | None = None
            if cont:
                token = self._decode_token(cont)
                last = str(token["start"]).rstrip("\x00")
                sid = token.get("sid")
                snap = self.snapshots.get(sid) if isinstance(sid, str) else None
                expired = int(token["n"]) < self.tokens_valid_from or (
                    int(token["rv"]) != -1 and snap is None)
                if snap is not None and not expired:
                    snap.continues += 1
                    if snap.expire_at is not None and snap.continues >= snap.expire_at:
                        del self.snapshots[str(sid)]
                        expired = True
                if expired:
                    fresh = self._encode_token(-1, last, None)
                    raise ApiError(410, _EXPIRED_CONTINUE, list_meta={"continue": fresh})
                if snap is None:  # an inconsistent (rv -1) token: continue on live data
                    entries = self.scope(rt, query.namespace)
                    rv = self.rv
                else:
                    self.snapshots.move_to_end(str(sid))
                    entries, rv = snap.entries, snap.rv
                start = _offset_after(entries, last)
            else:
                entries = self.scope(rt, query.namespace)
                rv, start = self.rv, 0
            items: list[Entry] = []
            pos = start
            while pos < len(entries) and (limit <= 0 or len(items) < limit):
                e = entries[pos]
                pos += 1
                if query.matches(e.obj):
                    items.append(e)
            meta: Obj = {"resourceVersion": str(rv)}
            if pos < len(entries) and limit > 0:
                if snap is None:
                    sid = uuid.uuid4().hex
                    snap = Snapshot(rv, entries)
                    if self.expire_after_pending is not None:
                        snap.expire_at = self.expire_after_pending
                        self.expire_after_pending = None
                    self.snapshots[sid] = snap
                    while len(self.snapshots) > self.SNAPSHOTS:
                        self.snapshots.popitem(last=False)
                last_e = entries[pos - 1]
                meta["continue"] = self._encode_token(
                    rv, object_key(last_e.meta.get("namespace", ""), last_e.meta["name"]), sid)
                if not query.has_selectors:
                    meta["remainingItemCount"] = len(entries) - pos
            elif snap is not None and sid is not None:
                self.snapshots.pop(sid, None)
        return items, meta


def _offset_after(entries: list[Entry], last: str) -> int:
    """Position after the key ``last`` in entries that are in key order."""
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        m = entries[mid].meta
        if object_key(m.get("namespace", ""), m["name"]) <= last:
            lo = mid + 1
        else:
            hi = mid
    return lo


def project(ev: Event, query: Query) -> tuple[str, Entry] | None:
    """What a watcher with ``query`` sees of ``ev``: like the real server, an object that
    starts matching arrives as ADDED and one that stops matching leaves as DELETED."""
    new_ok = query.matches(ev.entry.obj)
    if ev.type == "ADDED":
        return ("ADDED", ev.entry) if new_ok else None
    if ev.type == "DELETED":
        return ("DELETED", ev.entry) if query.matches((ev.old or ev.entry).obj) else None
    old_ok = ev.old is not None and query.matches(ev.old.obj)
    if new_ok and old_ok:
        return "MODIFIED", ev.entry
    if new_ok:
        return "ADDED", ev.entry
    if old_ok:
        return "DELETED", ev.entry
    return None


class WatchStream:
    """The chunks of one watch: newline-delimited JSON events until the deadline or the store
    ending its watches (the server going down); an empty chunk while idle lets the HTTP base
    notice a client that hung up.  ``close()`` unregisters the watcher, however it ended."""

    def __init__(self, store: Store, watcher: Watcher, initial: list[Event], query: Query,
                 timeout: float) -> None:
        self.store = store
        self.watcher = watcher
        self.initial = initial
        self.query = query
        self.deadline = time.monotonic() + timeout

    def __iter__(self) -> Iterator[bytes]:
        yield self._lines(self.initial)
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                ev = self.watcher.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                yield b""
                continue
            batch = [ev]
            while True:  # coalesce bursts (put_many) into one write
                try:
                    batch.append(self.watcher.events.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                return
            yield self._lines([e for e in batch if e is not None])

    def _lines(self, events: list[Event]) -> bytes:
        lines = []
        for ev in events:
            seen = project(ev, self.query)
            if seen is not None:
                lines.append(f'{{"type":"{seen[0]}","object":{seen[1].full_json}}}\n')
        return "".join(lines).encode()

    def close(self) -> None:
        """Stop receiving events."""
        self.store.close_watch(self.watcher)
