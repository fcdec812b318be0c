"""detect() of the sessions check on hand-built snapshots: every row of the table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watchdogd.checks import sessions
from watchdogd.model import ImplausibleData, Snapshot
from watchdogd.slugs import escape_slug

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def settings(layout: str = "kubespawner", **check: Any) -> sessions.TargetSettings:
    return sessions.TargetSettings(
        hub="main", cluster="js2", namespace="jhub", layout=layout,
        nublado_prefix="nublado-", hub_pod_selector="component=hub",
        check=sessions.Settings(**check), proxy=True,
    )


def hub_pod() -> dict[str, Any]:
    return {"metadata": {"name": "hub-7d9", "namespace": "jhub", "uid": "hub-uid",
                         "labels": {"component": "hub"}},
            "status": {"phase": "Running"}}


def pod(user: str, server: str = "", *, phase: str = "Running", reason: str | None = None,
        ip: str = "10.0.0.5", layout: str = "kubespawner",
        deleting: bool = False) -> dict[str, Any]:
    if layout == "nublado":
        metadata: dict[str, Any] = {"name": f"{user}-nb", "namespace": f"nublado-{user}",
                                    "uid": f"uid-{user}"}
    else:
        name = f"jupyter-{user}" + (f"--{server}" if server else "")
        metadata = {"name": name, "namespace": "jhub", "uid": f"uid-{user}-{server}",
                    "labels": {"component": "singleuser-server"},
                    "annotations": {"hub.jupyter.org/username": user,
                                    "hub.jupyter.org/servername": server}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-22T02:59:00Z"
    status: dict[str, Any] = {"phase": phase, "podIP": ip}
    if reason:
        status["reason"] = reason
    return {"metadata": metadata, "spec": {"nodeName": "node-1"}, "status": status}


def running(user: str, server: str = "", *, ip: str = "10.0.0.5",
            version: str = "7.0.0") -> dict[str, Any]:
    name = f"jupyter-{user}" + (f"--{server}" if server else "")
    return {"user": user, "server_name": server, "server_id": 1,
            "state": {"pod_name": name, "namespace": "jhub", "kubespawner_version": version},
            "started": "2026-11-22T02:00:00+00:00", "last_activity": None,
            "url": f"http://{ip}:8888", "base_url": f"/user/{user}/"}


def active(user: str, server: str = "", *, pending: str | None = None,
           started: str = "2026-11-22T02:00:00Z") -> dict[str, Any]:
    return {"user": user, "server_name": server, "pending": pending, "ready": pending is None,
            "started": started, "last_activity": None, "url": f"/user/{user}/", "state": {}}


def route(user: str, server: str = "",
          target: str = "http://10.0.0.5:8888") -> tuple[str, dict[str, Any]]:
    path = f"/user/{user}" + (f"/{server}" if server else "")
    return path, {"user": user, "server_name": server, "target": target, "jupyterhub": True}


Obj = dict[str, Any]


def detect(snap: Snapshot, now: datetime, found: dict[str, Obj] | None = None) -> Any:
    """detect(), with the engine's by-name lookups answered from ``found`` (else absent)."""
    detection = sessions.detect(snap, now)
    if detection.lookups:
        for need in detection.lookups:
            snap.observations[need.key] = (found or {}).get(need.key)
        detection = sessions.detect(snap, now)
        assert not [n for n in detection.lookups if n.key not in snap.observations]
    return detection


def snapshot(*, users: list[str], db_running: list[Obj], api: list[Obj], pods: list[Obj],
             routes: list[tuple[str, Obj]] | None = None, layout: str = "kubespawner",
             marks: dict[str, datetime] | None = None, hub_pods: list[Obj] | None = None,
             hub_now: datetime | None = NOW, **check: Any) -> Snapshot:
    route_table: dict[str, Obj] = {"/": {"hub": True, "target": "http://hub:8081"}}
    route_table.update(dict(routes or []))
    return Snapshot(
        check="sessions", target="main",
        observations={
            "hub_db": {"schema": "f460b0348206", "schema_known": True, "users": users,
                       "running": db_running},
            "hub_api": api, "pods": pods, "routes": route_table,
            "hub_pods": [hub_pod()] if hub_pods is None else hub_pods,
        },
        settings=settings(layout, **check), marks=marks or {},
        server_now={"hub_api": hub_now} if hub_now is not None else {},
    )


