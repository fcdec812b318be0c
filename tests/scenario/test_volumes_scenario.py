"""The real engine against simulated OpenStack and Kubernetes: volumes and orphans found and
fixed, the union over three clusters (one of them failing), and the faults of a pass: Keystone
down, bad or expiring credentials, a token revoked half way, Cinder 503s, and a volume that
changes state during the pass.

Simulated time (a SimClock shared by the simulators and the engine) moves five minutes a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.sim.kube import KubeSim
from watchdogd.sim.objects import failed_attach_event, pv_for_volume, pvc_for_user
from watchdogd.sim.openstack import OpenStackSim
from watchdogd.sim.parts import CloudPart
from watchdogd.sim.world import SimClock, World
from watchdogd.sources import Sources
from watchdogd.store import Store

Obj = dict[str, Any]


def findings(report: Obj, check: str | None = None) -> dict[tuple[str, str], Obj]:
    return {(f["kind"], f["subject"]): f for c in report["checks"]
            if check is None or c["check"] == check for f in c["findings"]}


def status_of(report: Obj, check: str) -> str:
    (entry,) = [c for c in report["checks"] if c["check"] == check]
    return str(entry["status"])


# -- the demo world: found and fixed ------------------------------------------------------------


def test_demo_world_volumes_found_and_fixed() -> None:
    part = CloudPart()
    with World(clock=SimClock(), parts=[part]) as world:
        world.healthy(users=4, running=3)
        sim = part.sim
        assert sim is not None
        stuck, dangling = part.injected["stuck"][0], part.injected["dangling"][0]
        engine = world.engine()
        reports = []
        for _ in range(4):
            report = engine.run_pass(only=["volumes", "orphans"]).as_json()
            assert report["summary"]["errors"] == 0, [c["error"] for c in report["checks"]]
            reports.append(report)
            world.clock.advance(minutes=5)  # type: ignore[attr-defined]
        first, second, third, fourth = (findings(r) for r in reports)

        # pass 1: the orphans are reported at once; nothing stuck is judged on one sighting
        assert not any(k in ("volume-stuck", "attachment-stale") for k, _ in first)
        orphan = part.injected["orphans"][0]
        assert first[("orphan-volume", orphan)]["action"]["status"] == "unconfirmed"
        assert ("released-pv", f"sim/{part.injected['released'][0]}") in first
        assert ("orphan-extra-pvc", "sim/jhub/postgres-mallory") in first

        # pass 2: stuck and dangling seen for five minutes by both clocks
        stale_lone = next(f for (k, _), f in second.items() if k == "attachment-stale"
                          and f["evidence"]["volume"]["id"] == stuck)
        assert stale_lone["action"]["status"] == "unconfirmed"
        stuck_finding = second[("volume-stuck", stuck)]
        assert stuck_finding["action"] is None and "deleted first" in stuck_finding["message"]
        assert "ada" in stuck_finding["message"] and stuck_finding["severity"] == "critical"
        assert second[("attachment-stale", dangling)]["action"]["name"] == "delete-attachment"
        # the orphan, seen twice, is quarantined (a metadata mark, nothing deleted)
        assert second[("orphan-volume", orphan)]["action"]["status"] == "done"
        marked = sim.volume(orphan)
        assert marked is not None and "watchdogd-orphaned-since" in marked["metadata"]

        # pass 3: confirmed: both dangling attachments are deleted
        done = {k: f["action"]["detail"] for k, f in third.items()
                if f["action"] and f["action"]["status"] == "done"}
        assert ("attachment-stale", dangling) in done
        assert ("attachment-stale", stale_lone["subject"]) in done
        volume = sim.volume(stuck)
        assert volume is not None and volume["status"] == "available"
        assert [a["status"] for a in sim.attachments(part.injected["volumes"][1])] == [
            "attached"]

        # pass 4: what was fixed is resolved; the orphan stays reported, quarantined
        assert not any(k in ("volume-stuck", "attachment-stale") for k, _ in fourth)
        assert "quarantined since" in fourth[("orphan-volume", orphan)]["message"]
        resolved = {key for c in reports[3]["checks"] for key in c["resolved"]}
        assert f"volumes/sim-cloud/volume-stuck/{stuck}" in resolved
        # nothing was ever deleted
        assert sim.volume(orphan) is not None
        assert sim.errors == []


# -- a cloud with three clusters -----------------------------------------------------------------


class Env:
    """One OpenStackSim and three KubeSims, a config and engines on a shared SimClock."""

    def __init__(self, tmp: Path, clusters: int = 3, **checks: Obj) -> None:
        self.clock = SimClock()
        self.tmp = tmp
        self.os = OpenStackSim(clock=self.clock, page_max=100).start()
        self.kubes: dict[str, KubeSim] = {}
        for i in range(1, clusters + 1):
            self.kubes[f"c{i}"] = KubeSim().start()
        self.checks = {"volumes": {"stuck_after": "5m", "attachment_stale_after": "10m"},
                       "orphans": {}, **checks}
        self.remediation: Obj = {"dry_run": False, "confirm_after": 2, "min_age": "0s",
                                 "enabled": ["delete-attachment", "reset-volume-status",
                                             "quarantine"]}
        self.clouds_yaml = self.os.write_clouds_yaml(tmp / "clouds.yaml", "js2")
        self.closers: list[Callable[[], None]] = []

    def config(self, **cloud: Any) -> Config:
        clusters = {}
        for name, kube in self.kubes.items():
            path = kube.write_kubeconfig(self.tmp / f"kube-{name}", context=name)
            clusters[name] = {"kubeconfig": path, "context": name, "timeout": "5s",
                              "page_size": 1000}
        return Config.model_validate({
            "state": {"url": f"sqlite:///{self.tmp / 'state.db'}"},
            "remediation": self.remediation,
            "clusters": clusters,
            "clouds": {"js2": {"cloud": "js2", "clouds_yaml": self.clouds_yaml,
                               "clusters": list(self.kubes), "timeout": "5s", **cloud}},
            "checks": self.checks,
        })

    def engine(self, *, skew: timedelta = timedelta(0), **cloud: Any) -> Engine:
        """An engine whose clock is ``skew`` ahead of the simulators' (Cinder's)."""
        config = self.config(**cloud)
        store = Store(config.state.resolved_url())
        sources = Sources(config)
        self.closers += [store.close, sources.close]
        return Engine(config, store, sources, clock=lambda: self.clock() + skew)

    def passes(self, engine: Engine, n: int, only: str) -> list[Obj]:
        reports = []
        for _ in range(n):
            reports.append(engine.run_pass(only=[only]).as_json())
            self.clock.advance(minutes=5)
        return reports

    def bind(self, cluster: str, volume: Obj, user: str, phase: str = "Bound") -> None:
        self.kubes[cluster].put_many([
            pv_for_volume(volume, claim_namespace="jhub", claim_name=f"claim-{user}",
                          phase=phase),
            pvc_for_user(user, volume["name"])])

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        for kube in self.kubes.values():
            kube.stop()
        self.os.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    world = Env(tmp_path)
    yield world
    world.close()


def test_orphans_union_over_three_clusters(env: Env) -> None:
    used = {name: env.os.add_volume(f"pvc-{name}", age=timedelta(days=5))
            for name in ("a", "b", "c")}
    env.bind("c1", used["a"], "alice")
    env.bind("c2", used["b"], "bob")
    env.bind("c3", used["c"], "carol", phase="Released")
    orphan = env.os.inject_orphan_volume("pvc-nobody")
    env.os.add_volume("boot-disk", age=timedelta(days=5))
    engine = env.engine()
    (report,) = env.passes(engine, 1, "orphans")
    assert status_of(report, "orphans") == "findings"
    found = findings(report)
    assert set(found) == {("orphan-volume", orphan["id"]), ("released-pv", "c3/pvc-c")}

    # c2's PV list fails: the one volume only c2 references must not look orphaned, and no
    # verdict at all comes out, not even the ones that c1 and c3 alone would support
    env.kubes["c2"].fail(r"/persistentvolumes$", status=500)
    (failed,) = env.passes(engine, 1, "orphans")
    assert status_of(failed, "orphans") == "error"
    assert "c2" in failed["checks"][0]["error"] or "500" in failed["checks"][0]["error"]
    assert findings(failed) == {}
    assert failed["checks"][0]["resolved"] == []  # an incomplete pass resolves nothing
    assert env.os.volume(used["b"]["id"]) is not None


def test_orphan_quarantine_then_delete_after_the_quarantine(env: Env) -> None:
    env.remediation["enabled"].append("delete-orphan-volume")
    env.checks["orphans"] = {"quarantine_days": 1}
    keep = env.os.add_volume("pvc-keep", age=timedelta(days=5))
    env.bind("c1", keep, "alice")
    orphan = env.os.inject_orphan_volume("pvc-gone")
    engine = env.engine()
    reports = env.passes(engine, 2, "orphans")
    action = findings(reports[1])[("orphan-volume", orphan["id"])]["action"]
    assert action["name"] == "quarantine" and action["status"] == "done"
    (waiting,) = env.passes(engine, 1, "orphans")
    assert "deletable once" in findings(waiting)[("orphan-volume", orphan["id"])]["message"]
    env.clock.advance(days=1)
    # the orphan finding has been confirmed pass after pass for a day: the first pass after
    # the quarantine deletes it
    (report,) = env.passes(engine, 1, "orphans")
    action = findings(report)[("orphan-volume", orphan["id"])]["action"]
    assert action["name"] == "delete-orphan-volume" and action["status"] == "done", action
    assert env.os.volume(orphan["id"]) is None
    assert env.os.volume(keep["id"]) is not None


def test_watchdogd_days_ahead_of_cinder_resets_and_deletes_nothing(env: Env) -> None:
    """Cinder's timestamps are aged on Cinder's clock: a skew of days proves nothing."""
    env.remediation["enabled"].append("delete-orphan-volume")
    env.checks["orphans"] = {"quarantine_days": 14}
    env.checks["volumes"] = {"stuck_after": "1h"}
    young = env.os.inject_stuck_volume("pvc-young", status="error_deleting",
                                       age=timedelta(minutes=1))
    keep = env.os.add_volume("pvc-keep", age=timedelta(days=30))
    env.bind("c1", keep, "alice")
    orphan = env.os.inject_orphan_volume("pvc-gone")
    engine = env.engine(skew=timedelta(days=15))
    reports = env.passes(engine, 2, "volumes") + env.passes(engine, 5, "orphans")
    found = [f for r in reports for f in findings(r).values()]
    assert not [f for f in found if f["kind"] == "volume-stuck"]
    done = [f["action"]["name"] for f in found if f["action"] and f["action"]["status"] == "done"]
    assert done == ["quarantine"]
    assert env.os.volume(orphan["id"]) is not None
    volume = env.os.volume(young["id"])
    assert volume is not None and volume["status"] == "error_deleting"
    # The mark carries Cinder's time, not watchdogd's 15 days ahead.
    mark = (env.os.volume(orphan["id"]) or {})["metadata"]["watchdogd-orphaned-since"]
    marked = datetime.fromisoformat(mark.replace("Z", "+00:00"))
    assert timedelta(0) <= env.clock() - marked <= timedelta(hours=1)


def test_watchdogd_behind_cinder_still_repairs_what_is_stuck_on_cinders_clock(
        env: Env) -> None:
    stuck = env.os.inject_stuck_volume("pvc-old", status="error_deleting",
                                       age=timedelta(hours=3))
    engine = env.engine(skew=-timedelta(days=15))
    reports = env.passes(engine, 3, "volumes")
    done = [f["action"]["name"] for r in reports for f in findings(r).values()
            if f["action"] and f["action"]["status"] == "done"]
    assert done == ["reset-volume-status"]
    volume = env.os.volume(stuck["id"])
    assert volume is not None and volume["status"] == "available"


def test_without_cinders_date_header_its_ages_wait_for_watchdogds_own(env: Env) -> None:
    env.os.send_date = False
    env.checks["volumes"] = {"stuck_after": "12m"}
    stuck = env.os.inject_stuck_volume("pvc-old", status="error_deleting",
                                       age=timedelta(hours=3))
    engine = env.engine()
    first, second, third, fourth = env.passes(engine, 4, "volumes")
    key = ("volume-stuck", stuck["id"])
    # 0, 5 and 10 minutes of watchdogd's own sightings are not 12: nothing yet.
    assert key not in findings(first) and key not in findings(second)
    assert key not in findings(third)
    assert findings(fourth)[key]["action"]["name"] == "reset-volume-status"


def stuck_world(env: Env) -> tuple[Obj, Obj]:
    """A reserved volume whose attach never completed, and one with a dangling attachment."""
    reserved = env.os.inject_stuck_volume("pvc-alice", status="reserved",
                                          age=timedelta(hours=2))
    env.bind("c1", reserved, "alice")
    env.kubes["c1"].put(failed_attach_event("jhub", "jupyter-alice", "pvc-alice",
                                            when=env.clock()))
    volume, dangling = env.os.inject_dangling_attachment("pvc-bob", age=timedelta(hours=2))
    env.bind("c2", volume, "bob")
    return reserved, dangling


def test_ladder_attachment_first_then_nothing_left_to_reset(env: Env) -> None:
    reserved, dangling = stuck_world(env)
    engine = env.engine()
    reports = env.passes(engine, 5, "volumes")
    assert all(r["summary"]["errors"] == 0 for r in reports)
    lone = env.os.attachments(reserved["id"])
    assert lone == []  # deleted by watchdogd
    volume = env.os.volume(reserved["id"])
    assert volume is not None and volume["status"] == "available"
    assert [a["status"] for a in env.os.attachments(dangling["volume_id"])] == ["attached"]
    actions = [(k, f["action"]["name"]) for r in reports for k, f in findings(r).items()
               if f["action"] and f["action"]["status"] == "done"]
    assert {name for _, name in actions} == {"delete-attachment"}  # no reset was needed
    assert findings(reports[-1]) == {}


def test_reset_when_no_attachment_is_left(env: Env) -> None:
    volume = env.os.inject_stuck_volume("pvc-d", status="error_deleting",
                                        age=timedelta(hours=1))
    detaching = env.os.inject_stuck_volume("pvc-e", status="detaching", age=timedelta(hours=1))
    engine = env.engine()
    reports = env.passes(engine, 3, "volumes")
    done = {k: f["action"] for k, f in findings(reports[2]).items()
            if f["action"] and f["action"]["status"] == "done"}
    assert set(done) == {("volume-stuck", volume["id"]), ("volume-stuck", detaching["id"])}
    after = env.os.volume(volume["id"])
    assert after is not None and after["status"] == "available"
    after = env.os.volume(detaching["id"])
    assert after is not None and after["status"] == "in-use"


def test_volume_changing_during_the_pass_is_not_touched(env: Env) -> None:
    volume = env.os.inject_stuck_volume("pvc-moving", status="detaching",
                                        age=timedelta(hours=1))
    engine = env.engine()
    env.passes(engine, 2, "volumes")

    def moves(sim: OpenStackSim) -> None:
        sim.set_volume(volume["id"], status="detaching")  # Nova retried: new updated_at

    env.os.on_request(r"/volumes/detail", moves)
    (report,) = env.passes(engine, 1, "volumes")
    action = findings(report)[("volume-stuck", volume["id"])]["action"]
    assert action["status"] == "skipped" and "changed since" in action["detail"]
    after = env.os.volume(volume["id"])
    assert after is not None and after["status"] == "detaching"
    # the next pass sees the new updated_at: its clock starts again, no action
    (again,) = env.passes(engine, 1, "volumes")
    assert ("volume-stuck", volume["id"]) not in findings(again)


def test_keystone_down_is_an_error_not_a_verdict(env: Env) -> None:
    stuck_world(env)
    engine = env.engine()
    env.passes(engine, 2, "volumes")
    env.os.down("keystone")
    engine = env.engine()  # a fresh process: no token cached
    (report,) = env.passes(engine, 1, "volumes")
    assert status_of(report, "volumes") == "error"
    assert "cannot connect" in report["checks"][0]["error"] or "discovery" in report[
        "checks"][0]["error"]
    assert findings(report) == {}
    assert report["checks"][0]["resolved"] == []


def test_rejected_credentials_are_the_only_finding(env: Env, tmp_path: Path) -> None:
    stuck_world(env)
    acid, secret = env.os.add_application_credential(
        "admin", "watchdogd", expires_at=env.clock() + timedelta(days=3))
    engine = env.engine(application_credential_id=acid,
                        application_credential_secret=secret)
    reports = env.passes(engine, 2, "volumes")
    expiring = findings(reports[1])[("credential-expiring", "watchdogd")]
    assert expiring["severity"] == "critical" and expiring["evidence"]["in_use"]
    assert any(k == "volume-stuck" for k, _ in findings(reports[1]))
    env.os.set_application_credential(acid, expires_at=env.clock() - timedelta(minutes=1))
    env.os.expire_tokens()
    (report,) = env.passes(engine, 1, "volumes")
    assert set(findings(report)) == {("credential-invalid", "js2")}
    assert status_of(report, "volumes") == "findings"
    assert secret not in str(report)
    (orphans,) = env.passes(engine, 1, "orphans")
    assert status_of(orphans, "orphans") == "error"


def test_token_revoked_mid_pass_and_503s_still_complete(env: Env) -> None:
    env.os.add_volumes(450)
    reserved, _ = stuck_world(env)
    engine = env.engine(page_size=100)
    env.passes(engine, 1, "volumes")
    env.os.expire_tokens_after(3)
    env.os.fail(r"/attachments/detail", status=503, times=2)
    (report,) = env.passes(engine, 1, "volumes")
    assert report["summary"]["errors"] == 0, report["checks"][0]["error"]
    assert ("volume-stuck", reserved["id"]) in findings(report)


def test_cinder_500_storm_is_an_error(env: Env) -> None:
    engine = env.engine()
    env.os.fail(r"/volumes/detail", status=500)
    (report,) = env.passes(engine, 1, "volumes")
    assert status_of(report, "volumes") == "error"
    assert "HTTP 500" in report["checks"][0]["error"]
