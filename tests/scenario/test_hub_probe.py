"""A hub that stops answering: ``hub-unresponsive``, ``check-failing``, a restart an hour.

The simulated world (KubeSim + ChpSim with its public side + HubSim) over real HTTP; the
oracle is the simulators' own truth (the hub's restart count, its pod), not watchdogd's view.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from watchdogd.sim.world import SimClock, World

RESTART = ["stop-server", "sync-routes", "delete-pod", "restart-hub"]


@pytest.fixture
def world(tmp_path: Any) -> Iterator[World]:
    with World(tmp_path / "world", probes=True, timeout="1s", clock=SimClock(),
               remediation={"enabled": RESTART}) as w:
        w.healthy(users=4, running=2)
        yield w


def passed(world: World, engine: Any, minutes: float = 1) -> dict[str, Any]:
    report: dict[str, Any] = engine.run_pass(only=["sessions", "probes"]).as_json()
    clock = world.clock
    assert isinstance(clock, SimClock)
    clock.advance(minutes=minutes)
    return report


def restarts(world: World) -> int:
    """How often the simulated hub was restarted (a deleted pod restarts it right away)."""
    world.hub.check_restart()
    return world.hub.restarts


def probe_finding(report: dict[str, Any]) -> dict[str, Any] | None:
    [check] = [c for c in report["checks"] if c["check"] == "probes"]
    found = [f for f in check["findings"] if f["kind"] == "hub-unresponsive"]
    return found[0] if found else None


def test_a_healthy_hub_answers_its_probe(world: World) -> None:
    report = passed(world, world.engine())
    assert [(c["check"], c["status"]) for c in report["checks"]] == [
        ("sessions", "ok"), ("probes", "ok")]


def test_a_gateway_timeout_restarts_the_hub_at_most_once_an_hour(world: World) -> None:
    # An ingress in front of the proxy answers 504 for the hub's pages; the hub's API
    # (read in-cluster) still answers, so only the probe sees it.
    world.chp.public.fail(504, path="^/hub/")
    engine = world.engine()
    first = probe_finding(passed(world, engine))
    assert first is not None and first["action"]["status"] == "unconfirmed"
    assert "HTTP 504" in first["message"] and "rollout restart deploy/hub" in first["message"]
    assert first["severity"] == "critical"
    second = probe_finding(passed(world, engine))
    assert second is not None and second["action"]["status"] == "done"
    assert restarts(world) == 1
    # The new hub pod is behind the same failing gateway: confirmed again, then refused.
    passed(world, engine)
    refused = probe_finding(passed(world, engine))
    assert refused is not None and refused["action"]["status"] == "over-budget"
    assert "at most once every 1h00m" in refused["action"]["detail"]
    assert restarts(world) == 1
    # An hour after the restart, one more is allowed.
    world.clock.advance(minutes=60)  # type: ignore[attr-defined]
    again = probe_finding(passed(world, engine))
    assert again is not None and again["action"]["status"] == "done"
    assert restarts(world) == 2
    # The gateway recovers: resolved.
    world.chp.public.clear_faults()
    report = passed(world, engine)
    assert probe_finding(report) is None
    assert "probes/main/hub-unresponsive/main" in [
        k for c in report["checks"] for k in c["resolved"]]


def test_a_frozen_hub_is_unresponsive_and_its_sessions_check_failing(world: World) -> None:
    world.hub.freeze()
    try:
        engine = world.engine(dry_run=True)
        reports = [passed(world, engine, minutes=5) for _ in range(3)]
    finally:
        world.hub.thaw()
    for report in reports:
        finding = probe_finding(report)
        assert finding is not None and "no answer in time" in finding["message"]
        [sessions] = [c for c in report["checks"] if c["check"] == "sessions"]
        assert sessions["status"] == "error"
    kinds = [[f["kind"] for c in r["checks"] if c["check"] == "sessions" for f in c["findings"]]
             for r in reports]
    # three failed passes over ten minutes: the third pages (3 passes and 5 minutes)
    assert kinds == [[], [], ["check-failing"]]
    [sessions] = [c for c in reports[2]["checks"] if c["check"] == "sessions"]
    failing = sessions["findings"][0]
    assert failing["severity"] == "critical" and failing["action"] is None
    assert "hub_api (hubapi main)" in failing["message"]
    assert restarts(world) == 0