def kinds(snap: Snapshot) -> dict[str, tuple[str, str | None]]:
    detection = detect(snap, NOW)
    return {f.subject: (f.kind, f.action.name if f.action else None)
            for f in detection.findings}


def test_healthy_session_has_no_findings() -> None:
    snap = snapshot(users=["alice", "bob"], db_running=[running("alice")], api=[active("alice")],
                    pods=[pod("alice")], routes=[route("alice")])
    assert detect(snap, NOW).findings == []


def test_running_without_pod_is_stale_session_with_stop_server() -> None:
    snap = snapshot(users=["alice"], db_running=[running("alice")], api=[active("alice")],
                    pods=[], routes=[route("alice")])
    detection = detect(snap, NOW)
    [finding] = detection.findings
    assert (finding.kind, finding.subject, finding.severity.label) == (
        "stale-session", "alice", "critical")
    assert finding.action is not None
    assert finding.action.name == "stop-server"
    assert (finding.action.source, finding.action.call) == ("hubapi", "stop_server")
    assert dict(finding.action.params) == {"user": "alice", "server_name": ""}
    assert finding.action.destructive
    assert finding.key == "sessions/main/stale-session/alice"


@pytest.mark.parametrize(("phase", "reason"), [("Failed", None), ("Succeeded", None),
                                               ("Failed", "Evicted")])
def test_running_with_dead_pod_is_dead_session(phase: str, reason: str | None) -> None:
    snap = snapshot(users=["alice"], db_running=[running("alice")], api=[active("alice")],
                    pods=[pod("alice", phase=phase, reason=reason)], routes=[route("alice")])
    assert kinds(snap) == {"alice": ("dead-session", "stop-server")}


def test_pod_without_running_server_is_orphan_pod_with_uid_precondition() -> None:
    snap = snapshot(users=["alice", "bob"], db_running=[], api=[], pods=[pod("bob")])
    detection = detect(snap, NOW)
    [finding] = detection.findings
    assert (finding.kind, finding.subject) == ("orphan-pod", "bob")
    assert finding.action is not None
    assert finding.action.name == "delete-pod"
    assert dict(finding.action.params) == {"namespace": "jhub", "name": "jupyter-bob",
                                           "uid": "uid-bob-"}


def test_running_pod_without_route_is_missing_route() -> None:
    snap = snapshot(users=["alice"], db_running=[running("alice")], api=[active("alice")],
                    pods=[pod("alice")], routes=[])
    assert kinds(snap) == {"alice": ("missing-route", "sync-routes")}
    [finding] = detect(snap, NOW).findings
    assert finding.action is not None and not finding.action.destructive


def test_route_of_stopped_server_is_stale_route() -> None:
    snap = snapshot(users=["alice"], db_running=[], api=[], pods=[], routes=[route("alice")])
    assert kinds(snap) == {"alice": ("stale-route", "sync-routes")}


def test_route_not_owned_by_the_hub_is_ignored() -> None:
    path, data = route("alice")
    data["jupyterhub"] = False
    snap = snapshot(users=["alice"], db_running=[], api=[], pods=[], routes=[(path, data)])
    assert kinds(snap) == {}


def test_route_to_wrong_target_is_route_mismatch() -> None:
    snap = snapshot(users=["alice"], db_running=[running("alice")], api=[active("alice")],
                    pods=[pod("alice")], routes=[route("alice", target="http://10.9.9.9:8888")])
    assert kinds(snap) == {"alice": ("route-mismatch", "sync-routes")}


def spawning(started: datetime, **kwargs: Any) -> Snapshot:
    return snapshot(users=["alice"], db_running=[running("alice")],
                    api=[active("alice", pending="spawn", started=started.isoformat())],
                    pods=[], **kwargs)


def spawn_mark(started: datetime) -> str:
    return f"pending-spawn:alice:{started.isoformat()}"


