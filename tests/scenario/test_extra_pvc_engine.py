"""delete-extra-pvc end to end: through the engine, on two clocks, then undone by the CLI.

A departed user's extra claim (``postgres-{user}``, ``component=extra-pvc``) in a simulated
world with Cinder and Kubernetes: watchdogd marks it, waits ``quarantine_days`` on the API
server's clock and its own (both the world's simulated clock here), deletes the claim only
after switching its PV to ``Retain``, so the Cinder volume is untouched, and ``watchdogd
undo`` recreates the claim, which the simulated PV controller binds to the same PV again.
The oracle is the simulators' own state, not watchdogd's report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from watchdogd.cli import main
from watchdogd.engine import Engine
from watchdogd.sim.parts import CloudPart
from watchdogd.sim.world import SimClock, World


def orphans_pass(engine: Engine) -> dict[str, dict[str, Any]]:
    report = engine.run_pass(only=["orphans"]).as_json()
    return {f["kind"] + " " + f["subject"]: f for c in report["checks"] for f in c["findings"]}


def test_mark_wait_delete_keep_the_disk_and_undo(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    clock = SimClock()
    cloud = CloudPart(orphans={"quarantine_days": 14})
    with World(tmp_path / "world", clock=clock, parts=[cloud]) as world:
        world.kube.clock = clock  # the API server's Date: the world's simulated time
        world.healthy(users=4, running=2)
        [where] = cloud.injected["extra_pvcs"]
        namespace, name = where.split("/")
        claim = world.kube.get("PersistentVolumeClaim", name, namespace)
        assert claim is not None
        pv_name = claim["spec"]["volumeName"]
        volume_id = world.kube.get("PersistentVolume", pv_name)["spec"]["csi"]["volumeHandle"]
        key = f"orphan-extra-pvc {world.cluster_name}/{where}"
        engine = world.engine()

        orphans_pass(engine)
        clock.advance(minutes=5)
        found = orphans_pass(engine)
        assert found[key]["action"]["name"] == "quarantine-extra-pvc"
        assert found[key]["action"]["status"] == "done"
        marked = world.kube.get("PersistentVolumeClaim", name, namespace)
        assert "watchdogd-orphaned-since" in marked["metadata"]["annotations"]

        clock.advance(days=7)  # half way: nothing is deleted
        orphans_pass(engine)
        clock.advance(minutes=5)
        assert orphans_pass(engine)[key]["action"] is None
        assert world.kube.get("PersistentVolumeClaim", name, namespace) is not None

        clock.advance(days=8)  # past 14 days on both clocks; confirmed all along
        found = orphans_pass(engine)
        assert found[key]["action"]["name"] == "delete-extra-pvc"
        assert found[key]["action"]["status"] == "done", found[key]["action"]
        assert world.kube.get("PersistentVolumeClaim", name, namespace) is None
        pv = world.kube.get("PersistentVolume", pv_name)
        assert pv is not None and pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert cloud.sim is not None and cloud.sim.volume(volume_id) is not None

        [done] = [a for a in engine.store.actions() if a.name == "delete-extra-pvc"]
        with pytest.raises(SystemExit) as exit_info:
            main(["undo", str(done.id), "--yes", "--config", str(world.config_path)])
        assert exit_info.value.code in (0, None), capsys.readouterr()
        again = world.kube.get("PersistentVolumeClaim", name, namespace)
        assert again is not None and again["spec"]["volumeName"] == pv_name
        assert again["status"]["phase"] == "Bound"
        assert world.kube.get("PersistentVolume", pv_name)["spec"]["claimRef"]["uid"] == \
            again["metadata"]["uid"]
