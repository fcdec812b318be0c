"""The map of users' disks, end to end: orphans passes record it, a tear-down deletes the claims
and PVs, ``watchdogd volumes manifests alice | kubectl apply -f -`` restores them in the
simulated cluster, and alice's new pod mounts the same Cinder volume.

The oracle is the simulators' truth: the pod's claim, the PV bound to that claim (by uid), the
PV's volume handle, and the volume in Cinder, never watchdogd's own view.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from watchdogd.cli import main
from watchdogd.sim.kube import KubeSim
from watchdogd.sim.objects import pod, pv_for_volume, pvc_for_user
from watchdogd.sim.parts import CloudPart
from watchdogd.sim.world import SimClock, World
from watchdogd.times import iso

Obj = dict[str, Any]
NS = "jhub"


def watchdogd(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line in its own process, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "watchdogd", *args, "-c", str(world.config_path)],
                          capture_output=True, text=True, timeout=60, check=False)


def watchdogd_here(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command line in this process (a second or so cheaper than a new one)."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*args, "-c", str(world.config_path)])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def kubectl_for(world: World, tmp: Path) -> Any:
    binary = shutil.which("kubectl")
    if binary is None:
        if os.environ.get("WATCHDOGD_REQUIRE_PEERS"):
            pytest.fail("kubectl is not installed (scripts/setup-test-peers.sh installs it)")
        pytest.skip("kubectl is not installed")
    env = {**os.environ, "HOME": str(tmp), "KUBECONFIG": str(world.kubeconfig_path)}

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, "--kubeconfig", str(world.kubeconfig_path),
                               "--cache-dir", str(tmp / "kubectl-cache"), *args],
                              input=stdin, capture_output=True, text=True, timeout=60, env=env,
                              check=False)

    return run


def mounted_volume(kube: KubeSim, namespace: str, pod_name: str) -> str | None:
    """The Cinder volume a pod mounts, by the cluster's truth: pod -> claim -> PV -> handle.

    None unless the claim is Bound to a PV that is Bound to this very claim (same uid).
    """
    found = kube.get("Pod", pod_name, namespace)
    assert found is not None
    claims = [v["persistentVolumeClaim"]["claimName"] for v in found["spec"].get("volumes", [])
              if "persistentVolumeClaim" in v]
    assert len(claims) == 1
    claim = kube.get("PersistentVolumeClaim", claims[0], namespace)
    if claim is None or claim.get("status", {}).get("phase") != "Bound":
        return None
    pv = kube.get("PersistentVolume", claim["spec"]["volumeName"])
    if pv is None or pv.get("status", {}).get("phase") != "Bound":
        return None
    ref = pv["spec"]["claimRef"]
    if (ref["namespace"], ref["name"], ref["uid"]) != (namespace, claims[0],
                                                       claim["metadata"]["uid"]):
        return None
    return str(pv["spec"]["csi"]["volumeHandle"])


def until(condition: Any, what: str, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {deadline}s: {what}")


def test_tear_down_and_restore_from_the_printed_manifests(tmp_path: Path) -> None:
    part = CloudPart()
    clock = SimClock()
    with World(tmp_path / "world", clock=clock, parts=[part]) as world:
        world.healthy(users=2, running=1)
        cloud, kube = part.sim, world.kube
        assert cloud is not None
        volume = cloud.add_volume("pvc-alice-home", size=10, age=timedelta(days=30))
        kube.put(pv_for_volume(volume, claim_namespace=NS, claim_name="claim-alice"))
        claim = pvc_for_user("alice", "pvc-alice-home")
        claim["spec"]["resources"]["requests"]["storage"] = "10Gi"
        kube.put(claim)
        kubectl = kubectl_for(world, tmp_path)

        engine = world.engine()
        for _ in range(2):
            report = engine.run_pass(only=["orphans"]).as_json()
            assert report["summary"]["errors"] == 0, report
            clock.advance(minutes=5)
        before_tear_down = clock()

        shown = watchdogd_here(world, "volumes", "map", "--json")
        assert shown.returncode == 0, shown.stderr
        [alice] = [r for r in json.loads(shown.stdout) if r["user"] == "alice"]
        assert (alice["namespace"], alice["claim"], alice["pv"], alice["volume_id"],
                alice["size"], alice["reclaim_policy"]) == (
            NS, "claim-alice", "pvc-alice-home", volume["id"], "10Gi", "Delete")

        # The tear-down: every claim and PV of the hub goes (helm uninstall, namespace gone).
        for args in (("delete", "pvc", "--all", "-n", NS), ("delete", "pv", "--all")):
            done = kubectl(*args)
            assert done.returncode == 0, done.stderr
        assert kube.list("PersistentVolume") == []
        # The daemon goes on: its next pass records the map without the claims ...
        clock.advance(minutes=5)
        assert engine.run_pass(only=["orphans"]).as_json()["summary"]["errors"] == 0
        now_map = watchdogd_here(world, "volumes", "map", "--json")
        assert now_map.returncode == 0 and json.loads(now_map.stdout) == []
        gone = watchdogd_here(world, "volumes", "manifests", "alice")
        assert gone.returncode == 3 and "no claim of user 'alice'" in gone.stderr

        # ... and the map as it was before the tear-down restores them.
        printed = watchdogd(world, "volumes", "manifests", "alice", "--at",
                            iso(before_tear_down))
        assert printed.returncode == 0, printed.stderr
        applied = kubectl("apply", "-f", "-", stdin=printed.stdout)
        assert applied.returncode == 0, applied.stderr
        assert "persistentvolume/pvc-alice-home created" in applied.stdout
        assert "persistentvolumeclaim/claim-alice created" in applied.stdout

        kube.put(pod(NS, "jupyter-alice", annotations={"hub.jupyter.org/username": "alice"})
                 | {"spec": {"containers": [{"name": "notebook", "image": "jupyter/base"}],
                             "volumes": [{"name": "home", "persistentVolumeClaim":
                                          {"claimName": "claim-alice"}}]}})
        assert until(lambda: mounted_volume(kube, NS, "jupyter-alice"),
                     "alice's claim bound to the restored PV") == volume["id"]
        restored = kube.get("PersistentVolume", "pvc-alice-home")
        assert restored is not None
        # A second tear-down cannot delete the disk now.
        assert restored["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        claim_now = kube.get("PersistentVolumeClaim", "claim-alice", NS)
        assert claim_now is not None
        assert claim_now["metadata"]["annotations"]["hub.jupyter.org/username"] == "alice"
        assert claim_now["metadata"]["labels"]["component"] == "singleuser-storage"
        still = cloud.volume(volume["id"])
        assert still is not None and still["size"] == 10
        # Only alice's claims were printed: the other users' claims stay gone.
        assert [c["metadata"]["name"] for c in kube.list("PersistentVolumeClaim", NS)] == [
            "claim-alice"]


def test_no_half_map_and_no_map_from_a_pass_that_does_not_act() -> None:
    """A pass whose PV list failed, or a pass of a replica that does not act, records nothing:
    the claims it could not see are not gone from the map."""
    part = CloudPart()
    clock = SimClock()
    with World(clock=clock, parts=[part]) as world:
        world.healthy(users=2, running=1)
        engine = world.engine()
        assert engine.run_pass(only=["orphans"]).as_json()["summary"]["errors"] == 0
        recorded = engine.store.disks()
        ada = next(r for r in recorded if r["user"] == "ada")
        assert len(recorded) >= 3

        # ada's claim and PV go; the next pass cannot list the PVs of the cluster.
        world.kube.delete("PersistentVolumeClaim", "claim-ada", NS)
        world.kube.delete("PersistentVolume", ada["pv"])
        world.kube.fail(r"/persistentvolumes", status=500)
        clock.advance(minutes=5)
        report = engine.run_pass(only=["orphans"]).as_json()
        assert report["summary"]["errors"] == 1
        assert engine.store.disks() == recorded
        world.kube.clear_faults()

        # A replica that is not the leader sees the change and keeps it to itself.
        engine.acting = lambda: False
        clock.advance(minutes=5)
        assert engine.run_pass(only=["orphans"]).as_json()["summary"]["errors"] == 0
        assert engine.store.disks() == recorded

        engine.acting = lambda: True
        clock.advance(minutes=5)
        assert engine.run_pass(only=["orphans"]).as_json()["summary"]["errors"] == 0
        now = engine.store.disks()
        assert [r for r in recorded if r["user"] != "ada"] == now
        [then] = [r for r in engine.store.disks(at=clock() - timedelta(minutes=1))
                  if r["user"] == "ada"]
        assert (then["pv"], then["valid_from"], then["valid_to"]) == (
            ada["pv"], ada["valid_from"], clock())