def test_pending_spawn_too_long_is_stuck_spawn() -> None:
    started = NOW - timedelta(minutes=20)
    # First sighting: the hub says 20 minutes, watchdogd has seen it for none.
    first = detect(spawning(started), NOW)
    assert first.findings == [] and spawn_mark(started) in first.marks
    # Seen for 15 minutes by watchdogd, 20 by the hub's clock: stuck.
    later = spawning(started, marks={spawn_mark(started): NOW - timedelta(minutes=15)})
    assert kinds(later) == {"alice": ("stuck-spawn", "stop-server")}


def test_a_skewed_clock_alone_never_makes_a_spawn_stuck() -> None:
    """Each clock compares only with itself; either one alone is not enough."""
    started = NOW - timedelta(seconds=30)  # the hub started it 30 s ago by its own clock
    # watchdogd's clock stepped forward a day between its passes: its own sighting looks old.
    stepped = spawning(started, marks={spawn_mark(started): NOW - timedelta(days=1)})
    assert kinds(stepped) == {}
    # watchdogd's clock is a day behind the hub's: the hub's "started" is in watchdogd's
    # future, which says nothing either way; the hub's own clock says 30 s.
    behind = spawning(started + timedelta(days=1),
                      marks={spawn_mark(started + timedelta(days=1)): NOW - timedelta(hours=1)},
                      hub_now=NOW + timedelta(days=1))
    assert kinds(behind) == {}
    # Without the hub's Date, watchdogd's own sightings decide alone.
    own = spawning(started, marks={spawn_mark(started): NOW - timedelta(minutes=16)},
                   hub_now=None)
    assert kinds(own) == {"alice": ("stuck-spawn", "stop-server")}


def test_a_pending_stop_is_timed_on_the_hubs_clock_too() -> None:
    mark = "pending-stop:alice"
    snap = snapshot(users=["alice"], db_running=[running("alice")],
                    api=[active("alice", pending="stop")], pods=[],
                    marks={mark: NOW - timedelta(hours=2)})
    first = detect(snap, NOW)
    # watchdogd's clock says two hours (it jumped); the hub's clock starts now.
    assert first.findings == []
    [hub_mark] = [m for m in first.marks if m.startswith("hub-since:")]
    assert hub_mark == f"hub-since:{NOW.isoformat()}:{mark}"
    later = snapshot(users=["alice"], db_running=[running("alice")],
                     api=[active("alice", pending="stop")], pods=[],
                     marks={mark: NOW - timedelta(hours=2),
                            hub_mark: NOW - timedelta(hours=2)},
                     hub_now=NOW + timedelta(minutes=11))
    assert kinds(later) == {"alice": ("stuck-stop", "restart-hub")}


def test_no_username_can_forge_anothers_hub_clock_mark() -> None:
    mark = "pending-stop:alice"
    forged = f"hub-since:2020-01-01T00:00:00+00:00:pending-stop:x:{mark}"
    snap = snapshot(users=["alice"], db_running=[running("alice")],
                    api=[active("alice", pending="stop")], pods=[],
                    marks={mark: NOW - timedelta(hours=2), forged: NOW})
    assert detect(snap, NOW).findings == []


def test_young_pending_spawn_is_left_alone_even_without_pod() -> None:
    started = (NOW - timedelta(minutes=1)).isoformat()
    snap = snapshot(users=["alice"], db_running=[running("alice")],
                    api=[active("alice", pending="spawn", started=started)], pods=[])
    assert kinds(snap) == {}


def test_pending_stop_is_remembered_and_becomes_stuck_stop() -> None:
    snap = snapshot(users=["alice"], db_running=[running("alice")],
                    api=[active("alice", pending="stop")], pods=[])
    first = detect(snap, NOW)
    assert first.findings == []  # a stop in progress: never stop twice
    hub_mark = f"hub-since:{NOW.isoformat()}:pending-stop:alice"
    assert first.marks == {"pending-stop:alice", hub_mark}
    # 11 minutes later on both clocks
    later = snapshot(users=["alice"], db_running=[running("alice")],
                     api=[active("alice", pending="stop")], pods=[],
                     marks={"pending-stop:alice": NOW - timedelta(minutes=11),
                            hub_mark: NOW - timedelta(minutes=11)},
                     hub_now=NOW + timedelta(minutes=11))
    [finding] = detect(later, NOW).findings
    assert finding.kind == "stuck-stop"
    assert finding.severity.label == "critical"
    assert finding.action is not None
    assert finding.action.name == "restart-hub"
    assert dict(finding.action.params)["name"] == "hub-7d9"


