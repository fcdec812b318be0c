"""The culler check through the real engine against a simulated hub (HubSim's GET /services).

The world's clock moves five minutes a pass; the culler part lists z2jh's culler service and
plants servers idle for hours. The oracle is the simulated hub itself: which servers run and
what it lists.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from watchdogd.sim.parts import CullerPart
from watchdogd.sim.world import SimClock, World


@pytest.fixture
def world() -> Iterator[World]:
    with World(clock=SimClock(), parts=[CullerPart()]) as world:
        world.healthy(users=4, running=3)
        yield world


def culler_pass(world: World, **engine: Any) -> dict[str, Any]:
    report = world.engine(dry_run=True, **engine).run_pass(only=["culler"]).as_json()
    [check] = report["checks"]
    assert check["status"] != "error", check["error"]
    return check


def by_kind(check: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["kind"]: f for f in check["findings"]}


def test_idle_servers_are_reported_and_resolve_when_stopped(world: World) -> None:
    part = world.parts["culler"]
    assert isinstance(part, CullerPart)
    part.idle_servers(["hedy", "robin"], [timedelta(hours=2), timedelta(hours=6)])
    first = by_kind(culler_pass(world))
    overdue = first["culler-overdue"]
    assert overdue["key"] == "culler/main/culler-overdue/main"
    assert overdue["action"] is None  # report only
    assert (overdue["evidence"]["count"], overdue["evidence"]["servers"]) == (2, ["robin", "hedy"])
    # report only: the hub still runs them
    assert world.hub.is_running("hedy") and world.hub.is_running("robin")
    # the culler comes back and stops them: the finding resolves
    world.hub.stop_server("robin")
    world.hub.stop_server("hedy")
    assert isinstance(world.clock, SimClock)
    world.clock.advance(minutes=5)
    after = culler_pass(world)
    assert after["findings"] == []
    assert after["resolved"] == ["culler/main/culler-overdue/main"]


def test_healthy_servers_age_into_overdue_only_past_every_limit(world: World) -> None:
    """z2jh's defaults: 1 h timeout + 10 min cull interval + 15 min margin."""
    assert isinstance(world.clock, SimClock)
    world.clock.advance(minutes=84)
    assert culler_pass(world)["findings"] == []
    world.clock.advance(minutes=2)
    overdue = by_kind(culler_pass(world))["culler-overdue"]
    assert overdue["evidence"]["count"] == 3  # the healthy servers, never active since start
    assert overdue["evidence"]["limit_s"] == 85 * 60


def test_a_configured_culler_the_hub_does_not_list(world: World) -> None:
    world.hub.remove_service("jupyterhub-idle-culler")
    assert culler_pass(world)["findings"] == []  # nothing configured: nothing to judge
    world.write_config()
    text = world.config_path.read_text()
    world.config_path.write_text(text.replace(
        "[hubs.main]\n", '[hubs.main]\nculler_service = "jupyterhub-idle-culler"\n'))
    missing = by_kind(culler_pass(world))["culler-missing"]
    assert missing["subject"] == "jupyterhub-idle-culler"
    assert missing["severity"] == "warning"


def test_one_read_of_the_servers_for_sessions_and_culler(world: World) -> None:
    """The culler check names the sessions check's read: a pass with both lists users once."""
    world.hub.requests.clear()
    report = world.engine(dry_run=True).run_pass(only=["sessions", "culler"]).as_json()
    assert report["summary"]["errors"] == 0
    user_lists = [path for method, path in world.hub.requests
                  if method == "GET" and path.startswith("/hub/api/users?")]
    assert len(user_lists) == 1, world.hub.requests
    assert ("GET", "/hub/api/services") in world.hub.requests
