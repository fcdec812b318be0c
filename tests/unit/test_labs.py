"""detect() and verify() of the labs check on hand-built snapshots, and who owns which row.

The world of each test is a truth per user (hub, controller, pod, namespace); snapshots of
both the labs and the sessions check are built from it, and the engine's by-name lookups
are answered from the same truth, never from what watchdogd listed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watchdogd.checks import labs, sessions
from watchdogd.config import HubConfig, Inventory
from watchdogd.engine import _fetch_id
from watchdogd.model import Detection, ImplausibleData, Snapshot

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
Obj = dict[str, Any]


@dataclass(frozen=True)
class Lab:
    """One user's truth: the hub's server (None, running, spawn, stop), the controller's
    status (None or a LabStatus), the lab pod's phase (None, Running, Failed, deleting) and
    whether the namespace exists."""

    hub: str | None = None
    controller: str | None = None
    pod: str | None = None
    namespace: bool = True


def _pod(user: str, phase: str) -> Obj:
    meta: Obj = {"name": f"{user}-nb", "namespace": f"nublado-{user}", "uid": f"uid-{user}",
                 "labels": {"nublado.lsst.io/category": "lab", "nublado.lsst.io/user": user}}
    if phase == "deleting":
        meta["deletionTimestamp"] = "2026-12-01T02:59:00Z"
        phase = "Running"
    return {"metadata": meta, "spec": {"nodeName": "node-1"},
            "status": {"phase": phase, "podIP": "10.0.0.5"}}


def _lab_state(user: str, status: str) -> Obj:
    return {"user": user, "status": status, "pod": "present",
            "internal_url": f"http://{user}-nb.nublado-{user}:8888" if status == "running"
            else None, "resources": None, "quota": None, "options": {"size": "medium"}}


class Truth:
    """Users' truths, seen by both checks."""

    def __init__(self, labs_by_user: dict[str, Lab]) -> None:
        self.users = labs_by_user

    def pods(self) -> list[Obj]:
        return [_pod(u, t.pod) for u, t in self.users.items() if t.pod]

    def hub_api(self) -> list[Obj]:
        return [{"user": u, "server_name": "",
                 "pending": None if t.hub == "running" else t.hub,
                 "ready": t.hub == "running", "started": "2026-12-01T02:00:00Z",
                 "last_activity": None, "url": f"/user/{u}/", "state": {}}
                for u, t in self.users.items() if t.hub]

    def lookup(self, key: str) -> Obj | None:
        kind, _, rest = key.partition(":")
        if kind == "lab":
            truth = self.users.get(rest)
            return _lab_state(rest, truth.controller) if truth and truth.controller else None
        namespace, _, name = rest.partition("/")
        user = name.removesuffix("-nb")
        truth = self.users.get(user)
        if truth is None or not truth.pod or namespace != f"nublado-{user}":
            return None
        return _pod(user, truth.pod)

    def labs_snapshot(self, marks: dict[str, datetime] | None = None, **check: Any) -> Snapshot:
        return Snapshot(
            check="labs", target="rsp",
            observations={
                "hub_api": self.hub_api(),
                "labs": [u for u, t in self.users.items() if t.controller == "running"],
                "pods": self.pods(),
                "namespaces": [{"metadata": {"name": f"nublado-{u}", "uid": f"ns-{u}"},
                                "status": {"phase": "Active"}}
                               for u, t in self.users.items() if t.namespace]
                + [{"metadata": {"name": "kube-system"}, "status": {"phase": "Active"}}],
            },
            settings=labs.TargetSettings(hub="rsp", cluster="js2", prefix="nublado-",
                                         pod_selector="nublado.lsst.io/category=lab",
                                         nublado_url="http://ctl/nublado",
                                         check=labs.Settings(**check)),
            marks=marks or {})

    def sessions_snapshot(self) -> Snapshot:
        running = [{"user": u, "server_name": "", "server_id": 1, "state": {},
                    "started": "2026-12-01T02:00:00+00:00", "last_activity": None,
                    "url": "http://10.0.0.5:8888", "base_url": f"/user/{u}/"}
                   for u, t in self.users.items() if t.hub]
        routes: dict[str, Obj] = {"/": {"hub": True, "target": "http://hub:8081"}}
        for u, t in self.users.items():
            if t.hub == "running":
                routes[f"/user/{u}"] = {"user": u, "server_name": "",
                                        "target": "http://10.0.0.5:8888", "jupyterhub": True}
        return Snapshot(
            check="sessions", target="rsp",
            observations={
                "hub_db": {"schema": "f460b0348206", "schema_known": True,
                           "users": list(self.users), "running": running},
                "hub_api": self.hub_api(), "pods": self.pods(), "routes": routes,
                "hub_pods": [{"metadata": {"name": "hub-1", "namespace": "nublado",
                                           "uid": "hub-uid", "labels": {"component": "hub"}},
                              "status": {"phase": "Running"}}],
            },
            settings=sessions.TargetSettings(
                hub="rsp", cluster="js2", namespace="nublado", layout="nublado",
                nublado_prefix="nublado-", hub_pod_selector="component=hub",
                check=sessions.Settings(), proxy=True,
                pod_selector="nublado.lsst.io/category=lab"),
            server_now={"hub_api": NOW})


