"""Notifications while the receiver is down, failing or slow, across daemon restarts.

A hub world drifts and is repaired while the notification endpoint (apprise ``json://`` to
a real local HTTP server) goes down, answers 503 or times out for several passes, and the
daemon restarts in between. When the receiver is back, every state change of the reports
(new, escalated, reminder, action, resolved, breaker) arrives exactly once, and per finding
in the order it happened; nothing queued before a restart is lost.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.safety.procs import check
from tests.safety.profile import SAFETY, examples
from tests.safety.receiver import MODES, Receiver
from tests.safety.sessions_world import PROBLEMS, SafeWorld, SessionsModel
from tests.safety.stats import STATS
from watchdogd.model import ActionStatus
from watchdogd.report import PassReport
from watchdogd.sim.world import SimClock

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
NOTIFY = {"notify": {"timeout": "0.5s", "retry_after": "1m", "repeat_after": "1h"}}
ACTION_EVENTS = {ActionStatus.DONE, ActionStatus.FAILED, ActionStatus.SKIPPED}

step = st.fixed_dictionaries({
    "mode": st.sampled_from(MODES),
    "restart": st.booleans(),
    "plant": st.lists(st.sampled_from(PROBLEMS), max_size=2),
})
spec_strategy = st.fixed_dictionaries({
    "confirm_after": st.sampled_from([1, 2]),
    "problems": st.lists(st.sampled_from(PROBLEMS), min_size=1, max_size=4),
    "steps": st.lists(step, min_size=3, max_size=7),
})


class Expect:
    """The state changes the reports show, as (finding key, event), in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.announced: set[str] = set()

    def add(self, report: PassReport) -> None:
        for result in report.checks:
            for entry in result.findings:
                finding = entry.tracked.finding
                if entry.tracked.event:
                    self.events.append((finding.key, entry.tracked.event))
                    self.announced.add(finding.key)
                if finding.action is not None and entry.action_status in ACTION_EVENTS:
                    self.events.append((finding.key, "action"))
            for key in result.resolved:
                if key in self.announced:
                    self.events.append((key, "resolved"))
                    self.announced.discard(key)
            if result.breaker:
                self.events.append((f"{result.check}/{result.target}/breaker", "breaker"))


def delivered_exactly_once_in_order(outbox: list[dict[str, Any]], rx: Receiver,
                                    expect: Expect) -> list[str]:
    """Compare the outbox, what arrived, and what the reports said happened."""
    problems = []
    undelivered = [r for r in outbox if r["delivered_at"] is None]
    if undelivered:
        problems.append(f"{len(undelivered)} notice(s) never delivered: "
                        f"{[(r['finding_key'], r['event']) for r in undelivered]}")
    queued = Counter((r["finding_key"], r["event"]) for r in outbox)
    wanted = Counter(expect.events)
    if queued != wanted:
        problems.append(f"queued {dict(queued - wanted)} not in the reports; reported "
                        f"{dict(wanted - queued)} never queued")
    arrived = [(m["title"], m["message"]) for m in rx.messages]
    sent = Counter((r["title"], r["body"]) for r in outbox)
    extra, missing = Counter(arrived) - sent, sent - Counter(arrived)
    if extra or missing:
        problems.append(f"arrived more than once: {_titles(extra)}; never arrived: "
                        f"{_titles(missing)}")
    for key in {r["finding_key"] for r in outbox}:
        mine = [(r["title"], r["body"]) for r in outbox if r["finding_key"] == key]
        order = [m for m in arrived if m in set(mine)]
        if order != mine:
            problems.append(f"{key}: arrived as {_titles(order)}, happened as {_titles(mine)}")
    return problems


def _titles(items: Any) -> list[str]:
    return [title for title, _ in items][:6]


def run_outage(spec: dict[str, Any]) -> list[str]:
    clock = SimClock(T0)
    with Receiver() as rx, SafeWorld(clock=clock, notify_url=rx.url, timeout="2s",
                                     remediation={"confirm_after": spec["confirm_after"]},
                                     sessions={"stuck_stop_after": "10m"},
                                     extra=NOTIFY) as world:
        model = SessionsModel(world, clock)
        for _ in range(3):
            model.start_healthy()
        for kind in spec["problems"]:
            model.plant(kind)
        expect = Expect()
        engine = world.engine()
        for item in spec["steps"]:
            for kind in item["plant"]:
                model.plant(kind)
            rx.set_mode(item["mode"])
            if item["restart"]:
                engine = world.engine()  # a new process: only the state file carries over
            expect.add(engine.run_pass(["sessions"]))
            world.hub.check_restart()
            clock.advance(minutes=20)
        rx.set_mode("up")
        engine = world.engine()
        for _ in range(10):
            expect.add(engine.run_pass(["sessions"]))
            world.hub.check_restart()
            clock.advance(minutes=20)
            if all(r["delivered_at"] is not None for r in engine.store.outbox()):
                break
        outbox = engine.store.outbox()
        # Delivered after at least one failed attempt: queued through an outage.
        STATS.add("notices_after_outage", sum(1 for r in outbox
                                              if r["delivered_at"] and r["attempts"] > 1))
        problems = delivered_exactly_once_in_order(outbox, rx, expect)
        lost = sum(1 for p in problems if "never" in p)
        STATS.add("lost_records", lost)
        STATS.add("violations", len(problems) - lost)
        STATS.add("worlds")
        return problems


@settings(SAFETY, max_examples=examples(10))
@given(spec=spec_strategy)
def test_outages_and_restarts_lose_and_repeat_nothing(spec: dict[str, Any]) -> None:
    problems = run_outage(spec)
    assert not problems, "\n".join(problems)


def test_receiver_down_across_processes_then_back(tmp_path: Path) -> None:
    """Three ``watchdogd check`` processes while the receiver is down, then one with it up."""
    # A CronJob's next run comes minutes later; here seconds later, so retry at once.
    extra = {"notify": {**NOTIFY["notify"], "retry_after": "0.01s"}}
    with Receiver() as rx, SafeWorld(tmp_path / "world", notify_url=rx.url, timeout="5s",
                                     extra=extra, remediation={"confirm_after": 2}) as world:
        world.healthy(users=4, running=3)
        world.stale_session("zed")
        world.orphan_pod("olga")
        rx.set_mode("down")
        for _ in range(3):
            run = check(world.config_path)
            assert run.code == 0, run.stderr
        assert rx.messages == []
        rx.set_mode("up")
        run = check(world.config_path)
        assert run.code == 0, run.stderr
        titles = [m["title"] for m in rx.messages]
        for want in ("[critical] stale-session zed", "action stop-server done: zed",
                     "[resolved] stale-session zed", "[warning] orphan-pod olga",
                     "action delete-pod done: olga", "[resolved] orphan-pod olga"):
            assert sum(want in t for t in titles) == 1, (want, titles)
        zed = [t for t in titles if " zed " in t or t.endswith(": zed (sessions/main)")]
        assert [("resolved" in t, "action" in t) for t in zed] == [
            (False, False), (False, True), (True, False)], zed
        STATS.add("notices_after_outage", len(rx.messages))
        # Delivered means delivered: a fourth process sends nothing again.
        count = len(rx.messages)
        assert check(world.config_path).code == 0
        assert len(rx.messages) == count