def test_db_running_but_api_not_active_is_not_judged() -> None:
    # The DB and the API were read a moment apart and disagree: no verdict.
    snap = snapshot(users=["alice"], db_running=[running("alice")], api=[], pods=[])
    assert kinds(snap) == {}


def test_terminating_pod_is_not_an_orphan() -> None:
    snap = snapshot(users=["bob"], db_running=[], api=[], pods=[pod("bob", deleting=True)])
    assert kinds(snap) == {}


def test_named_servers_are_separate_subjects() -> None:
    snap = snapshot(
        users=["alice"],
        db_running=[running("alice"), running("alice", "gpu", ip="10.0.0.6")],
        api=[active("alice"), active("alice", "gpu")],
        pods=[pod("alice")],
        routes=[route("alice"), route("alice", "gpu", target="http://10.0.0.6:8888")],
    )
    detection = detect(snap, NOW)
    [finding] = detection.findings
    assert (finding.kind, finding.subject) == ("stale-session", "alice/gpu")
    assert finding.action is not None
    assert dict(finding.action.params) == {"user": "alice", "server_name": "gpu"}


def test_nublado_layout_matches_pods_by_namespace() -> None:
    snap = snapshot(
        users=["alice", "bob", "carol"], layout="nublado",
        db_running=[running("alice"), running("carol")],
        api=[active("alice"), active("carol")],
        pods=[pod("alice", layout="nublado"), pod("bob", layout="nublado")],
        routes=[route("alice"), route("carol")],
    )
    assert kinds(snap) == {"carol": ("stale-session", "stop-server"),
                           "bob": ("orphan-pod", "delete-pod")}


def test_nublado_username_that_is_no_namespace_name() -> None:
    snap = snapshot(users=["Alice_X"], layout="nublado", db_running=[], api=[], pods=[])
    assert kinds(snap) == {"Alice_X": ("invalid-username-label", None)}


@pytest.mark.parametrize("name", ["_alice", "a" * 200, "ünïcödé" * 5])
def test_escape_scheme_invalid_label_values(name: str) -> None:
    snap = snapshot(users=[name, "bob"], db_running=[running("bob", version="6.2.0")],
                    api=[active("bob")], pods=[pod("bob")], routes=[route("bob")])
    assert kinds(snap) == {name: ("invalid-username-label", None)}


def test_safe_scheme_reports_no_label_problems() -> None:
    snap = snapshot(users=["_alice", "bob"], db_running=[running("bob", version="7.0.0")],
                    api=[active("bob")], pods=[pod("bob")], routes=[route("bob")])
    assert kinds(snap) == {}


def test_escape_slug_matches_kubespawner_6() -> None:
    assert escape_slug("_alice") == "-5falice"
    assert escape_slug("a-b") == "a-2db"
    assert escape_slug("Bob") == "-42ob"
    assert not sessions.is_valid_label("-5falice")
    assert sessions.is_valid_label("alice")


def test_hostile_usernames_flow_through_unchanged() -> None:
    hostile = "o'brien\"; drop table users;--"
    snap = snapshot(users=[hostile], db_running=[running(hostile)], api=[active(hostile)],
                    pods=[], routes=[route(hostile)])
    [finding] = detect(snap, NOW).findings
    assert finding.subject == hostile
    assert finding.action is not None
    assert dict(finding.action.params)["user"] == hostile


def test_missing_hub_pod_makes_the_snapshot_implausible() -> None:
    snap = snapshot(users=["alice"], db_running=[running("alice")], api=[active("alice")],
                    pods=[], hub_pods=[])
    with pytest.raises(ImplausibleData, match="hub pod"):
        detect(snap, NOW)


def test_hub_db_without_users_but_with_pods_is_implausible() -> None:
    snap = snapshot(users=[], db_running=[], api=[], pods=[pod("alice")])
    with pytest.raises(ImplausibleData, match="no users"):
        detect(snap, NOW)


