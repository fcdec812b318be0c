"""The fields a big list keeps (``ports.VOLUME_FIELDS``, ``ports.LIST_FIELDS``) lose no verdict.

The OpenStack and Kubernetes sources keep only part of each volume and PersistentVolume, for
memory. The oracle here is the same world read whole: two engines with stores of their own
run the same passes of ``volumes`` and ``orphans`` on the demo's cloud (stuck volumes,
dangling attachments, orphans, released PVs, attach events), one with the sources' lists
trimmed, one with them whole; every finding, its evidence and its action must be the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from watchdogd import ports
from watchdogd.engine import Engine
from watchdogd.sim.parts import CloudPart
from watchdogd.sim.world import SimClock, World
from watchdogd.sources import Sources
from watchdogd.sources import kube as kube_source
from watchdogd.sources import openstack as openstack_source
from watchdogd.store import Store

Obj = dict[str, Any]


def verdicts(report: Obj) -> Obj:
    """What a pass decided, without its timings."""
    return {c["check"] + "/" + c["target"]: {
        "status": c["status"], "error": c["error"], "resolved": sorted(c["resolved"]),
        "findings": sorted(({k: v for k, v in f.items() if k not in ("first_seen", "last_seen")}
                            for f in c["findings"]), key=lambda f: (f["kind"], f["subject"]))}
        for c in report["checks"]}


def test_trimmed_lists_give_the_verdicts_of_whole_ones(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    part = CloudPart()
    with World(clock=SimClock(), parts=[part]) as world:
        world.healthy(users=4, running=3)
        sim = part.sim
        assert sim is not None
        config = world.load_config()
        cloud = next(iter(config.clouds))
        cluster = next(iter(config.clusters))
        sample = sim.volume(part.injected["stuck"][0])
        assert sample is not None
        every_field = tuple(sample)
        engines = []
        for name in ("trimmed", "whole"):
            store = Store(f"sqlite:///{tmp_path / name}.db")
            sources = Sources(config)
            engines.append(Engine(config, store, sources, dry_run=True, clock=world.clock))
            world._closers += [store.close, sources.close]
        trimmed, whole = engines

        # The trimmed lists really are trimmed (and the whole ones whole).
        listed = trimmed.sources.adapter("openstack", cloud).volumes()["items"]
        assert set().union(*listed) <= set(ports.VOLUME_FIELDS)
        assert {"links", "replication_status"} & set(every_field)
        pvs = trimmed.sources.adapter("kube", cluster).list_objects("PersistentVolume")
        # (capacity, access modes and class stay: the map of users' disks restores from them)
        assert pvs and all(set(pv) <= {"metadata", "spec", "status"}
                           and not {"uid", "creationTimestamp"} & set(pv["metadata"])
                           for pv in pvs)
        # delete-extra-pvc judges the PV's binding by its claimRef uid and keeps the whole
        # claimRef as its before-image (the undo binds the PV again): nothing of it is dropped
        whole_refs = [pv["spec"]["claimRef"] for pv in world.kube.list(
            "PersistentVolume") if pv["spec"].get("claimRef")]
        assert whole_refs and sorted(map(str, whole_refs)) == sorted(
            str(pv["spec"]["claimRef"]) for pv in pvs if pv["spec"].get("claimRef"))

        for _ in range(3):
            got = verdicts(trimmed.run_pass(only=["volumes", "orphans"]).as_json())
            with monkeypatch.context() as patch:
                patch.setattr(openstack_source, "VOLUME_FIELDS", every_field)
                patch.setattr(kube_source, "LIST_FIELDS", {})
                expected = verdicts(whole.run_pass(only=["volumes", "orphans"]).as_json())
            assert got == expected
            world.clock.advance(minutes=5)  # type: ignore[attr-defined]

        kinds = {f["kind"] for v in got.values() for f in v["findings"]}
        # the passes judged everything the trimmed fields feed
        assert {"volume-stuck", "attachment-stale", "orphan-volume", "released-pv"} <= kinds