def run(detect: Any, snap: Snapshot, truth: Truth, now: datetime = NOW) -> Detection:
    """detect(), with the engine's one round of by-name lookups answered from the truth."""
    detection: Detection = detect(snap, now)
    if detection.lookups:
        for need in detection.lookups:
            snap.observations[need.key] = truth.lookup(need.key)
        detection = detect(snap, now)
        assert not detection.lookups
    return detection


def found(truth: Truth, **check: Any) -> dict[str, tuple[str, str | None]]:
    detection = run(labs.detect, truth.labs_snapshot(**check), truth)
    return {f.subject: (f.kind, f.action.name if f.action else None)
            for f in detection.findings}


def test_agreeing_records_are_quiet_and_cost_no_lookups() -> None:
    truth = Truth({f"u{i}": Lab("running", "running", "Running") for i in range(50)})
    detection = labs.detect(truth.labs_snapshot(), NOW)
    assert detection.lookups == () and detection.findings == [] and detection.subjects == 50


def test_every_row_of_the_table() -> None:
    truth = Truth({
        "stale": Lab(None, "running", None),                 # controller-stale-lab
        "stale-no-ns": Lab(None, "running", None, namespace=False),
        "gone": Lab("running", "running", None),             # lab-pod-missing
        "lost": Lab("running", None, "Running"),             # controller-lost-lab
        "lost-failed": Lab("running", "failed", "Failed"),
        "orphan-ns": Lab(None, None, None),                  # lab-namespace-orphan
        "orphan-pod": Lab(None, "running", "Running"),       # sessions' orphan-pod
        "spawning": Lab("spawn", "pending", "Pending"),      # sessions' rows
        "stopping": Lab("stop", "terminating", "Running"),
        "draining": Lab(None, "running", "deleting"),        # a pod on its way out: wait
        "ok": Lab("running", "running", "Running"),
    })
    assert found(truth) == {
        "stale": ("controller-stale-lab", "delete-lab"),
        "stale-no-ns": ("controller-stale-lab", "delete-lab"),
        "gone": ("lab-pod-missing", None),
        "lost": ("controller-lost-lab", None),
        "lost-failed": ("controller-lost-lab", None),
        "orphan-ns": ("lab-namespace-orphan", None),
    }


def test_a_lab_stuck_pending_or_terminating_on_watchdogds_own_sightings() -> None:
    truth = Truth({"slow": Lab(None, "terminating", None), "new": Lab(None, "pending", None)})
    first = run(labs.detect, truth.labs_snapshot(), truth)
    assert first.findings == [] and first.marks == {"terminating:slow", "pending:new"}
    marks = {"terminating:slow": NOW - timedelta(minutes=11),
             "pending:new": NOW - timedelta(minutes=11)}
    later = run(labs.detect, truth.labs_snapshot(marks), truth)
    assert [(f.kind, f.subject, f.action) for f in later.findings] == [
        ("lab-stuck", "slow", None)]  # pending waits 15 minutes by default


def test_the_planned_delete_rereads_the_lab_the_server_and_the_pod() -> None:
    truth = Truth({"stale": Lab(None, "running", None)})
    [finding] = run(labs.detect, truth.labs_snapshot(), truth).findings
    action = finding.action
    assert action is not None and action.destructive
    assert (action.source, action.call, dict(action.params)) == (
        "nublado", "delete_lab", {"user": "stale"})
    assert {(n.key, n.source, n.call) for n in action.verify} == {
        ("lab", "nublado", "lab"), ("server", "hubapi", "server"), ("pod", "kube", "pod")}
    assert "env" not in str(action.before)
    lab = _lab_state("stale", "running")
    assert labs.verify(finding, {"lab": lab, "server": None, "pod": None}, NOW) is None
    assert "no longer has a lab" in str(labs.verify(finding, {"lab": None}, NOW))
    assert "terminating" in str(labs.verify(
        finding, {"lab": _lab_state("stale", "terminating")}, NOW))
    assert "hub now runs" in str(labs.verify(
        finding, {"lab": lab, "server": {"user": "stale"}, "pod": None}, NOW))
    assert "exists" in str(labs.verify(
        finding, {"lab": lab, "server": None, "pod": _pod("stale", "Pending")}, NOW))
    respawned = {**lab, "internal_url": "http://elsewhere:8888"}
    assert "changed" in str(labs.verify(finding, {"lab": respawned, "server": None,
                                                  "pod": None}, NOW))


