"""detect() of the quotas check on hand-built limits: near, exhausted, unlimited, what runs out
first. The oracle is plain arithmetic on the limits each test writes down."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from watchdogd.checks import REGISTRY, quotas
from watchdogd.config import Config
from watchdogd.model import Finding, Snapshot

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def volume(volumes: tuple[int, int] = (-1, 0), gigabytes: tuple[int, int] = (-1, 0),
           snapshots: tuple[int, int] = (-1, 0)) -> dict[str, int]:
    return {"maxTotalVolumes": volumes[0], "totalVolumesUsed": volumes[1],
            "maxTotalVolumeGigabytes": gigabytes[0], "totalGigabytesUsed": gigabytes[1],
            "maxTotalSnapshots": snapshots[0], "totalSnapshotsUsed": snapshots[1]}


def compute(instances: tuple[int, int] = (-1, 0), cores: tuple[int, int] = (-1, 0),
            ram: tuple[int, int] = (-1, 0)) -> dict[str, int]:
    return {"maxTotalInstances": instances[0], "totalInstancesUsed": instances[1],
            "maxTotalCores": cores[0], "totalCoresUsed": cores[1],
            "maxTotalRAMSize": ram[0], "totalRAMUsed": ram[1]}


def detect(vol: dict[str, int] | None = None, com: dict[str, int] | None = None,
           **settings: Any) -> dict[str, Finding]:
    check = quotas.Settings(**settings)
    snap = Snapshot("quotas", "js2", {"volume_limits": vol or volume(),
                                      "compute_limits": com or compute()},
                    settings=quotas.TargetSettings("js2", check))
    return {f.subject: f for f in quotas.detect(snap, NOW).findings}


def test_registered_with_one_target_per_cloud() -> None:
    assert set(REGISTRY["quotas"].kinds) == {"quota-near", "quota-exhausted"}
    config = Config.model_validate({"clouds": {"a": {"cloud": "a"}, "b": {"cloud": "b"}},
                                    "checks": {"quotas": {"compute": False}}})
    targets = REGISTRY["quotas"].targets_for(config)
    assert [(t.name, [n.call for n in t.needs]) for t in targets] == [
        ("a", ["volume_limits"]), ("b", ["volume_limits"])]
    both = REGISTRY["quotas"].targets_for(Config.model_validate(
        {"clouds": {"a": {"cloud": "a"}}, "checks": {"quotas": {"clouds": ["a"]}}}))
    assert [n.call for n in both[0].needs] == ["volume_limits", "compute_limits"]


@pytest.mark.parametrize("section", [{"near_fraction": 1.0}, {"near_fraction": 0},
                                     {"user_volume_gb": 0}, {"nearfraction": 0.5}])
def test_bad_settings(section: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        quotas.Settings(**section)


def test_below_the_fraction_is_quiet_and_unlimited_or_zero_is_never_near() -> None:
    assert detect(volume(volumes=(10, 8), gigabytes=(-1, 5000), snapshots=(0, 0)),
                  compute(instances=(-1, 99))) == {}


def test_near_and_exhausted_per_quota_with_headroom() -> None:
    found = detect(volume(volumes=(10, 9), gigabytes=(100, 100)),
                   compute(instances=(20, 19), cores=(80, 70)))
    assert {(s, f.kind, f.severity.label) for s, f in found.items()} == {
        ("volume/volumes", "quota-near", "warning"),
        ("volume/gigabytes", "quota-exhausted", "critical"),
        ("compute/instances", "quota-near", "warning")}
    near = found["volume/volumes"]
    assert near.evidence | {"left": 1, "used": 9, "limit": 10} == near.evidence
    assert "1 left" in near.message and "413" in near.message
    exhausted = found["volume/gigabytes"]
    assert "at its limit (100 of 100 GiB)" in exhausted.message
    # what runs out first for new user volumes: 1 volume left, but 0 GiB
    assert exhausted.evidence["runs_out_first"] == "gigabytes"
    assert exhausted.evidence["room_for"] == 0 and "none fits" in exhausted.message
    assert all(f.action is None for f in found.values())


def test_what_runs_out_first_counts_user_volumes_of_their_size() -> None:
    found = detect(volume(volumes=(100, 95), gigabytes=(1000, 960)), user_volume_gb=20)
    # 5 volumes left, 40 GiB left = 2 volumes of 20 GiB: gigabytes runs out first
    assert found["volume/volumes"].evidence["room_for"] == 2
    assert found["volume/volumes"].evidence["runs_out_first"] == "gigabytes"
    assert "room for 2 (gigabytes runs out first)" in found["volume/volumes"].message


def test_new_nodes_by_flavor_when_known() -> None:
    com = compute(instances=(10, 9), cores=(100, 96), ram=(409600, 300000))
    assert detect(None, com)["compute/instances"].evidence["runs_out_first"] == "instances"
    flavored = detect(None, com, node_cores=8, node_ram_mb=32768)["compute/instances"]
    # 1 instance left, 4 cores left (0 nodes of 8), 109600 MiB left (3 nodes)
    assert (flavored.evidence["runs_out_first"], flavored.evidence["room_for"]) == ("cores", 0)


def test_over_the_limit_is_exhausted_too() -> None:
    """An operator lowered the quota under the usage: every create fails until it is freed."""
    found = detect(volume(volumes=(5, 7)))
    assert found["volume/volumes"].kind == "quota-exhausted"
    assert found["volume/volumes"].evidence["left"] == 0


def test_near_fraction_setting() -> None:
    assert detect(volume(volumes=(10, 7)), near_fraction=0.7)["volume/volumes"].kind == \
        "quota-near"
    assert detect(volume(volumes=(10, 7)), near_fraction=0.75) == {}


def test_subjects_count_the_limited_quotas() -> None:
    snap = Snapshot("quotas", "js2", {"volume_limits": volume(volumes=(10, 1)),
                                      "compute_limits": compute(cores=(8, 1), ram=(0, 0))},
                    settings=quotas.TargetSettings("js2", quotas.Settings()))
    assert quotas.detect(snap, NOW).subjects == 2
