"""The quotas check against the real Cinder 29 API (noauth): a low quota set with the real
``os-quota-sets`` API, volumes created for real, ``quota-near`` then ``quota-exhausted`` from
the real ``/limits``, and the real 413 on one more create. The oracle is Cinder itself: what
it refuses is exhausted, whatever watchdogd says.

noauth URLs carry no project id, and keystoneauth's ``none`` plugin sends the token
``notused``, so the project of every request here is ``notused``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack.connection
import pytest

from watchdogd.config import CloudConfig, Config
from watchdogd.engine import Engine
from watchdogd.sources import Sources
from watchdogd.sources.openstack import OpenStackSource
from watchdogd.store import Store

try:
    from tests.peers.openstack_real import RealCinder, cinder_venv, venv_ready
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.peers.openstack_real import RealCinder, cinder_venv, venv_ready

pytestmark = pytest.mark.integration

PROJECT = "notused"  # keystoneauth's none plugin's token, read by noauth as the project


def _require_venv() -> None:
    if venv_ready():
        return
    reason = f"Cinder venv missing at {cinder_venv()}: run scripts/setup-cinder-venv.sh"
    if os.environ.get("WATCHDOGD_REQUIRE_PEERS", "").strip() not in ("", "0"):
        pytest.fail(f"WATCHDOGD_REQUIRE_PEERS is set but the {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cinder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCinder]:
    _require_venv()
    with RealCinder(tmp_path_factory.mktemp("wd-cinder-quotas")) as peer:
        yield peer


@pytest.fixture
def conn(cinder: RealCinder) -> Iterator[openstack.connection.Connection]:
    c = cinder.connection()
    yield c
    c.close()


def create(conn: openstack.connection.Connection, name: str, size: int) -> Any:
    return conn.block_storage.post("/volumes", json={"volume": {"name": name, "size": size}})


def findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (entry,) = [c for c in report["checks"] if c["check"] == "quotas"]
    assert entry["status"] != "error", entry["error"]
    return {f["subject"]: f for f in entry["findings"]}


def test_quota_near_then_exhausted_then_413(cinder: RealCinder,
                                            conn: openstack.connection.Connection,
                                            tmp_path: Path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(json.dumps({"clouds": {"real": {
        "auth_type": "none", "block_storage_endpoint_override": cinder.url}}}))
    quota = conn.block_storage.put(f"/os-quota-sets/{PROJECT}",
                                   json={"quota_set": {"volumes": 4, "gigabytes": 10}})
    assert quota.status_code == 200, quota.text
    for i in range(3):
        assert create(conn, f"pvc-q{i}", 3).status_code == 202
    config = Config.model_validate({
        "state": {"url": f"sqlite:///{tmp_path}/state.db"},
        "clouds": {"real": {"cloud": "real", "clouds_yaml": str(clouds), "timeout": "30s"}},
        # a noauth Cinder has no Nova; 3 GiB user volumes, as created here
        "checks": {"quotas": {"compute": False, "user_volume_gb": 3}}})
    engine = Engine(config, Store(config.state.resolved_url()), Sources(config))
    try:
        # 3 of 4 volumes (75%: quiet), 9 of 10 GiB (90%: near; room for no 3 GiB volume)
        near = findings(engine.run_pass(only=["quotas"]).as_json())
        assert set(near) == {"volume/gigabytes"}
        gigabytes = near["volume/gigabytes"]
        assert (gigabytes["kind"], gigabytes["severity"]) == ("quota-near", "warning")
        assert gigabytes["evidence"] | {"used": 9, "limit": 10, "left": 1} == \
            gigabytes["evidence"]
        assert gigabytes["evidence"]["runs_out_first"] == "gigabytes"

        assert create(conn, "pvc-q3", 1).status_code == 202
        full = findings(engine.run_pass(only=["quotas"]).as_json())
        assert {s: (f["kind"], f["severity"]) for s, f in full.items()} == {
            "volume/volumes": ("quota-exhausted", "critical"),
            "volume/gigabytes": ("quota-exhausted", "critical")}
    finally:
        engine.sources.close()
    # ...and Cinder agrees: one more volume is refused with the 413s the simulator copies;
    # with both quotas full it names gigabytes
    refused = create(conn, "pvc-q4", 1)
    assert refused.status_code == 413
    assert refused.json()["overLimit"]["message"] == (
        "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
        "gigabytes quota. Requested 1G, quota is 10G and 10G has been consumed.")
    assert conn.block_storage.put(f"/os-quota-sets/{PROJECT}",
                                  json={"quota_set": {"gigabytes": 20}}).status_code == 200
    refused = create(conn, "pvc-q5", 1)
    assert refused.status_code == 413
    assert refused.json() == {"overLimit": {
        "code": 413, "retryAfter": "0", "message": "VolumeLimitExceeded: Maximum number of "
        "volumes allowed (4) exceeded for quota 'volumes'."}}


def test_source_limits_match_os_quota_sets(cinder: RealCinder,
                                           conn: openstack.connection.Connection,
                                           tmp_path: Path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(json.dumps({"clouds": {"real": {
        "auth_type": "none", "block_storage_endpoint_override": cinder.url}}}))
    src = OpenStackSource("real", CloudConfig(cloud="real", clouds_yaml=str(clouds), timeout=30),
                          sleep=lambda _s: None)
    try:
        limits = src.volume_limits()
    finally:
        src.close()
    usage = conn.block_storage.get(f"/os-quota-sets/{PROJECT}?usage=true").json()["quota_set"]
    assert limits["maxTotalVolumes"] == usage["volumes"]["limit"]
    assert limits["totalVolumesUsed"] == usage["volumes"]["in_use"]
    assert limits["maxTotalVolumeGigabytes"] == usage["gigabytes"]["limit"]
    assert limits["totalGigabytesUsed"] == usage["gigabytes"]["in_use"]
    assert limits["maxTotalSnapshots"] == usage["snapshots"]["limit"]