def test_a_pod_outside_the_list_is_found_by_name_and_nothing_is_deleted() -> None:
    truth = Truth({"moved": Lab(None, "running", "Running")})
    snap = truth.labs_snapshot()
    snap.observations["pods"] = []  # the selector misses it; the read by name finds it
    assert run(labs.detect, snap, truth).findings == []


def test_most_running_labs_without_pods_is_a_wrong_view_not_many_stale_labs() -> None:
    truth = Truth({f"u{i}": Lab(None, "running", "Running") for i in range(20)})
    snap = truth.labs_snapshot()
    snap.observations["pods"] = []  # the wrong cluster: and by name there is nothing either

    class Elsewhere(Truth):
        def lookup(self, key: str) -> Obj | None:
            return None if key.startswith("pod:") else super().lookup(key)

    with pytest.raises(ImplausibleData) as wrong:
        run(labs.detect, snap, Elsewhere(truth.users))
    assert wrong.value.notify and "view is probably wrong" in str(wrong.value)


def test_a_controller_that_knows_none_of_the_hubs_labs_is_the_wrong_controller() -> None:
    truth = Truth({f"u{i}": Lab("running", None, "Running") for i in range(10)})
    with pytest.raises(ImplausibleData, match="nublado_url"):
        run(labs.detect, truth.labs_snapshot(), truth)


HUB = (None, "running", "spawn", "stop")
CONTROLLER = (None, "running", "pending", "terminating", "failed")
POD = (None, "Running", "Failed", "deleting")


@pytest.mark.parametrize("namespace", [True, False])
def test_the_two_checks_never_plan_competing_actions_for_one_user(namespace: bool) -> None:
    """Every combination of the four records, one user each, judged by both checks in one
    pass: labs plans an action only where the hub runs nothing and no pod exists, and then
    sessions plans no destructive action for that user."""
    cases = {f"u{i}": Lab(h, c, p, namespace)
             for i, (h, c, p) in enumerate(itertools.product(HUB, CONTROLLER, POD))}
    truth = Truth(cases)
    # Few findings per kind are expected, but the combinations put many in one pass: judge
    # absence with the implausibility rule relaxed, as for a hub this broken on purpose.
    labs_found = run(labs.detect, truth.labs_snapshot(max_missing_fraction=1.0), truth).findings
    sessions_snap = truth.sessions_snapshot()
    sessions_snap.settings = sessions.TargetSettings(**{
        **sessions_snap.settings.__dict__,
        "check": sessions.Settings(max_missing_fraction=1.0)})
    sessions_found = run(sessions.detect, sessions_snap, truth).findings
    labs_acting = {f.subject for f in labs_found if f.action is not None}
    assert labs_acting, "the matrix must contain rows labs acts on"
    for user in labs_acting:
        lab = cases[user]
        assert lab.hub is None and lab.pod is None, (user, lab)
    sessions_destructive = {f.subject for f in sessions_found
                            if f.action is not None and f.action.destructive}
    assert sessions_destructive, "the matrix must contain rows sessions acts on"
    assert not labs_acting & sessions_destructive


def test_targets_share_the_sessions_checks_reads() -> None:
    hub = HubConfig.model_validate({
        "cluster": "js2", "namespace": "nublado", "layout": "nublado",
        "api_url": "http://hub:8081/hub/api", "nublado_url": "http://ctl/nublado",
        # DB mode: the sessions check reads active_servers too (API mode reads sessions())
        "db_url": "sqlite:////nonexistent/jupyterhub.sqlite",
        "nublado_token_file": "secrets/nublado-token"})
    plain = HubConfig.model_validate({"cluster": "js2", "api_url": "http://hub2/hub/api"})
    inventory = Inventory(clusters={}, hubs={"rsp": hub, "main": plain}, clouds={})
    [target] = labs.targets(labs.Settings(), inventory)
    assert target.name == "rsp"
    [sessions_target, _] = sessions.targets(sessions.Settings(), inventory)
    shared = {_fetch_id(n) for n in target.needs} & {_fetch_id(n) for n in sessions_target.needs}
    assert {f[2] for f in shared} == {"active_servers", "pods"}


def test_a_controller_url_needs_the_nublado_layout_and_a_token() -> None:
    with pytest.raises(ValueError, match="layout"):
        HubConfig.model_validate({"cluster": "js2", "api_url": "http://hub/hub/api",
                                  "nublado_url": "http://ctl/nublado",
                                  "nublado_token_file": "t"})
    with pytest.raises(ValueError, match="nublado_token_file"):
        HubConfig.model_validate({"cluster": "js2", "api_url": "http://hub/hub/api",
                                  "layout": "nublado", "nublado_url": "http://ctl/nublado"})