def test_subjects_count_every_session_pod_and_route() -> None:
    snap = snapshot(users=["a", "b", "c"], db_running=[running("a")], api=[active("a")],
                    pods=[pod("a"), pod("b")], routes=[route("a"), route("c")])
    assert detect(snap, NOW).subjects == 3


def test_nublado_pod_is_matched_by_its_user_label() -> None:
    labelled = pod("x", layout="nublado")
    labelled["metadata"].update(name="lab-7f2", namespace="nublado-alice",
                                labels={"nublado.lsst.io/category": "lab",
                                        "nublado.lsst.io/user": "alice"})
    snap = snapshot(users=["alice"], layout="nublado", db_running=[running("alice")],
                    api=[active("alice")], pods=[labelled], routes=[route("alice")])
    assert kinds(snap) == {}


def test_many_running_servers_and_not_one_pod_is_implausible() -> None:
    names = [f"u{i}" for i in range(5)]
    snap = snapshot(users=names, db_running=[running(n) for n in names],
                    api=[active(n) for n in names], pods=[], routes=[route(n) for n in names])
    with pytest.raises(ImplausibleData, match="5 of the 5 servers the hub runs have no pod") as exc:
        detect(snap, NOW)
    assert exc.value.notify  # one view-implausible notice, never a batch of stops


def test_two_servers_without_pods_are_judged() -> None:
    # One node died under two users: that is judged, not called implausible.
    names = [f"u{i}" for i in range(4)]
    snap = snapshot(users=names, db_running=[running(n) for n in names],
                    api=[active(n) for n in names], pods=[pod("u2"), pod("u3")],
                    routes=[route(n) for n in names])
    assert {s for s, (kind, _) in kinds(snap).items() if kind == "stale-session"} == {"u0", "u1"}


def test_four_missing_of_five_is_implausible() -> None:
    names = [f"u{i}" for i in range(5)]
    snap = snapshot(users=names, db_running=[running(n) for n in names],
                    api=[active(n) for n in names], pods=[pod("u4")],
                    routes=[route(n) for n in names])
    with pytest.raises(ImplausibleData, match="4 of the 5"):
        detect(snap, NOW)


def _elsewhere(user: str, namespace: str = "other", labels: dict[str, str] | None = None) -> Obj:
    found = pod(user)
    found["metadata"]["namespace"] = namespace
    found["metadata"]["labels"] = labels or found["metadata"]["labels"]
    return found


def test_pods_outside_the_listed_namespace_are_looked_up_not_stale() -> None:
    # 40 running servers; 3 pods live in another namespace (a profile override) that the
    # spawner state names; the list of the configured namespace is complete.
    names = [f"u{i}" for i in range(40)]
    rows = [running(n) for n in names]
    for row in rows[:3]:
        row["state"]["namespace"] = "other"
    listed = [pod(n) for n in names[3:]]
    snap = snapshot(users=names, db_running=rows, api=[active(n) for n in names], pods=listed,
                    routes=[route(n) for n in names])
    first = sessions.detect(snap, NOW)
    assert sorted(n.key for n in first.lookups) == [
        f"pod:other/jupyter-u{i}" for i in range(3)]
    assert {(n.source, n.call) for n in first.lookups} == {("kube", "pod")}
    found = {f"pod:other/jupyter-{n}": _elsewhere(n) for n in names[:3]}
    assert detect(snap, NOW, found).findings == []


def test_pods_missing_the_selector_are_looked_up_not_stale() -> None:
    names = [f"u{i}" for i in range(40)]
    listed = [pod(n) for n in names[8:]]  # 8 pods carry other labels
    snap = snapshot(users=names, db_running=[running(n) for n in names],
                    api=[active(n) for n in names], pods=listed,
                    routes=[route(n) for n in names])
    found = {f"pod:jhub/jupyter-{n}": _elsewhere(n, "jhub", {"app": "x"}) for n in names[:8]}
    assert detect(snap, NOW, found).findings == []


def test_a_wrong_cluster_is_implausible_however_many_run() -> None:
    names = [f"u{i}" for i in range(40)]
    snap = snapshot(users=names, db_running=[running(n) for n in names],
                    api=[active(n) for n in names], pods=[],
                    routes=[route(n) for n in names])
    with pytest.raises(ImplausibleData, match="the view is probably wrong"):
        detect(snap, NOW)


