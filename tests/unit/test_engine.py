"""The pass pipeline with in-memory adapters: policy gates, audit, tracking, safety rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from watchdogd.checks import REGISTRY
from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.store import Store

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)




class FakeWorld:
    """The hub DB, Hub API, CHP and a cluster as plain data, with a call log."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.running: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.routes: dict[str, dict[str, Any]] = {"/": {"hub": True, "target": "http://hub"}}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, Exception] = {}
        self.stop_raises: Exception | None = None
        self.hub_pods = [{"metadata": {"name": "hub-1", "namespace": "jhub", "uid": "h"},
                          "status": {"phase": "Running"}}]

    def add(self, user: str, *, pod: bool = True, route: bool = True) -> None:
        self.users.append(user)
        self.running[(user, "")] = {
            "user": user, "server_name": "", "server_id": len(self.running) + 1,
            "state": {"pod_name": f"jupyter-{user}", "namespace": "jhub"},
            "started": "2026-11-22T01:00:00+00:00", "last_activity": None,
            "url": "http://10.0.0.5:8888", "base_url": f"/user/{user}/"}
        if pod:
            self.pods.append({"metadata": {"name": f"jupyter-{user}", "namespace": "jhub",
                                           "uid": f"u-{user}",
                                           "annotations": {"hub.jupyter.org/username": user}},
                              "status": {"phase": "Running"}})
        if route:
            self.routes[f"/user/{user}"] = {"user": user, "server_name": "",
                                            "target": "http://10.0.0.5:8888",
                                            "jupyterhub": True}

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    # hubdb
    def sessions(self) -> dict[str, Any]:
        self._maybe_fail("hubdb")
        return {"schema": "f460b0348206", "schema_known": True, "users": list(self.users),
                "running": list(self.running.values())}

    # hubapi
    def active_servers(self) -> list[dict[str, Any]]:
        self._maybe_fail("hubapi")
        return [{"user": u, "server_name": s, "pending": None, "ready": True,
                 "started": "2026-11-22T01:00:00Z", "state": {}} for (u, s) in self.running]

    def server(self, user: str, server_name: str = "") -> dict[str, Any] | None:
        self._maybe_fail("hubapi")
        for entry in self.active_servers():
            if (entry["user"], entry["server_name"]) == (user, server_name):
                return entry
        return None

    def stop_server(self, user: str, server_name: str = "") -> str:
        self.calls.append(("stop_server", {"user": user, "server_name": server_name}))
        if self.stop_raises:
            raise self.stop_raises
        self.running.pop((user, server_name), None)
        self.routes.pop(f"/user/{user}", None)
        return "stopped (204)"

    def sync_routes(self) -> str:
        self.calls.append(("sync_routes", {}))
        for (user, _), row in self.running.items():
            self.routes[f"/user/{user}"] = {"user": user, "server_name": "",
                                            "target": row["url"], "jupyterhub": True}
        return "routes synced"

    # proxy
    def routes_(self) -> dict[str, Any]:
        self._maybe_fail("proxy")
        return dict(self.routes)

    # kube
    def pods_(self, namespace: str | None = None, label_selector: str | None = None,
              field_selector: str | None = None) -> list[dict[str, Any]]:
        self._maybe_fail("kube")
        if label_selector == "component=hub":
            return self.hub_pods
        return list(self.pods)

    def pod_(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail("kube")
        for pod in self.pods + self.hub_pods:
            if (pod["metadata"]["namespace"], pod["metadata"]["name"]) == (namespace, name):
                return pod
        return None

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> str:
        self.calls.append(("delete_pod", {"namespace": namespace, "name": name}))
        self.pods = [p for p in self.pods if p["metadata"]["name"] != name]
        return f"deleted pod {namespace}/{name}"


class Adapter:
    def __init__(self, world: FakeWorld) -> None:
        self.world = world

    def sessions(self) -> dict[str, Any]:
        return self.world.sessions()

    def active_servers(self) -> list[dict[str, Any]]:
        return self.world.active_servers()

    def token_scopes(self, required: tuple[str, ...] = ()) -> list[str]:
        self.world._maybe_fail("hubapi")
        return sorted(required)

    def stop_server(self, user: str, server_name: str = "") -> str:
        return self.world.stop_server(user, server_name)

    def sync_routes(self) -> str:
        return self.world.sync_routes()

    def routes(self) -> dict[str, Any]:
        return self.world.routes_()

    def pods(self, **kwargs: Any) -> list[dict[str, Any]]:
        return self.world.pods_(**kwargs)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.world.pod_(namespace, name)

    def server(self, user: str, server_name: str = "") -> dict[str, Any] | None:
        return self.world.server(user, server_name)

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> str:
        return self.world.delete_pod(namespace, name, uid)


def make_config(tmp_path: Path, sessions: dict[str, Any] | None = None,
                **remediation: Any) -> Config:
    data: dict[str, Any] = {
        "checks": {"sessions": sessions or {}},
        "state": {"url": f"sqlite:///{tmp_path}/state.db"},
        "remediation": {"dry_run": False, "confirm_after": 2, "min_age": 0, **remediation},
        "clusters": {"js2": {"kubeconfig": "/nonexistent"}},
        # DB mode: FakeWorld.sessions() is the hub database's read
        "hubs": {"main": {"cluster": "js2", "api_url": "http://hub/hub/api",
                          "db_url": "sqlite:////nonexistent/jupyterhub.sqlite",
                          "proxy_api_url": "http://proxy:8001"}},
    }
    return Config.model_validate(data)


ALICE = "sessions/main/stale-session/alice"
#: Policy tests lose many pods at once on purpose; the view's plausibility is tested apart.
MANY_MISSING = {"max_missing_fraction": 1.0}


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()


def make_engine(tmp_path: Path, world: FakeWorld, clock: SimClock | None = None,
                sessions: dict[str, Any] | None = None, **remediation: Any) -> Engine:
    config = make_config(tmp_path, sessions, **remediation)
    factories = {name: (lambda _c, _n: Adapter(world)) for name in
                 ("hubdb", "hubapi", "proxy", "kube")}
    store = Store(config.state.resolved_url())
    # This fake world only has what the sessions check reads.
    return Engine(config, store, Sources(config, factories), clock=clock or SimClock(T0),
                  registry={"sessions": REGISTRY["sessions"]})


def statuses(report: Any) -> dict[str, tuple[str, str]]:
    [check] = report.checks
    return {f.tracked.finding.key: (f.tracked.finding.kind, str(f.action_status))
            for f in check.findings}


def test_dry_run_reports_and_changes_nothing(tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice", pod=False)
    engine = make_engine(tmp_path, world, confirm_after=1)
    engine.dry_run = True
    report = engine.run_pass()
    assert statuses(report) == {"sessions/main/stale-session/alice": ("stale-session", "dry-run")}
    assert world.calls == []
    assert report.as_json()["dry_run"] is True


def test_action_only_after_confirmation_then_resolved(tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice", pod=False)
    world.add("bob")
    engine = make_engine(tmp_path, world)
    first = engine.run_pass()
    assert statuses(first) == {"sessions/main/stale-session/alice": ("stale-session",
                                                                    "unconfirmed")}
    assert world.calls == []
    second = engine.run_pass()
    assert statuses(second)["sessions/main/stale-session/alice"][1] == "done"
    assert world.calls == [("stop_server", {"user": "alice", "server_name": ""})]
    [record] = engine.store.actions()
    assert (record.name, record.status, record.finding_key) == (
        "stop-server", "done", "sessions/main/stale-session/alice")
    assert record.before["hub_db"]["state"]["pod_name"] == "jupyter-alice"
    assert record.finished_at is not None
    third = engine.run_pass()
    assert third.checks[0].findings == []
    assert third.checks[0].resolved == ["sessions/main/stale-session/alice"]
    assert engine.store.findings(status="open") == []


def test_min_age_holds_actions_back(tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice", pod=False)
    clock = SimClock(T0)
    engine = make_engine(tmp_path, world, clock, confirm_after=1, min_age="5m")
    report = engine.run_pass()
    [entry] = report.checks[0].findings
    assert entry.action_status == "unconfirmed"
    assert "5m00s" in (entry.action_detail or "")
    clock.advance(minutes=6)
    assert statuses(engine.run_pass())["sessions/main/stale-session/alice"][1] == "done"


@pytest.mark.parametrize("failing", ["hubdb", "hubapi", "proxy", "kube"])
def test_any_failed_source_means_error_and_no_action(tmp_path: Path, world: FakeWorld,
                                                     failing: str) -> None:
    world.add("alice", pod=False)
    engine = make_engine(tmp_path, world, confirm_after=1)
    assert statuses(engine.run_pass())["sessions/main/stale-session/alice"][1] == "done"
    world.add("bob", pod=False)
    world.fail[failing] = SourceError(failing, "main", "HTTP 500")
    report = engine.run_pass()
    [check] = report.checks
    assert check.status == "error"
    assert f"{failing} main: HTTP 500" in (check.error or "")
    assert check.findings == []
    assert world.calls == [("stop_server", {"user": "alice", "server_name": ""})]
    assert report.errors == 1
    # An incomplete pass proves nothing about what vanished: nothing resolved.
    assert check.resolved == []


def test_unexpected_adapter_exception_is_an_error_not_empty_data(
        tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice", pod=False)
    world.fail["kube"] = RuntimeError("boom")
    report = make_engine(tmp_path, world, confirm_after=1).run_pass()
    assert report.checks[0].status == "error"
    assert "RuntimeError: boom" in (report.checks[0].error or "")
    assert world.calls == []


def test_breaker_opens_and_acts_on_none(tmp_path: Path, world: FakeWorld) -> None:
    for i in range(12):
        world.add(f"user{i}", pod=False)
    world.add("healthy")
    engine = make_engine(tmp_path, world, confirm_after=1, breaker_max=10,
                         sessions=MANY_MISSING)
    report = engine.run_pass()
    assert {s for _, s in statuses(report).values()} == {"breaker-open"}
    assert world.calls == []
    assert "breaker_max = 10" in (report.checks[0].breaker or "")


def test_breaker_fraction_applies_to_large_targets_only(tmp_path: Path,
                                                        world: FakeWorld) -> None:
    for i in range(30):
        world.add(f"user{i}", pod=i >= 8)
    engine = make_engine(tmp_path, world, confirm_after=1, breaker_max=100,
                         sessions=MANY_MISSING, breaker_fraction=0.2,
                         breaker_min_subjects=20, max_per_pass=100, max_per_hour=100)
    report = engine.run_pass()
    assert {s for _, s in statuses(report).values()} == {"breaker-open"}
    assert "breaker_fraction" in (report.checks[0].breaker or "")


def test_budgets_per_pass_and_per_hour(tmp_path: Path, world: FakeWorld) -> None:
    for i in range(5):
        world.add(f"user{i}", pod=False)
    world.add("healthy")
    clock = SimClock(T0)
    engine = make_engine(tmp_path, world, clock, confirm_after=1, max_per_pass=2,
                         max_per_hour=3, sessions=MANY_MISSING)
    first = statuses(engine.run_pass())
    assert sorted(s for _, s in first.values()) == ["done", "done", "over-budget",
                                                    "over-budget", "over-budget"]
    clock.advance(minutes=1)
    second = statuses(engine.run_pass())
    assert sorted(s for _, s in second.values()) == ["done", "over-budget", "over-budget"]
    assert len(world.calls) == 3
    clock.advance(minutes=61)
    third = statuses(engine.run_pass())
    assert sorted(s for _, s in third.values()) == ["done", "done"]


def test_one_route_sync_serves_every_missing_route(tmp_path: Path, world: FakeWorld) -> None:
    for name in ("a", "b", "c"):
        world.add(name, route=False)
    engine = make_engine(tmp_path, world, confirm_after=1)
    report = engine.run_pass()
    assert {s for _, s in statuses(report).values()} == {"done"}
    assert world.calls == [("sync_routes", {})]
    # The summary counts what the audit log holds: one run, not one per finding.
    assert report.as_json()["summary"]["actions_done"] == 1
    assert len([r for r in engine.store.actions() if r.status == "done"]) == 1


def test_disabled_action_is_reported_not_run(tmp_path: Path, world: FakeWorld) -> None:
    world.users.append("bob")
    world.pods.append({"metadata": {"name": "jupyter-bob", "namespace": "jhub", "uid": "x",
                                    "annotations": {"hub.jupyter.org/username": "bob"}},
                       "status": {"phase": "Running"}})
    report = make_engine(tmp_path, world, confirm_after=1).run_pass()
    [entry] = report.checks[0].findings
    assert entry.action_status == "disabled"
    assert entry.action_detail == "delete-pod is not in remediation.enabled"
    assert world.calls == []


def test_precondition_failure_is_skipped_and_audited(tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice", pod=False)
    world.stop_raises = PreconditionFailed("hub answered 400: pending stop")
    engine = make_engine(tmp_path, world, confirm_after=1)
    report = engine.run_pass()
    [entry] = report.checks[0].findings
    assert entry.action_status == "skipped"
    [record] = engine.store.actions()
    assert record.status == "skipped"
    assert "pending stop" in (record.detail or "")


def test_failed_action_is_audited_with_its_cause(tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice", pod=False)
    world.stop_raises = SourceError("hubapi", "main", "DELETE /users/alice/server: HTTP 500")
    engine = make_engine(tmp_path, world, confirm_after=1)
    [entry] = engine.run_pass().checks[0].findings
    assert entry.action_status == "failed"
    assert engine.store.actions()[0].status == "failed"


def test_interrupted_action_is_reconfirmed_before_any_retry(tmp_path: Path,
                                                            world: FakeWorld) -> None:
    world.add("alice", pod=False)
    engine = make_engine(tmp_path, world, confirm_after=2)
    engine.run_pass()  # sighting 1
    # A crash between intent and result: the intent row has no result.
    from watchdogd.model import Action, Finding, Severity

    finding = Finding("sessions", "main", "stale-session", "alice", Severity.CRITICAL, "m")
    engine.store.begin_action("crashed-pass", finding,
                              Action("stop-server", "hubapi", "main", "stop_server",
                                     {"user": "alice"}), T0)
    assert engine.recover() == ["sessions/main/stale-session/alice"]
    interrupted = [r for r in engine.store.actions() if r.pass_id == "crashed-pass"]
    assert interrupted[0].status == "interrupted"
    report = engine.run_pass()
    [entry] = report.checks[0].findings
    assert entry.tracked.sightings == 1
    assert entry.action_status == "unconfirmed"
    assert world.calls == []


def test_report_matches_the_design_contract(tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice", pod=False)
    report = make_engine(tmp_path, world, confirm_after=1).run_pass().as_json()
    assert set(report) == {"version", "started_at", "finished_at", "dry_run", "acting",
                           "not_acting_reason", "checks", "summary"}
    assert report["acting"] is True
    assert report["not_acting_reason"] is None
    [check] = report["checks"]
    assert {"check", "target", "status", "error", "duration_s", "requests",
            "findings"} <= set(check)
    [finding] = check["findings"]
    assert set(finding) == {"key", "kind", "subject", "severity", "message", "evidence",
                            "first_seen", "sightings", "action", "silenced", "acked"}
    assert finding["silenced"] is None and finding["acked"] is False
    assert finding["action"]["status"] == "done"
    assert report["summary"] == {"findings": 1, "actions_done": 1, "errors": 0}
    assert report["started_at"].endswith("Z")


def test_follower_detects_but_never_acts(tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice", pod=False)
    engine = make_engine(tmp_path, world, confirm_after=1)
    engine.acting = lambda: False
    [entry] = engine.run_pass().checks[0].findings
    assert entry.action_status == "dry-run"
    assert world.calls == []


def test_two_findings_with_one_key_do_not_break_the_pass(tmp_path: Path,
                                                         world: FakeWorld) -> None:
    world.add("alice")
    world.users.append("bob")
    for name in ("jupyter-bob", "jupyter-bob-old"):
        world.pods.append({"metadata": {"name": name, "namespace": "jhub", "uid": name,
                                        "annotations": {"hub.jupyter.org/username": "bob"}},
                           "status": {"phase": "Running"}})
    engine = make_engine(tmp_path, world, confirm_after=1)
    for _ in range(2):
        report = engine.run_pass()
        [check] = report.checks
        assert check.status == "findings"
        assert [f.tracked.finding.key for f in check.findings] == [
            "sessions/main/orphan-pod/bob"]


def test_leadership_lost_during_a_pass_stops_further_actions(tmp_path: Path,
                                                             world: FakeWorld) -> None:
    world.add("alice", pod=False)
    world.add("bob", pod=False)
    world.add("carol")
    engine = make_engine(tmp_path, world, confirm_after=1)
    answers = iter([True, True, False])  # the pass starts as leader, then loses the lease
    engine.acting = lambda: next(answers, False)
    [check] = engine.run_pass().checks
    assert sorted(str(f.action_status) for f in check.findings) == ["done", "skipped"]
    assert len(world.calls) == 1


def _spec(name: str, needs: tuple[Any, ...], detect: Any) -> Any:
    from watchdogd.checks import CheckSpec
    from watchdogd.config import CheckConfig
    from watchdogd.model import CheckTarget

    return CheckSpec(name, ("thing",), CheckConfig,
                     lambda _s, _i: [CheckTarget("main", needs)], detect)


def test_a_partial_detection_resolves_nothing(tmp_path: Path, world: FakeWorld) -> None:
    from watchdogd.model import Detection, Finding, Need, Severity

    seen = {"partial": False, "subjects": ["a", "b"]}

    def detect(snapshot: Any, now: Any) -> Detection:
        return Detection([Finding("probe", "main", "thing", s, Severity.WARNING, "m")
                          for s in seen["subjects"]], 2, partial=bool(seen["partial"]))

    engine = make_engine(tmp_path, world)
    engine.registry = {"probe": _spec("probe", (Need.of("db", "hubdb", "main", "sessions"),),
                                      detect)}
    engine.run_pass()
    seen.update(partial=True, subjects=["a"])  # b was not judged this pass
    assert engine.run_pass().checks[0].resolved == []
    assert {f["subject"] for f in engine.store.findings()} == {"a", "b"}
    seen.update(partial=False)
    assert engine.run_pass().checks[0].resolved == ["probe/main/thing/b"]


def test_one_fetch_serves_two_checks_that_name_it_differently(tmp_path: Path,
                                                              world: FakeWorld) -> None:
    from watchdogd.model import Detection, Need

    calls = []
    original = world.sessions

    def counted() -> dict[str, Any]:
        calls.append(1)
        return original()

    world.sessions = counted  # type: ignore[method-assign]
    got: dict[str, Any] = {}

    def detect_as(key: str) -> Any:
        def detect(snapshot: Any, now: Any) -> Detection:
            got[key] = snapshot[key]
            return Detection([], 1)
        return detect

    engine = make_engine(tmp_path, world)
    engine.registry = {
        "one": _spec("one", (Need.of("hub_db", "hubdb", "main", "sessions"),),
                     detect_as("hub_db")),
        "two": _spec("two", (Need.of("hub_db:main", "hubdb", "main", "sessions"),),
                     detect_as("hub_db:main")),
    }
    report = engine.run_pass()
    assert [c.status for c in report.checks] == ["ok", "ok"]
    assert len(calls) == 1
    assert got["hub_db"] is got["hub_db:main"]


def test_a_stop_is_verified_by_name_and_skipped_when_the_pod_exists(
        tmp_path: Path, world: FakeWorld) -> None:
    # The pod lives outside what the list shows: the by-name lookup finds it first.
    world.add("alice", pod=False)
    world.add("bob")
    hidden = {"metadata": {"name": "jupyter-alice", "namespace": "jhub", "uid": "u-a"},
              "status": {"phase": "Running"}}
    world.hub_pods.append(hidden)  # readable by name, never in the user pod list
    engine = make_engine(tmp_path, world, confirm_after=1)
    report = engine.run_pass()
    assert statuses(report) == {}
    assert world.calls == []


def test_a_subject_acted_on_twice_is_held_with_one_critical_notice(
        tmp_path: Path, world: FakeWorld) -> None:
    clock = SimClock(T0)
    engine = make_engine(tmp_path, world, clock, confirm_after=1)
    held = []
    for _ in range(4):
        world.add("alice", pod=False)  # the user restarts; the pod vanishes again
        world.add("bob")
        report = engine.run_pass()
        held.append(statuses(report).get(ALICE, (None, None))[1])
        clock.advance(minutes=5)
        world.users.clear()
        world.pods.clear()
        world.running.clear()
    assert held == ["done", "done", "held", "held"]
    assert [c for c in world.calls if c[0] == "stop_server"] == [
        ("stop_server", {"user": "alice", "server_name": ""})] * 2


def test_sightings_restart_after_an_action(tmp_path: Path, world: FakeWorld) -> None:
    clock = SimClock(T0)
    engine = make_engine(tmp_path, world, clock, confirm_after=2)
    world.add("alice", pod=False)
    world.add("bob")
    world.stop_raises = None
    assert statuses(engine.run_pass())[ALICE][1] == "unconfirmed"
    clock.advance(minutes=1)
    assert statuses(engine.run_pass())[ALICE][1] == "done"
    # The user restarts and the new pod vanishes too: it must be confirmed again.
    world.add("alice", pod=False)
    world.pods = [p for p in world.pods if p["metadata"]["name"] != "jupyter-alice"]
    clock.advance(minutes=1)
    assert statuses(engine.run_pass())[ALICE][1] == "unconfirmed"


def test_an_implausible_view_is_one_tracked_finding_and_no_action(
        tmp_path: Path, world: FakeWorld) -> None:
    for i in range(10):
        world.add(f"user{i}", pod=False)
    engine = make_engine(tmp_path, world, confirm_after=1)
    report = engine.run_pass()
    check = report.checks[0]
    assert check.status == "error" and "view is probably wrong" in (check.error or "")
    assert [f.tracked.finding.kind for f in check.findings] == ["view-implausible"]
    assert world.calls == []


# -- check-failing: a target that cannot complete pages, through the store ----------------------

FAILING = "sessions/main/check-failing/main"


def notified_engine(tmp_path: Path, world: FakeWorld,
                    clock: SimClock) -> tuple[Engine, list[tuple[str, str]]]:
    """An engine whose notices go to a list of (finding key, title), in order."""
    from tests.unit.test_notify_delivery import Scripted
    from watchdogd.notify import Notifier

    engine = make_engine(tmp_path, world, clock)
    destination = Scripted({})
    engine.notifier = Notifier(engine.config.notify, [destination])
    return engine, destination.sent


def failing(report: Any) -> Any:
    [check] = report.checks
    found = [f for f in check.findings if f.tracked.finding.kind == "check-failing"]
    return found[0] if found else None


def test_a_target_in_error_pages_after_three_passes_and_five_minutes(
        tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice")
    world.fail["hubapi"] = SourceError("hubapi", "main", "GET /users: HTTP 504: Gateway Timeout")
    clock = SimClock(T0)
    engine, sent = notified_engine(tmp_path, world, clock)
    # Three failed passes within two minutes: not yet (both rules must hold).
    for _ in range(3):
        assert failing(engine.run_pass()) is None
        clock.advance(minutes=1)
    clock.advance(minutes=2)  # t+5m: the fourth failed pass, five minutes after the first
    entry = failing(engine.run_pass())
    finding = entry.tracked.finding
    assert finding.severity.label == "critical"  # a hub's sessions
    assert finding.action is None and entry.action_status is None
    assert "hub_api (hubapi main)" in finding.message and "HTTP 504" in finding.message
    assert finding.evidence["passes"] == 4
    assert [key for key, _ in sent] == [FAILING]
    assert "check-failing" in sent[0][1]
    # Still failing: no new page until notify.repeat_after (6 h).
    clock.advance(minutes=1)
    assert failing(engine.run_pass()).tracked.event is None
    clock.advance(hours=6)
    assert failing(engine.run_pass()).tracked.event == "reminder"
    assert [key for key, _ in sent] == [FAILING, FAILING]
    # The hub answers again: resolved, with a notice, and never an action anywhere.
    del world.fail["hubapi"]
    clock.advance(minutes=1)
    report = engine.run_pass()
    assert report.checks[0].status == "ok" and FAILING in report.checks[0].resolved
    assert [key for key, _ in sent] == [FAILING, FAILING, FAILING]
    assert "[resolved]" in sent[-1][1]
    assert engine.store.actions() == [] and world.calls == []


def test_a_flapping_target_never_pages(tmp_path: Path, world: FakeWorld) -> None:
    world.add("alice")
    clock = SimClock(T0)
    engine, sent = notified_engine(tmp_path, world, clock)
    for i in range(20):
        if i % 3 == 2:
            world.fail.pop("kube", None)
        else:
            world.fail["kube"] = SourceError("kube", "js2", "no answer within 15s")
        assert failing(engine.run_pass()) is None
        clock.advance(minutes=3)
    assert sent == []
    assert engine.store.findings(status=None) == []


def test_a_partial_pass_resolves_check_failing(tmp_path: Path) -> None:
    """The target completed (if only for some subjects): it is no longer check-failing."""
    from watchdogd.checks import CheckSpec
    from watchdogd.model import CheckTarget, Detection, Need, Snapshot

    state = {"fail": True}

    class Source:
        def read(self) -> int:
            if state["fail"]:
                raise SourceError("x", "t", "down")
            return 1

    def detect(snapshot: Snapshot, now: datetime) -> Detection:
        return Detection([], 1, partial=True)

    spec = CheckSpec("demo", (), REGISTRY["sessions"].settings_model,
                     lambda _s, _i: [CheckTarget("t", (Need.of("n", "x", "t", "read"),))],
                     detect)
    config = make_config(tmp_path).model_copy(update={"notify": make_config(
        tmp_path).notify.model_copy(update={"error_after": timedelta(0), "error_after_passes": 2})})
    engine = Engine(config, Store(config.state.resolved_url()),
                    Sources(config, {"x": lambda _c, _n: Source()}), clock=SimClock(T0),
                    registry={"demo": spec})
    engine.run_pass()
    [check] = engine.run_pass().checks
    assert [f.tracked.finding.key for f in check.findings] == ["demo/t/check-failing/t"]
    assert check.findings[0].tracked.finding.severity.label == "warning"
    state["fail"] = False
    [check] = engine.run_pass().checks
    assert check.resolved == ["demo/t/check-failing/t"]
