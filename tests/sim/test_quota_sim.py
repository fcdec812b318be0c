"""Quotas in the OpenStack simulator (Cinder's ``/limits`` and ``os-quota-sets``, Nova's
``/limits``) through openstacksdk, and the source's ``volume_limits``/``compute_limits``.
Shapes and the 413 wording copy what cinder 29 answered (tests/integration/test_real_quotas)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sim.test_openstack_sim import connect, source
from watchdogd.model import SourceError
from watchdogd.sim.openstack import OpenStackSim


@pytest.fixture
def sim() -> Iterator[OpenStackSim]:
    with OpenStackSim(page_max=50) as world:
        yield world


@pytest.fixture
def clouds(sim: OpenStackSim, tmp_path: Path) -> str:
    return sim.write_clouds_yaml(tmp_path / "clouds.yaml")


def test_cinder_quota_usage_follows_volumes_and_a_create_past_it_is_413(
        sim: OpenStackSim, clouds: str) -> None:
    conn = connect(clouds)
    try:
        project = sim.admin_project_id
        put = conn.block_storage.put(f"/os-quota-sets/{project}",
                                     json={"quota_set": {"volumes": 3, "gigabytes": 5}})
        assert put.status_code == 200 and put.json()["quota_set"]["volumes"] == 3
        for i in range(3):
            made = conn.block_storage.post("/volumes", json={"volume": {"name": f"q{i}",
                                                                        "size": 1}})
            assert made.status_code == 202
        over = conn.block_storage.post("/volumes", json={"volume": {"name": "q3", "size": 1}})
        assert over.status_code == 413
        assert over.json() == {"overLimit": {
            "code": 413, "retryAfter": "0", "message": "VolumeLimitExceeded: Maximum number "
            "of volumes allowed (3) exceeded for quota 'volumes'."}}
        limits = conn.block_storage.get("/limits").json()["limits"]["absolute"]
        assert (limits["maxTotalVolumes"], limits["totalVolumesUsed"],
                limits["maxTotalVolumeGigabytes"], limits["totalGigabytesUsed"]) == (3, 3, 5, 3)
        usage = conn.block_storage.get(f"/os-quota-sets/{project}?usage=true").json()
        assert usage["quota_set"]["volumes"] == {"limit": 3, "in_use": 3, "reserved": 0}
        # both quotas over: cinder 29 names gigabytes
        big = conn.block_storage.post("/volumes", json={"volume": {"name": "big", "size": 3}})
        assert big.status_code == 413
        assert big.json()["overLimit"]["message"] == (
            "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
            "gigabytes quota. Requested 3G, quota is 5G and 3G has been consumed.")
    finally:
        conn.close()
    assert sim.errors == []


def test_source_reads_both_services_limits(sim: OpenStackSim, clouds: str) -> None:
    sim.set_volume_quota(volumes=4, gigabytes=40)
    sim.set_compute_quota(instances=5, cores=10, ram=20480)
    for i in range(3):
        sim.add_volume(f"pvc-{i}", size=10)
        sim.add_server(f"node-{i}", vcpus=2, ram=4096,
                       vm_state="shelved_offloaded" if i == 2 else "active")
    src = source(clouds)
    assert src.volume_limits() == {
        "maxTotalVolumes": 4, "totalVolumesUsed": 3, "maxTotalVolumeGigabytes": 40,
        "totalGigabytesUsed": 30, "maxTotalSnapshots": -1, "totalSnapshotsUsed": 0}
    # shelved-offloaded servers still count (Nova's default: usage from its database)
    assert src.compute_limits() == {
        "maxTotalInstances": 5, "totalInstancesUsed": 3, "maxTotalCores": 10,
        "totalCoresUsed": 6, "maxTotalRAMSize": 20480, "totalRAMUsed": 12288}
    sim.fail(r"/limits", status=500, service="nova")
    with pytest.raises(SourceError, match="read compute limits"):
        src.compute_limits()


def test_a_member_reads_its_own_projects_limits(sim: OpenStackSim, tmp_path: Path) -> None:
    sim.add_user("member", "member-secret", project="users")
    sim.set_volume_quota("users", volumes=2)
    sim.add_volume("pvc-theirs", project="users")
    sim.add_volume("pvc-admins")
    limits = source(sim.write_clouds_yaml(tmp_path / "m.yaml", user="member")).volume_limits()
    assert (limits["maxTotalVolumes"], limits["totalVolumesUsed"]) == (2, 1)


def test_shipped_defaults_on_request(tmp_path: Path) -> None:
    with OpenStackSim(default_quotas=True) as sim:
        src = source(sim.write_clouds_yaml(tmp_path / "c.yaml"))
        volume, compute = src.volume_limits(), src.compute_limits()
    assert (volume["maxTotalVolumes"], volume["maxTotalVolumeGigabytes"],
            volume["maxTotalSnapshots"]) == (10, 1000, 10)
    assert (compute["maxTotalInstances"], compute["maxTotalCores"],
            compute["maxTotalRAMSize"]) == (10, 20, 51200)