def test_a_missing_pod_confirmed_by_name_is_stale_and_its_stop_verifies() -> None:
    names = [f"u{i}" for i in range(40)]
    snap = snapshot(users=names, db_running=[running(n) for n in names],
                    api=[active(n) for n in names], pods=[pod(n) for n in names[1:]],
                    routes=[route(n) for n in names])
    [finding] = detect(snap, NOW).findings
    assert (finding.kind, finding.subject) == ("stale-session", "u0")
    assert finding.action is not None
    assert {n.key: n.call for n in finding.action.verify} == {
        "server": "server", "pod": "pod", "routes": "routes"}
    assert dict(next(n for n in finding.action.verify if n.key == "pod").params) == {
        "namespace": "jhub", "name": "jupyter-u0"}


def _stale() -> Any:
    path, data = route("alice")
    data["last_activity"] = "2026-11-22T02:30:00Z"
    snap = snapshot(users=["alice", "bob"], db_running=[running("alice"), running("bob")],
                    api=[active("alice"), active("bob")], pods=[pod("bob")],
                    routes=[(path, data), route("bob")])
    [finding] = detect(snap, NOW).findings
    return finding


def _routes(last_activity: str | None) -> dict[str, Obj]:
    path, data = route("alice")
    return {path: {**data, "last_activity": last_activity}}


def test_verify_stop_server_acts_only_while_the_finding_holds() -> None:
    finding = _stale()
    first_seen = NOW - timedelta(minutes=2)
    server = active("alice")
    still = {"server": server, "pod": None, "routes": _routes("2026-11-22T02:30:00Z")}
    assert sessions.verify(finding, still, first_seen) is None
    reason = sessions.verify(finding, {**still, "pod": _elsewhere("alice")}, first_seen)
    assert reason and "exists" in reason
    reason = sessions.verify(finding, {**still, "server": None}, first_seen)
    assert reason and "no longer runs" in reason
    restarted = active("alice", started="2026-11-22T02:59:30Z")
    reason = sessions.verify(finding, {**still, "server": restarted}, first_seen)
    assert reason and "restarted" in reason
    reason = sessions.verify(finding, {**still, "server": active("alice", pending="stop")},
                             first_seen)
    assert reason and "pending stop" in reason
    live = {**still, "routes": _routes("2026-11-22T02:59:00Z")}
    reason = sessions.verify(finding, live, first_seen)
    assert reason and "carried traffic" in reason
    # Only the proxy's own clock counts: an old first_seen on watchdogd's clock is not traffic.
    assert sessions.verify(finding, still, NOW - timedelta(days=30)) is None


def test_default_pod_selector_follows_the_layout() -> None:
    from watchdogd.config import HubConfig

    base = {"cluster": "c", "api_url": "http://hub/hub/api"}
    assert HubConfig(**base).user_pod_selector() == "component=singleuser-server"
    assert HubConfig(**base, layout="nublado").user_pod_selector() == (
        "nublado.lsst.io/category=lab")
    assert HubConfig(**base, layout="nublado", pod_selector="x=y").user_pod_selector() == "x=y"


def test_api_mode_route_mismatch_is_judged_by_host() -> None:
    """API mode has no server address: the route's host must be the pod's IP or dns_name."""
    from watchdogd.checks.sessions import _target_elsewhere

    pod = {"status": {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}}
    state = {"dns_name": "jupyter-alice.jhub.svc.cluster.local"}
    assert _target_elsewhere("http://10.0.0.5:8888", pod, state) is None
    assert _target_elsewhere("http://10.0.0.5:9999", pod, state) is None  # port unknown
    assert _target_elsewhere("http://[fd00::5]:8888", pod, state) is None
    assert _target_elsewhere("http://Jupyter-Alice.jhub.svc.cluster.local:8888", pod,
                             state) is None
    assert _target_elsewhere("http://10.0.66.6:8888", pod, state) == "10.0.0.5, fd00::5"
    assert _target_elsewhere("http://10.0.66.6:8888", {"status": {}}, state) is None
    assert _target_elsewhere(None, pod, state) is None
    assert _target_elsewhere("http://[bad", pod, state) == "10.0.0.5, fd00::5"
