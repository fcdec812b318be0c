"""API-only sessions: without ``db_url`` the sessions check finds what DB mode finds.

One simulated world, every session problem planted in it, judged by two engines side by
side (each with its own state): one reads the hub database, one reads only the Hub API.
Both must report the planted problems and nothing else, with the same kinds, subjects,
severities and planned actions. Then the token's scopes: each one the check needs,
removed in turn, makes the hub's target an error naming it, and nothing is acted on.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from watchdogd.engine import Engine
from watchdogd.report import PassReport
from watchdogd.sim.world import SimClock, World

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
#: what the sessions check needs with a proxy configured (README, "Running it against a
#: real hub"); read:users is not needed, list:services / read:services are the culler's
LEAST = ("list:users", "read:servers", "admin:server_state", "delete:servers", "proxy")


def plant_everything(world: World) -> None:
    world.healthy(users=6, running=4)
    world.stale_session("stella")
    world.dead_session("dora")
    world.orphan_pod("otto")
    world.missing_route("mira")
    world.stale_route("ruth")
    world.route_mismatch("larry")
    world.stuck_spawn("spencer", minutes=30)
    world.stuck_stop("stan")
    world.invalid_username("_alice")


def engine_for(world: World, tmp_path: Path, *, hub_db: bool, dry_run: bool = True,
               ) -> Engine:
    """An engine on this world in one mode, with a state database of its own."""
    world.hub_db = hub_db
    world.state_path = tmp_path / f"state-{'db' if hub_db else 'api'}.db"
    world.write_config()
    return world.engine(dry_run=dry_run)


def findings(report: PassReport) -> set[tuple[Any, ...]]:
    [check] = report.checks
    assert check.status == "findings", check.error
    return {(f.tracked.finding.kind, f.tracked.finding.subject, f.tracked.finding.severity,
             f.tracked.finding.action.name if f.tracked.finding.action else None,
             f.tracked.finding.action.call if f.tracked.finding.action else None)
            for f in check.findings}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = SimClock(T0)
    with World(tmp_path / "world", clock=clock, sessions={},
               remediation={"confirm_after": 1}) as w:
        plant_everything(w)
        yield w


def test_db_mode_and_api_mode_find_the_same_problems(world: World, tmp_path: Path) -> None:
    by_db = engine_for(world, tmp_path, hub_db=True)
    by_api = engine_for(world, tmp_path, hub_db=False)
    assert "db_url_file" not in world.config_data()["hubs"]["main"]
    for engine in (by_db, by_api):  # first sightings of the pending spawn and stop
        engine.run_pass(only=["sessions"])
    assert isinstance(world.clock, SimClock)
    world.clock.advance(minutes=20)
    found_db = findings(by_db.run_pass(only=["sessions"]))
    found_api = findings(by_api.run_pass(only=["sessions"]))
    # the oracle: what was planted, and each kind's action
    assert {(kind, subject) for kind, subject, *_ in found_db} == {
        (p.kind, p.subject) for p in world.planted}
    assert {(kind, action) for kind, _, _, action, _ in found_db} == {
        (p.kind, p.action) for p in world.planted}
    assert found_api == found_db


@pytest.mark.parametrize("missing", LEAST)
def test_a_missing_scope_is_an_error_naming_it_and_nothing_is_done(
        world: World, tmp_path: Path, missing: str) -> None:
    token = secrets.token_hex(16)
    world.hub.add_token(token, [s for s in LEAST if s != missing])
    engine_for(world, tmp_path, hub_db=False, dry_run=False)  # writes the API-mode config
    (world.secrets_dir / "hub_api_token").write_text(token + "\n", encoding="utf-8")
    engine = world.engine(dry_run=False)  # reads the token file again
    before = (world.hub.users(), sorted(world.chp.routes), world.kube.list("Pod", "jhub"))
    for _ in range(2):  # confirm_after 1: a second pass would act on the first's findings
        [check] = engine.run_pass(only=["sessions"]).checks
        assert check.status == "error"
        assert check.error is not None and f"lacks the scope {missing} " in check.error
        assert not check.findings
    assert (world.hub.users(), sorted(world.chp.routes),
            world.kube.list("Pod", "jhub")) == before
    assert world.hub.is_running("stella")  # the stale session is still there


def test_the_least_token_repairs(world: World, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    world.hub.add_token(token, LEAST)
    world.remediation = {**world.remediation, "enabled": ["stop-server", "sync-routes"]}
    engine_for(world, tmp_path, hub_db=False, dry_run=False)
    (world.secrets_dir / "hub_api_token").write_text(token + "\n", encoding="utf-8")
    engine = world.engine(dry_run=False)
    report = engine.run_pass(only=["sessions"])
    [check] = report.checks
    assert check.status == "findings", check.error
    done = {(f.tracked.finding.kind, f.tracked.finding.subject): f.action_status
            for f in check.findings}
    assert done[("stale-session", "stella")] == "done"
    assert done[("missing-route", "mira")] == "done"
    assert not world.hub.is_running("stella")
    assert "/user/mira" in world.chp.routes
