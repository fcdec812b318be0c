"""Delivery against receivers exactly-once cannot survive: late, refusing, hostile text.

The receiver is a real local HTTP server that apprise (``json://``) posts to. Mode
"late" keeps every message and answers after the notify timeout: any sender that
retries sends it again, so the test bounds the duplicates instead of forbidding them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.safety.receiver import Receiver
from tests.unit.test_engine import T0, Adapter, FakeWorld, make_config
from watchdogd.checks import REGISTRY
from watchdogd.config import NotifyConfig
from watchdogd.engine import Engine
from watchdogd.notify import MAX_BACKOFF, Notifier
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.store import Store


def engine_for(tmp_path: Path, world: FakeWorld, rx: Receiver, clock: SimClock,
               **remediation: Any) -> Engine:
    config = make_config(tmp_path, **remediation)
    urls_file = tmp_path / "apprise.txt"
    urls_file.write_text(rx.url + "\n")
    notify = NotifyConfig(urls_file=str(urls_file), retry_after=timedelta(minutes=1),
                          timeout=timedelta(seconds=0.3))
    factories = {n: (lambda _c, _n: Adapter(world)) for n in ("hubdb", "hubapi", "proxy", "kube")}
    return Engine(config, Store(config.state.resolved_url()), Sources(config, factories),
                  notifier=Notifier.from_config(notify), clock=clock,
                  registry={"sessions": REGISTRY["sessions"]})


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def titles_with(rx: Receiver, text: str) -> list[str]:
    return [m["title"] for m in list(rx.messages) if text in m["title"]]


def test_late_receiver_gets_a_notice_at_most_twice_and_others_are_not_held(
        tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    with Receiver(slow_for=1.0) as rx:
        rx.set_mode("late")
        engine = engine_for(tmp_path, world, rx, clock, confirm_after=1)
        engine.run_pass()  # alice announced and stopped; the receiver keeps "new", answers late
        wait_until(lambda: len(titles_with(rx, "stale-session alice")) == 1, "the first copy")
        [first] = [r for r in engine.store.outbox() if r["event"] == "new"]
        assert first["delivered_at"] is None and first["set_aside_at"] is None
        assert "may have kept it" in first["last_error"]
        # The receiver is healthy again; a later finding's notice must not wait
        # behind alice's, which is in its post-timeout backoff.
        rx.set_mode("up")
        world.users.append("bob")
        world.pods.append({"metadata": {"name": "jupyter-bob", "namespace": "jhub", "uid": "b",
                                        "annotations": {"hub.jupyter.org/username": "bob"}},
                           "status": {"phase": "Running"}})
        clock.advance(minutes=20)
        engine.run_pass()
        assert titles_with(rx, "orphan-pod bob"), [m["title"] for m in rx.messages]
        assert len(titles_with(rx, "stale-session alice")) == 1
        # Alice's own later notices keep her order: none arrives before her retry.
        assert not titles_with(rx, "alice (sessions/main)")[1:]
        rx.set_mode("late")
        for _ in range(5):  # passes at +40m .. +120m: the receiver late every time
            clock.advance(minutes=20)
            engine.run_pass()
        late_copies = titles_with(rx, "[critical] stale-session alice")
        # The first try, then at most one per MAX_BACKOFF: over 120 minutes, 3 in all
        # (sending on every pass would have made it 7).
        assert timedelta(hours=1) == MAX_BACKOFF
        assert 1 <= len(late_copies) <= 3, late_copies
        rx.set_mode("up")
        for _ in range(6):
            clock.advance(minutes=30)
            engine.run_pass()
            if all(r["delivered_at"] or r["set_aside_at"] for r in engine.store.outbox()):
                break
        assert all(r["delivered_at"] for r in engine.store.outbox()), engine.store.outbox()
        assert len(titles_with(rx, "[critical] stale-session alice")) == len(late_copies) + 1
        alice = [t for t in (m["title"] for m in rx.messages) if "alice" in t]
        # Per finding, each event's first arrival keeps the order it happened in.
        firsts = [next(i for i, t in enumerate(alice) if want in t)
                  for want in ("stale-session alice", "action stop-server done: alice",
                               "[resolved] stale-session alice")]
        assert firsts == sorted(firsts), alice


def test_late_receiver_over_four_passes_gets_a_notice_at_most_twice(tmp_path: Path) -> None:
    """The issue's case: one critical notice, four passes, the receiver late every time."""
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    with Receiver(slow_for=1.0) as rx:
        rx.set_mode("late")
        engine = engine_for(tmp_path, world, rx, clock, confirm_after=1, dry_run=True)
        for _ in range(4):
            engine.run_pass()
            clock.advance(minutes=20)
        wait_until(lambda: rx.attempts >= 1, "a first attempt")
        copies = titles_with(rx, "[critical] stale-session alice")
        assert 1 <= len(copies) <= 2, copies
        [row] = [r for r in engine.store.outbox() if r["event"] == "new"]
        assert row["attempts"] == len(copies)


def test_refused_notice_is_set_aside_and_later_ones_are_delivered(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    with Receiver() as rx:
        rx.set_mode("reject")
        engine = engine_for(tmp_path, world, rx, clock, confirm_after=1, dry_run=True)
        engine.run_pass()
        [refused] = engine.store.outbox()
        assert refused["set_aside_at"] is not None
        assert refused["last_error"] == "refused (HTTP 400)"
        assert refused["attempts"] == 1
        assert engine.store.outbox_counts() == {"queued": 0, "delivered": 0, "set_aside": 1}
        rx.set_mode("up")
        world.running.pop(("alice", ""))  # alice's session ends: her "resolved" is queued
        world.routes.pop("/user/alice")
        clock.advance(hours=3)
        engine.run_pass()
        titles = [m["title"] for m in rx.messages]
        assert len(titles) == 1 and "[resolved] stale-session alice" in titles[0], titles
        # Refused means refused: never sent again, and it stays visible.
        clock.advance(hours=3)
        engine.run_pass()
        assert len(rx.messages) == 1
        assert engine.store.outbox_counts() == {"queued": 0, "delivered": 1, "set_aside": 1}


def test_ansi_and_nul_in_a_subject_arrive_escaped(tmp_path: Path) -> None:
    world = FakeWorld()
    hostile = "eve\x1b[2J\x1b]0;pwned\x07\x00\nfake line"
    world.add(hostile, pod=False)
    clock = SimClock(T0)
    with Receiver() as rx:
        engine = engine_for(tmp_path, world, rx, clock, confirm_after=1, dry_run=True)
        engine.run_pass()
        assert rx.messages, "nothing arrived"
        for message in rx.messages:
            for field in ("title", "message"):
                text = message[field]
                assert not any(ord(c) < 0x20 and c != "\n" for c in text), repr(text)
                assert "\x7f" not in text
        mine = [m for m in rx.messages if "eve" in m["title"]]
        assert mine, [m["title"] for m in rx.messages]
        assert "eve\\x1b[2J\\x1b]0;pwned\\x07\\x00\\nfake line" in mine[0]["title"]
        assert "\n" not in mine[0]["title"]
