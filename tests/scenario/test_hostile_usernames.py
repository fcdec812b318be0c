"""Hostile usernames in the hub DB, the proxy and the pods: judged and repaired, never a crash.

Quotes, SQL-looking text, unicode, a leading underscore and 200 characters travel through
the real sources (SQL, REST URLs, label selectors, JSON) and come back out as the same
subject; the repair goes to the right user through a correctly escaped Hub API URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from watchdogd.sim.world import World

HOSTILE = [
    "o'brien",
    'say "hi"; drop table users;--',
    "ünïcödé-名前",
    "_alice",
    "a" * 200,
    "slash/and?query#frag",
    "percent%2Fencoded",
]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with World(tmp_path / "world", remediation={"confirm_after": 1}) as w:
        # Enough healthy servers that four stale ones are a plausible share (10%).
        w.healthy(users=40, running=36)
        yield w


def test_hostile_names_are_judged_and_repaired(world: World) -> None:
    stale = HOSTILE[::2]
    for name in HOSTILE:
        if name in stale:
            world.stale_session(name)  # started, then its pod deleted behind the hub's back
        else:
            world.hub.start_server(name)
    report = world.engine().run_pass(only=["sessions"])
    [check] = report.checks
    assert check.status == "findings", check.error
    found = {(f.tracked.finding.kind, f.tracked.finding.subject): str(f.action_status)
             for f in check.findings}
    assert found == {("stale-session", name): "done" for name in stale}
    for name in HOSTILE:
        assert world.hub.is_running(name) == (name not in stale), name
    # The next pass sees a clean world: nothing hostile was misread as drift.
    again = world.engine().run_pass(only=["sessions"])
    assert again.checks[0].findings == []
    assert sorted(again.checks[0].resolved) == sorted(
        f"sessions/main/stale-session/{name}" for name in stale)


def test_escape_scheme_flags_names_kubernetes_would_reject(world: World) -> None:
    world.invalid_username("_alice", kubespawner_version="6.2.0")
    world.hub.add_user("a" * 200)
    world.hub.add_user("bob")
    report = world.engine().run_pass(only=["sessions"])
    labels = {f.tracked.finding.subject for f in report.checks[0].findings
              if f.tracked.finding.kind == "invalid-username-label"}
    assert "_alice" in labels
    assert "a" * 200 in labels
    assert "bob" not in labels
