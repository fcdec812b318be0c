"""The labs check in a simulated Nublado deployment: the real engine, hub, controller and
Kubernetes simulators, judged against the simulators' own truth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from watchdogd.sim.parts import NubladoPart
from watchdogd.sim.world import SimClock, World


@pytest.fixture
def world() -> Iterator[World]:
    with World(clock=SimClock(), parts=[NubladoPart()]) as world:
        world.healthy(users=4, running=3)
        part(world).healthy(["ada", "brian", "chen"])
        yield world


def part(world: World) -> NubladoPart:
    found = world.parts["nublado"]
    assert isinstance(found, NubladoPart)
    return found


def passes(world: World, count: int, **engine: Any) -> list[dict[str, Any]]:
    clock = world.clock
    assert isinstance(clock, SimClock)
    eng = world.engine(**engine)
    reports = []
    for _ in range(count):
        report = eng.run_pass(only=["sessions", "labs"]).as_json()
        assert report["summary"]["errors"] == 0, [c["error"] for c in report["checks"]]
        reports.append(report)
        clock.advance(minutes=5)
    return reports


def findings(report: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(c["check"], f["kind"], f["subject"]): f
            for c in report["checks"] if c["target"] == "rsp" for f in c["findings"]}


def test_a_healthy_nublado_hub_is_quiet_for_every_check(world: World) -> None:
    report = world.engine(dry_run=True).run_pass().as_json()
    assert report["summary"]["errors"] == 0, [c["error"] for c in report["checks"]]
    assert report["summary"]["findings"] == 0
    assert {c["target"] for c in report["checks"] if c["check"] == "labs"} == {"rsp"}


def test_each_row_is_found_and_only_the_stale_lab_is_deleted_by_labs(world: World) -> None:
    nublado = part(world)
    ctl = nublado.controller
    nublado.stale_lab("rachel")
    nublado.lab_pod_missing("sam")
    nublado.lost_lab("tess")
    nublado.stuck_lab("uma")
    nublado.namespace_orphan("vic")
    reports = passes(world, 4)
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for report in reports:
        seen.update(findings(report))
        # One pass never has two checks acting on one user.
        acting: dict[str, set[str]] = {}
        for (check, _, subject), f in findings(report).items():
            if f["action"] and f["action"]["status"] == "done":
                acting.setdefault(subject, set()).add(check)
        assert all(len(checks) == 1 for checks in acting.values()), acting
    kinds = {(check, kind, subject) for check, kind, subject in seen}
    assert {("labs", "controller-stale-lab", "rachel"), ("labs", "lab-pod-missing", "sam"),
            ("sessions", "stale-session", "sam"), ("labs", "controller-lost-lab", "tess"),
            ("labs", "lab-stuck", "uma"), ("labs", "lab-namespace-orphan", "vic")} <= kinds
    stale = seen[("labs", "controller-stale-lab", "rachel")]
    assert stale["action"]["name"] == "delete-lab"
    assert seen[("labs", "lab-pod-missing", "sam")]["action"] is None
    # The truth: the stale lab is gone from the controller and its namespace with it; sam's
    # lab was stopped through the hub, whose spawner deleted it through the controller.
    assert ctl.state("rachel") is None
    assert world.kube.get("Namespace", "nublado-rachel") is None
    assert not nublado.hub.is_running("sam") and ctl.state("sam") is None
    # Report-only rows are left alone.
    assert nublado.hub.is_running("tess") and ctl.state("tess") is None
    assert (ctl.state("uma") or {}).get("status") == "terminating"
    assert world.kube.get("Namespace", "nublado-vic") is not None
    last = findings(reports[-1])
    assert ("labs", "controller-stale-lab", "rachel") not in last
    assert ("labs", "lab-pod-missing", "sam") not in last
    deletes = [r for r in ctl.requests if r[0] == "DELETE"]
    assert deletes == [("DELETE", "/nublado/spawner/v1/labs/rachel")]


def test_a_409_is_skipped_and_never_retried_in_the_pass(world: World) -> None:
    nublado = part(world)
    ctl = nublado.controller
    nublado.stale_lab("rachel")
    passes(world, 1)
    ctl.remember("rachel", "running", operation="spawn")  # a spawn began meanwhile
    [report] = passes(world, 1)
    action = findings(report)[("labs", "controller-stale-lab", "rachel")]["action"]
    assert action["status"] == "skipped" and "another operation in progress" in action["detail"]
    assert [r for r in ctl.requests if r[0] == "DELETE"] == [
        ("DELETE", "/nublado/spawner/v1/labs/rachel")]


def test_a_lab_respawned_before_the_delete_is_left_alone(world: World) -> None:
    nublado = part(world)
    nublado.stale_lab("rachel")
    passes(world, 1)
    nublado.hub.start_server("rachel")  # the user came back between the pass and the act
    [report] = passes(world, 1)
    assert ("labs", "controller-stale-lab", "rachel") not in findings(report)
    assert nublado.hub.is_running("rachel")
    assert world.kube.get("Pod", "rachel-nb", "nublado-rachel") is not None
    assert not [r for r in nublado.controller.requests if r[0] == "DELETE"]


def _misconfigured(world: World, line: str) -> dict[str, Any]:
    """Three passes of the labs check with ``line`` added to ``[hubs.rsp]``; the last check."""
    nublado = part(world)
    for user in ("dana", "eli", "fay", "gus"):
        nublado.healthy([user])
    world.write_config()
    text = world.config_path.read_text().replace("[hubs.rsp]", f"[hubs.rsp]\n{line}")
    world.config_path.write_text(text)
    clock = world.clock
    assert isinstance(clock, SimClock)
    eng = world.engine()
    for _ in range(3):
        report = eng.run_pass(only=["labs"]).as_json()
        clock.advance(minutes=5)
    [check] = [c for c in report["checks"] if c["target"] == "rsp"]
    return check


def test_a_wrong_pod_selector_is_rescued_by_the_reads_by_name(world: World) -> None:
    check = _misconfigured(world, 'pod_selector = "nublado.lsst.io/category=notebook"')
    assert check["status"] == "ok" and check["findings"] == []
    assert not [r for r in part(world).controller.requests if r[0] == "DELETE"]


def test_a_wrong_namespace_prefix_is_a_wrong_view_and_deletes_nothing(world: World) -> None:
    check = _misconfigured(world, 'nublado_namespace_prefix = "nb-"')
    assert check["status"] == "error" and "view is probably wrong" in check["error"]
    assert [f["kind"] for f in check["findings"]] == ["view-implausible"]
    assert not [r for r in part(world).controller.requests if r[0] == "DELETE"]
    assert len(part(world).controller.running()) == 7
