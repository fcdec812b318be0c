"""The real engine against a simulated world: each session problem is found, planned, and fixed.

Every test builds a :class:`~watchdogd.sim.world.World` (KubeSim + ChpSim + HubSim on free
ports, a real TOML configuration), plants one problem, and runs passes of the real Engine
(Store, Sources, the sessions check) with a simulated clock that moves five minutes a pass.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from watchdogd.checks import REGISTRY
from watchdogd.cli import main
from watchdogd.sim import demo as demo_module
from watchdogd.sim.demo import LEFT_TO_PEOPLE, Demo, DemoWorld, build_world
from watchdogd.sim.seed import DEMO_USERS
from watchdogd.sim.world import EXPECTED_ACTION, SimClock, World, dumps_toml

KINDS = list(EXPECTED_ACTION)


@pytest.fixture
def make_world() -> Iterator[Callable[..., World]]:
    worlds: list[World] = []

    def make(**kwargs: Any) -> World:
        # A spawn is stuck once both the hub's clock and watchdogd's own sightings say so:
        # 5 minutes (one pass here) instead of the default 15.
        kwargs.setdefault("sessions", {"stuck_spawn_after": "5m"})
        world = World(clock=SimClock(), **kwargs).start()
        worlds.append(world)
        world.healthy(users=4, running=3)
        return world

    yield make
    for world in worlds:
        world.stop()


def run(world: World, passes: int, **engine: Any) -> list[dict[str, Any]]:
    """``passes`` sessions passes, five simulated minutes apart; their JSON reports."""
    clock = world.clock
    assert isinstance(clock, SimClock)
    eng = world.engine(**engine)
    reports = []
    for _ in range(passes):
        report = eng.run_pass(only=["sessions"]).as_json()
        assert report["summary"]["errors"] == 0, report
        reports.append(report)
        clock.advance(minutes=5)
    return reports


def findings(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f["kind"], f["subject"]): f for c in report["checks"] for f in c["findings"]}


def plant(world: World, kind: str) -> str:
    """Plant one problem of ``kind``; returns its subject."""
    injectors: dict[str, Callable[[], str]] = {
        "stale-session": lambda: world.stale_session("niklaus"),
        "dead-session": lambda: world.dead_session("radia"),
        "orphan-pod": lambda: world.orphan_pod("tim"),
        "missing-route": lambda: world.missing_route("guido"),
        "stale-route": lambda: world.stale_route("bjarne"),
        "route-mismatch": lambda: world.route_mismatch("larry"),
        "stuck-spawn": lambda: world.stuck_spawn("donald", minutes=30),
        "stuck-stop": lambda: world.stuck_stop("sophie"),
        "invalid-username-label": lambda: world.invalid_username("_alice"),
    }
    return injectors[kind]()


def test_a_healthy_world_has_no_findings(make_world: Callable[..., World]) -> None:
    world = make_world()
    [report] = run(world, 1)
    assert findings(report) == {}
    assert [c["status"] for c in report["checks"]] == ["ok"]


def test_the_world_is_sane_for_every_registered_check(make_world: Callable[..., World]) -> None:
    """``watchdogd check -c world.toml`` with all checks: no check finds the world implausible."""
    world = make_world()
    report = world.engine(dry_run=True).run_pass().as_json()
    assert report["summary"]["errors"] == 0, [c["error"] for c in report["checks"]]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_found_with_its_planned_action(
        make_world: Callable[..., World], kind: str) -> None:
    world = make_world()
    subject = plant(world, kind)
    # a pending stop becomes stuck-stop after checks.sessions.stuck_stop_after (10m), a
    # pending spawn stuck-spawn once watchdogd has seen it for stuck_spawn_after (5m here)
    passes = {"stuck-stop": 3, "stuck-spawn": 2}.get(kind, 1)
    reports = run(world, passes, dry_run=True)
    found = findings(reports[-1])
    assert set(found) == {(kind, subject)}, found.keys()
    action = found[(kind, subject)]["action"]
    expected = EXPECTED_ACTION[kind]
    if expected is None:
        assert action is None
    else:
        assert action["name"] == expected
        assert action["status"] in ("unconfirmed", "disabled")
        if kind == "stuck-stop":
            assert action["status"] == "disabled"


def test_dry_run_changes_nothing(make_world: Callable[..., World]) -> None:
    world = make_world()
    world.stale_session("niklaus")
    reports = run(world, 3, dry_run=True)
    action = findings(reports[-1])[("stale-session", "niklaus")]["action"]
    assert action["status"] == "dry-run"
    assert world.hub.is_running("niklaus")


def test_the_fixable_problems_are_resolved(make_world: Callable[..., World]) -> None:
    world = make_world()
    for kind in KINDS:
        plant(world, kind)
    reports = run(world, 4)
    first, second, third, fourth = (findings(r) for r in reports)
    # pass 1: everything unconfirmed, nothing done
    assert all(f["action"] is None or f["action"]["status"] in ("unconfirmed", "disabled")
               for f in first.values())
    assert len(first) == 7  # stuck-stop and stuck-spawn are not stuck yet at t+0
    # pass 2: confirmed, done through the Hub API and the Kubernetes API
    done = {k: f["action"]["name"] for k, f in second.items()
            if f["action"] and f["action"]["status"] == "done"}
    assert done == {
        ("stale-session", "niklaus"): "stop-server",
        ("dead-session", "radia"): "stop-server",
        ("orphan-pod", "tim"): "delete-pod",
        ("missing-route", "guido"): "sync-routes",
        ("stale-route", "bjarne"): "sync-routes",
        ("route-mismatch", "larry"): "sync-routes",
    }
    assert second[("stuck-spawn", "donald")]["action"]["status"] == "unconfirmed"
    assert third[("stuck-spawn", "donald")]["action"]["status"] == "done"
    # pass 4: what was fixed is gone; what is left to people stays, with the reason
    assert set(fourth) == {("stuck-stop", "sophie"), ("invalid-username-label", "_alice")}
    assert fourth[("stuck-stop", "sophie")]["action"]["status"] == "disabled"
    resolved = {key for c in reports[2]["checks"] for key in c["resolved"]}
    assert "sessions/main/stale-session/niklaus" in resolved
    # ...and the world says so, not just the report
    hub, kube, chp = world.hub, world.kube, world.chp
    for user in ("niklaus", "radia", "donald"):
        assert not hub.is_running(user), user
    assert kube.get("Pod", "jupyter-radia", "jhub") is None
    assert kube.get("Pod", "jupyter-donald", "jhub") is None
    assert kube.get("Pod", "jupyter-tim", "jhub") is None
    assert chp.route("/user/guido") is not None
    assert chp.route("/user/bjarne") is None
    larry = hub.spawner("larry")
    assert larry is not None
    assert chp.route("/user/larry") == {
        "user": "larry", "server_name": "", "jupyterhub": True,
        "target": f"http://{larry['server']['ip']}:8888",
        "last_activity": chp.routes["/user/larry"]["last_activity"]}
    assert hub.is_running("sophie")
    assert hub.pending("sophie") == "stop"
    # the healthy users were never touched
    assert all(hub.is_running(u) for u in ("ada", "alan", "barbara"))


def test_restart_hub_clears_a_stuck_stop_when_enabled(make_world: Callable[..., World]) -> None:
    world = make_world(remediation={"enabled": ["stop-server", "sync-routes", "restart-hub"]})
    world.stuck_stop("sophie")
    old_pod = world.hub.hub_pod
    reports = run(world, 4)
    actions = [findings(r).get(("stuck-stop", "sophie"), {}).get("action") for r in reports]
    assert actions[0] is None  # not stuck yet at t+0 and t+5 min
    assert actions[2] == {"name": "restart-hub", "status": "unconfirmed",
                          "detail": "seen in 1 of 2 passes needed"}
    assert actions[3] is not None
    assert actions[3]["status"] == "done"
    world.hub.check_restart()  # the Deployment brings a new hub pod
    assert world.hub.restarts == 1
    assert world.hub.hub_pod != old_pod
    assert not world.hub.is_running("sophie")
    [after] = run(world, 1)
    assert findings(after) == {}


def test_nublado_layout(make_world: Callable[..., World]) -> None:
    world = make_world(layout="nublado", namespace="nublado")
    world.stale_session("rubin")
    world.orphan_pod("vera")
    reports = run(world, 3)
    assert set(findings(reports[0])) == {("stale-session", "rubin"), ("orphan-pod", "vera")}
    assert findings(reports[2]) == {}
    assert not world.hub.is_running("rubin")
    assert world.kube.get("Pod", "vera-nb", "nublado-vera") is None


def test_config_file_is_complete_and_loads(make_world: Callable[..., World]) -> None:
    world = make_world(notify_url="json://127.0.0.1:9/never")
    text = world.config_path.read_text()
    assert world.hub.token not in text  # secrets live in files
    config = world.load_config()
    hub = config.hubs["main"]
    assert hub.api_url == world.hub.api_url
    assert hub.api_token is not None
    assert hub.api_token.get_secret_value() == world.hub.token
    assert hub.proxy_api_url == world.chp.url
    assert config.clusters["sim"].kubeconfig == str(world.kubeconfig_path)
    assert config.notify.urls is not None
    assert config.remediation.dry_run is False


def test_parts_plug_in(make_world: Callable[..., World]) -> None:
    class Part:
        name = "extra"
        checks = ("nodes",)
        started = stopped = False

        def start(self, world: World) -> None:
            self.started = True

        def config(self, world: World) -> dict[str, Any]:
            return {"checks": {"nodes": {"interval": "2m"}}}

        def stop(self) -> None:
            self.stopped = True

    world = make_world()
    part = Part()
    world.add_part(part)
    assert part.started
    assert world.parts["extra"] is part
    assert world.checks_in_play == ["sessions", "nodes"]
    assert "[checks.nodes]" in world.config_path.read_text()
    assert REGISTRY["nodes"].settings(world.load_config().checks).interval.total_seconds() == 120
    world.stop()
    assert part.stopped


def test_dumps_toml_round_trips() -> None:
    import tomllib

    data = {"a": 1, "b": {"c": "x\"y", "d": [1, 2], "e": {"f": True}}, "g": {"h.i": 1.5}}
    assert tomllib.loads(dumps_toml(data)) == data


# -- watchdogd demo: every check, every kind ----------------------------------------------------

#: What the demo plants, per check: one problem of each kind (credential-invalid is left out:
#: a cloud that rejects watchdogd's credentials yields no other volume verdict at all).
DEMO_KINDS = {
    "sessions": set(KINDS),
    "culler": {"culler-overdue", "culler-missing"},
    "probes": {"hub-unresponsive"},
    "labs": {"controller-stale-lab", "lab-pod-missing", "controller-lost-lab", "lab-stuck",
             "lab-namespace-orphan"},
    "volumes": {"volume-stuck", "attachment-stale", "volume-attach-failed",
                "credential-expiring"},
    "orphans": {"orphan-volume", "foreign-volume", "released-pv", "orphan-extra-pvc",
                "pvc-stuck-terminating", "check-failing"},
    "quotas": {"quota-near", "quota-exhausted"},
    "certs": {"cert-expiring", "cert-hostname-mismatch", "cert-unreadable"},
    "nodes": {"node-pressure", "node-not-ready", "failed-pods", "image-cache-pressure",
              "core-pod-misplaced", "namespace-stuck-terminating", "node-shelved",
              "check-failing"},
}
#: The kinds the demo fixes (an orphaned volume: quarantines) within its four passes.
FIXABLE = {kind for kind, action in EXPECTED_ACTION.items()
           if action and kind != "stuck-stop"} | {
    "volume-stuck", "attachment-stale", "orphan-volume", "failed-pods", "controller-stale-lab",
    "lab-pod-missing", "orphan-extra-pvc"}


def test_the_demo_plants_every_kind_and_fixes_the_fixable() -> None:
    world = build_world(passes=4)
    try:
        out = io.StringIO()
        demo = Demo(world, out, as_json=False)
        assert demo.run(4, keep=False) == 0
        problems = world.all_problems()
        assert sorted((p.check, p.kind) for p in problems) == sorted(
            (check, kind) for check, kinds in DEMO_KINDS.items() for kind in kinds)
        verdicts = {o.problem.kind: o.verdict for o in demo.outcomes}
        assert verdicts == {kind: "fixed" if kind in FIXABLE else "left to people"
                            for kinds in DEMO_KINDS.values() for kind in kinds}
        for outcome in demo.outcomes:
            if outcome.verdict == "left to people":
                assert outcome.reason == LEFT_TO_PEOPLE[outcome.problem.kind]

        # ...and the world says so, not just the report.
        sim = world.cloud.sim
        assert sim is not None
        injected = world.cloud.injected
        stuck = sim.volume(injected["stuck"][0])
        assert stuck is not None and stuck["status"] == "available"
        assert sim.attachments(injected["stuck"][0]) == []
        dangling_volume = next(a["volume_id"] for a in sim.attachments()
                               if a["id"] != injected["dangling"][0]
                               and a["volume_id"] == injected["volumes"][1])
        assert [a["status"] for a in sim.attachments(dangling_volume)] == ["attached"]
        orphan = sim.volume(injected["orphans"][0])
        assert orphan is not None  # quarantined, never deleted
        assert "watchdogd-orphaned-since" in orphan["metadata"]
        # The departed user's extra claim: marked, still there (delete-extra-pvc waits).
        for claim in injected["extra_pvcs"]:
            namespace, name = claim.split("/", 1) if "/" in claim else ("jhub", claim)
            kept = world.kube.get("PersistentVolumeClaim", name, namespace)
            assert kept is not None
            assert "watchdogd-orphaned-since" in kept["metadata"]["annotations"]
        kube = world.kube
        assert kube.get("Pod", "failed-0", "staging") is None
        assert kube.get("Pod", "jupyter-tim", "jhub") is None
        for user in ("niklaus", "radia", "donald"):
            assert not world.hub.is_running(user), user
        # What is left to people is left alone.
        assert world.hub.pending("sophie") == "stop"
        assert all(world.hub.is_running(u) for u in ("hedy", "alonzo", "robin"))  # the culler's
        overdue = next(o for o in demo.outcomes if o.problem.kind == "culler-overdue")
        assert overdue.problem.subject == "main"
        world.hub.check_restart()
        assert world.hub.restarts == 0  # hub-unresponsive: restart-hub is not enabled
        assert kube.get("Pod", "proxy-6d9f7b7c5-9kq2m", "staging") is not None
        assert kube.get("Namespace", "nublado-carol") is not None
        assert kube.get("Secret", "hub-tls", "staging") is not None
        assert kube.get("PersistentVolumeClaim", "postgres-mallory", "jhub") is not None
        assert kube.get("PersistentVolume", injected["released"][0]) is not None
        assert sim.volume(injected["attach_failed"][0]) is not None
        assert all(a["status"] == "attached"
                   for a in sim.attachments(injected["attach_failed"][0]))
        assert sim.errors == []
        # The Nublado hub beside it: the stale lab is gone from the controller's memory and
        # its namespace with it; the healthy labs are untouched.
        nublado = world.nublado
        assert nublado.controller.state("rachel") is None
        assert kube.get("Namespace", "nublado-rachel") is None
        assert sorted(nublado.controller.running()) == sorted(demo_module.NUBLADO_HEALTHY)
        assert all(nublado.hub.is_running(user) for user in demo_module.NUBLADO_HEALTHY)
        # sam's lab was stopped through the hub (sessions), which deleted it in the controller
        assert not nublado.hub.is_running("sam") and nublado.controller.state("sam") is None
        # the reported rows are left alone
        assert nublado.hub.is_running("tess") and nublado.controller.state("tess") is None
        assert (nublado.controller.state("uma") or {}).get("status") == "terminating"
        assert kube.get("Namespace", "nublado-vic") is not None
    finally:
        world.stop()
    assert not world.workdir.exists()
    assert world.cluster.servers == []


def test_watchdogd_demo_exits_0_and_explains(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    worlds: list[DemoWorld] = []

    def recording(passes: int = 4) -> DemoWorld:
        worlds.append(build_world(passes))
        return worlds[-1]

    monkeypatch.setattr(demo_module, "build_world", recording)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--passes", "4"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # the text as read, whatever the wrapping
    for check, kinds in DEMO_KINDS.items():
        assert f"{check}: " in out  # each check introduced, and its targets reported
        for kind in kinds:
            assert kind in out
            verdict = "fixed" if kind in FIXABLE else "left to people"
            assert f"{verdict}: {kind} " in out, kind
    assert "held back, not confirmed yet" in out
    assert "DONE: stopped (204)" in out
    assert "DONE: deleted reserved attachment" in out
    assert "DONE: deleted pod staging/failed-0" in out
    assert "checks.orphans.quarantine_days = 14 days" in out
    assert "checks.nodes.failed_pod_min_age = 10 minutes" in out
    assert "checks.volumes.stuck_after = 5 minutes" in out
    assert "not settled yet (try" not in out
    # Nova behind the nodes: the crashed server is named, the shelved node is no page
    assert "node-not-ready node-2" in out and "is ERROR" in out
    assert "node-shelved node-4" in out and "SHELVED_OFFLOADED" in out
    # the quota that runs out first, with its headroom
    assert "quota-near volume/gigabytes" in out and "15 left" in out
    assert "room for 1 (gigabytes runs out first)" in out
    assert ("3 server(s) of hub main idle longer than the culler's timeout (1h00m, from the "
            "command)") in out
    assert "DONE: lab deleted (204)" in out
    # The runbook's last resort, tried on the stuck stop while the hub runs: refused.
    flat = " ".join(out.split())
    assert "watchdogd repair-session sophie --hub main" in flat
    assert "With the hub running: exit 75, refused: the hub is running" in flat
    assert "The world converged: 14 of 14 fixable problems fixed" in out
    assert "delete-extra-pvc is on, and waits those 14 days too" in out
    # the planted outages: the hub behind a 504, the edge cluster's API server answering 503
    assert "got HTTP 504" in out and "rollout restart deploy/hub" in out
    assert "could not read nodes (kube edge)" in out and "HTTP 503" in out
    # the map of users' disks, one row per seeded user's claim (and the extra claim)
    assert "The map of users' disks (watchdogd volumes map): " in out
    for user in DEMO_USERS:
        assert f"{user} jhub claim-{user} pvc-" in out
    # everything it started is gone
    [world] = worlds
    assert not world.workdir.exists()
    assert world.cluster.servers == []


def test_watchdogd_demo_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--passes", "2", "--json"])
    assert exit_info.value.code == 0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(reports) == 2
    assert reports[0]["summary"]["actions_done"] == 0
    assert reports[1]["dry_run"] is False
    assert {c["check"] for c in reports[1]["checks"]} == set(DEMO_KINDS)
    # only the planted dead API server (cluster edge) keeps a target from completing
    assert {(c["check"], c["target"]) for r in reports for c in r["checks"]
            if c["status"] == "error"} == {("nodes", "edge"), ("orphans", "edge")}
    done = Counter(f["action"]["name"] for c in reports[1]["checks"] for f in c["findings"]
                   if f["action"] and f["action"]["status"] == "done")
    # confirmed in pass 2: the sessions remedies and the orphans' quarantines; the stuck spawn,
    # the reservations and the failed pod are judged later (stuck_spawn_after, stuck_after,
    # failed_pod_min_age)
    # (and on the Nublado hub: the stale lab's delete, and sam's stop through the hub)
    assert done == {"stop-server": 3, "delete-pod": 1, "sync-routes": 3, "quarantine": 1,
                    "delete-lab": 1, "quarantine-extra-pvc": 1}
    # the three route findings share one sync-routes run: it counts once, as in the audit log
    assert reports[1]["summary"]["actions_done"] == 8
