"""The Keystone+Cinder simulator, through the clients that must work against it unchanged
(openstacksdk, the ``openstack`` CLI), and watchdogd's OpenStack source against it, faults
included: Keystone down, a token revoked in the middle of a list, 500/503 answers, an expired
application credential, a volume that changes between observation and action."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openstack
import openstack.connection
import pytest
from openstack import config as os_config

from watchdogd.config import CloudConfig
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sim.openstack import OpenStackSim
from watchdogd.sources.base import counting
from watchdogd.sources.openstack import OpenStackSource


@pytest.fixture
def sim() -> Iterator[OpenStackSim]:
    with OpenStackSim(page_max=50) as world:
        yield world


@pytest.fixture
def clouds(sim: OpenStackSim, tmp_path: Path) -> str:
    return sim.write_clouds_yaml(tmp_path / "clouds.yaml")


def connect(path: str, cloud: str = "sim") -> openstack.connection.Connection:
    loader = os_config.OpenStackConfig(config_files=[path], load_envvars=False)
    return openstack.connection.Connection(config=loader.get_one(cloud=cloud, api_timeout=10))


def source(path: str, **overrides: Any) -> OpenStackSource:
    config = CloudConfig(cloud="sim", clouds_yaml=path, timeout=10,
                         **{"page_size": 20, **overrides})
    return OpenStackSource("sim", config, sleep=lambda _s: None)


# -- openstacksdk ---------------------------------------------------------------------------------


def test_sdk_objects_and_raw_pages_agree(sim: OpenStackSim, clouds: str) -> None:
    ids = set(sim.add_volumes(120))
    conn = connect(clouds)
    try:
        objects = {v.id for v in conn.block_storage.volumes(details=True, all_projects=True)}
        assert objects == ids
        response = conn.block_storage.get("/volumes/detail?all_tenants=1&limit=30",
                                          microversion="3.27")
        assert response.status_code == 200
        assert response.headers["OpenStack-API-Version"] == "volume 3.27"
        page = response.json()
        assert len(page["volumes"]) == 30 and page["volumes_links"][0]["rel"] == "next"
    finally:
        conn.close()
    # the SDK followed Cinder's links: 50 a page (osapi_max_limit) for 120 volumes
    assert sim.count("cinder", r"/volumes/detail") == 3 + 1


def test_microversion_gate_and_errors(sim: OpenStackSim, clouds: str) -> None:
    conn = connect(clouds)
    try:
        old = conn.block_storage.get("/attachments")
        assert old.status_code == 404
        assert old.json() == {"itemNotFound": {"code": 404,
                                               "message": "The resource could not be found."}}
        too_new = conn.block_storage.get("/volumes/detail", microversion="3.99")
        assert too_new.status_code == 406 and "maximum is 3.71" in too_new.text
        missing = conn.block_storage.get("/volumes/nope", microversion="3.27")
        assert missing.json()["itemNotFound"]["message"] == "Volume nope could not be found."
    finally:
        conn.close()


def test_non_admin_sees_only_its_project_and_may_not_reset(sim: OpenStackSim,
                                                           tmp_path: Path) -> None:
    sim.add_user("member", "member-secret", project="users")
    theirs = sim.add_volume("pvc-theirs", project="users")
    sim.add_volume("pvc-admins")
    conn = connect(sim.write_clouds_yaml(tmp_path / "m.yaml", user="member"))
    try:
        page = conn.block_storage.get("/volumes/detail?all_tenants=1",
                                      microversion="3.27").json()
        assert [v["name"] for v in page["volumes"]] == ["pvc-theirs"]
        assert "os-vol-tenant-attr:tenant_id" not in page["volumes"][0]
        reset = conn.block_storage.post(f"/volumes/{theirs['id']}/action",
                                        json={"os-reset_status": {"status": "available"}},
                                        microversion="3.27")
        assert reset.status_code == 403
        assert "reset_status" in reset.json()["forbidden"]["message"]
    finally:
        conn.close()


def test_attachment_delete_recomputes_the_volume(sim: OpenStackSim, clouds: str) -> None:
    volume, dangling = sim.inject_dangling_attachment("pvc-a")
    attached = next(a for a in sim.attachments(volume["id"]) if a["status"] == "attached")
    conn = connect(clouds)
    try:
        refused = conn.block_storage.delete(f"/attachments/{attached['id']}",
                                            microversion="3.27")
        assert refused.status_code == 409  # Cinder bug #2004555: not for connected ones
        gone = conn.block_storage.delete(f"/attachments/{dangling['id']}", microversion="3.27")
        assert gone.status_code == 200
        assert [a["id"] for a in gone.json()["attachments"]] == [attached["id"]]
    finally:
        conn.close()
    after = sim.volume(volume["id"])
    assert after is not None
    assert after["status"] == "in-use" and after["updated_at"] == volume["updated_at"]


# -- the openstack CLI (the runbook's tool) --------------------------------------------------


def openstack_cli(clouds: str, *args: str) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("openstack")
    if not binary.exists():
        pytest.skip("python-openstackclient is not installed in this venv")
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": clouds, "OS_CLOUD": "sim"}
    env = {k: v for k, v in env.items() if not k.startswith("OS_") or k in
           ("OS_CLIENT_CONFIG_FILE", "OS_CLOUD")}
    return subprocess.run([str(binary), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_runbook_commands(sim: OpenStackSim, clouds: str) -> None:
    sim.add_volumes(60)
    stuck = sim.inject_stuck_volume("pvc-stuck", status="reserved")
    reservation = sim.attachments(stuck["id"])[0]
    listed = openstack_cli(clouds, "volume", "list", "--all-projects", "-f", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 61
    assert {"ID": stuck["id"], "Status": "reserved"}.items() <= next(
        r for r in rows if r["ID"] == stuck["id"]).items()
    attachments = openstack_cli(clouds, "--os-volume-api-version", "3.27", "volume",
                                "attachment", "list", "--all-projects", "-f", "json")
    assert attachments.returncode == 0, attachments.stderr
    assert [r["ID"] for r in json.loads(attachments.stdout)] == [reservation["id"]]
    deleted = openstack_cli(clouds, "--os-volume-api-version", "3.27", "volume", "attachment",
                            "delete", reservation["id"])
    assert deleted.returncode == 0, deleted.stderr
    after = sim.volume(stuck["id"])
    assert after is not None and after["status"] == "available"
    sim.set_volume(stuck["id"], status="error")
    reset = openstack_cli(clouds, "volume", "set", "--state", "available", stuck["id"])
    assert reset.returncode == 0, reset.stderr
    after = sim.volume(stuck["id"])
    assert after is not None and after["status"] == "available"
    assert sim.errors == []


# -- the watchdogd source ----------------------------------------------------------------------


def test_volume_pages_and_request_count(sim: OpenStackSim, clouds: str) -> None:
    sim.add_volumes(100)
    src = source(clouds)
    with counting() as requests:
        result = src.volumes()
    assert len(result["items"]) == 100 and result["pages"] == 6
    assert "links" not in result["items"][0]
    # 5 full pages with a next link each, then an empty last page; plus discovery and token
    assert requests[0] == sim.count() == 2 + 6
    src.close()


def test_attachment_paging_survives_a_server_cap(sim: OpenStackSim, clouds: str) -> None:
    for _ in range(25):
        volume = sim.add_volume()
        sim.add_attachment(volume["id"], status="attached")
    # page_size 20 < cap 50: a short page ends the list
    assert len(source(clouds).attachments()["items"]) == 25
    # page_size 100 > cap 50: the capped pages must not be taken for the end
    sim.page_max = 10
    sim.reset_requests()
    result = source(clouds, page_size=100).attachments()
    assert len(result["items"]) == 25 and result["pages"] == 3
    # a single short page is confirmed by one more request
    sim.page_max = 1000
    result = source(clouds, page_size=100).attachments()
    assert len(result["items"]) == 25 and result["pages"] == 2


def test_application_credentials(sim: OpenStackSim, clouds: str, tmp_path: Path) -> None:
    soon = datetime.now(UTC) + timedelta(days=5)
    acid, secret = sim.add_application_credential("admin", "watchdogd", expires_at=soon)
    sim.add_application_credential("admin", "forever")
    result = source(clouds, application_credential_id=acid,
                    application_credential_secret=secret).application_credentials()
    assert result["in_use"] == acid and result["user_id"] == sim.admin_user_id
    by_name = {c["name"]: c for c in result["items"]}
    assert by_name["forever"]["expires_at"] is None
    assert by_name["watchdogd"]["expires_at"].startswith(soon.strftime("%Y-%m-%dT%H:%M"))
    assert "secret" not in json.dumps(result)


def test_wrong_password_is_an_auth_error_not_a_crash(sim: OpenStackSim,
                                                     tmp_path: Path) -> None:
    src = source(sim.write_clouds_yaml(tmp_path / "bad.yaml", password="wrong"))
    for result in (src.volumes(), src.attachments(), src.application_credentials()):
        assert "Keystone rejected" in result["auth_error"]
        assert "wrong" not in result["auth_error"].replace("wrong, expired", "")


def test_expired_application_credential_is_an_auth_error(sim: OpenStackSim,
                                                         clouds: str) -> None:
    acid, secret = sim.add_application_credential(
        "admin", "old", expires_at=datetime.now(UTC) - timedelta(minutes=1))
    result = source(clouds, application_credential_id=acid,
                    application_credential_secret=secret).volumes()
    assert "401" in result["auth_error"]


def test_keystone_down_is_a_source_error(sim: OpenStackSim, clouds: str) -> None:
    sim.down("keystone")
    with pytest.raises(SourceError, match=r"cannot connect|discovery"):
        source(clouds).volumes()


def test_token_revoked_mid_list_reauthenticates(sim: OpenStackSim, clouds: str) -> None:
    sim.add_volumes(100)
    src = source(clouds)
    assert len(src.volumes()["items"]) == 100
    sim.reset_requests()
    sim.expire_tokens_after(2)  # the third page meets a 401
    result = src.volumes()
    assert len(result["items"]) == 100
    assert sim.count("keystone", r"/auth/tokens", "POST") == 1
    assert sim.count("cinder", r"/volumes/detail") == 7  # 6 pages, one of them asked twice


def test_cinder_503_is_retried_and_500_storm_fails(sim: OpenStackSim, clouds: str) -> None:
    sim.add_volumes(30)
    src = source(clouds)
    sim.fail(r"/volumes/detail", status=503, times=2)
    assert len(src.volumes()["items"]) == 30
    sim.fail(r"/volumes/detail", status=500)
    with pytest.raises(SourceError, match="HTTP 500"):
        src.volumes()


def test_cinder_down_mid_list_fails_whole_list(sim: OpenStackSim, clouds: str) -> None:
    sim.add_volumes(60)
    src = source(clouds)
    src.volumes()
    sim.fail(r"/volumes/detail", status=0, after=1)  # connection dropped from page 2 on
    with pytest.raises(SourceError, match="cannot connect"):
        src.volumes()


def test_actions_reread_and_refuse_a_changed_volume(sim: OpenStackSim, clouds: str) -> None:
    volume = sim.inject_stuck_volume("pvc-r", status="detaching")
    src = source(clouds)
    sim.set_volume(volume["id"], status="detaching")  # same status, new updated_at
    with pytest.raises(PreconditionFailed, match="changed since"):
        src.reset_volume_status(volume["id"], "in-use", "detaching", volume["updated_at"])
    fresh = sim.volume(volume["id"])
    assert fresh is not None
    with pytest.raises(PreconditionFailed, match="now 'detaching', not 'reserved'"):
        src.reset_volume_status(volume["id"], "in-use", "reserved", fresh["updated_at"])
    with pytest.raises(PreconditionFailed, match="has attachments"):
        src.reset_volume_status(volume["id"], "available", "detaching", fresh["updated_at"])
    detail = src.reset_volume_status(volume["id"], "in-use", "detaching", fresh["updated_at"])
    assert "detaching -> in-use" in detail
    after = sim.volume(volume["id"])
    assert after is not None and after["status"] == "in-use"


def test_delete_attachment_action(sim: OpenStackSim, clouds: str) -> None:
    volume, dangling = sim.inject_dangling_attachment("pvc-d", beside_attached=False)
    src = source(clouds)
    detail = src.delete_attachment(dangling["id"], volume["id"], "reserved", "reserved",
                                   volume["updated_at"])
    assert "now available" in detail
    with pytest.raises(PreconditionFailed, match="no longer exists"):
        src.delete_attachment(dangling["id"], volume["id"], "reserved", "reserved",
                              volume["updated_at"])


def test_delete_attachment_refuses_one_that_got_connected(sim: OpenStackSim,
                                                          clouds: str) -> None:
    volume, dangling = sim.inject_dangling_attachment("pvc-c", beside_attached=False)
    sim.set_attachment(dangling["id"], status="attaching")
    with pytest.raises(PreconditionFailed, match="now 'attaching'"):
        source(clouds).delete_attachment(dangling["id"], volume["id"], "reserved", "reserved",
                                         volume["updated_at"])


def test_quarantine_and_delete(sim: OpenStackSim, clouds: str) -> None:
    orphan = sim.inject_orphan_volume("pvc-o")
    src = source(clouds)
    key, value = "watchdogd-orphaned-since", "2026-11-01T00:00:00Z"
    assert "quarantined" in src.quarantine_volume(orphan["id"], key, value, "available",
                                                  orphan["updated_at"])
    marked = sim.volume(orphan["id"])
    assert marked is not None and marked["metadata"] == {key: value}
    assert marked["updated_at"] == orphan["updated_at"]  # metadata does not touch it
    with pytest.raises(PreconditionFailed, match="quarantine mark"):
        src.delete_volume(orphan["id"], "available", orphan["updated_at"], key, "other")
    sim.add_attachment(orphan["id"], status="reserved", update_volume=False)
    with pytest.raises(PreconditionFailed, match="has attachments"):
        src.delete_volume(orphan["id"], "available", orphan["updated_at"], key, value)
    for attachment in sim.attachments(orphan["id"]):
        sim.set_attachment(attachment["id"], volume_id="elsewhere")
    assert "deleted orphaned volume" in src.delete_volume(orphan["id"], "available",
                                                          orphan["updated_at"], key, value)
    assert sim.volume(orphan["id"]) is None


def test_reset_forbidden_for_non_admin_is_a_source_error(sim: OpenStackSim,
                                                         tmp_path: Path) -> None:
    sim.add_user("member", "member-secret", project="users")
    volume = sim.add_volume("pvc-m", project="users", status="error_deleting")
    src = source(sim.write_clouds_yaml(tmp_path / "m.yaml", user="member"))
    with pytest.raises(SourceError, match=r"403 Forbidden.*admin role"):
        src.reset_volume_status(volume["id"], "available", "error_deleting",
                                volume["updated_at"])


def test_sim_clock_drives_timestamps(tmp_path: Path) -> None:
    fixed = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    with OpenStackSim(clock=lambda: fixed) as world:
        volume = world.add_volume("pvc-t", age=timedelta(hours=2))
        assert volume["created_at"] == "2026-11-22T01:00:00.000000"


def test_listing_scope_is_reported(sim: OpenStackSim, clouds: str, tmp_path: Path) -> None:
    sim.add_user("member", "member-secret", project="users")
    sim.add_volume("pvc-theirs", project="users")
    assert source(clouds).volumes()["all_projects"] is True
    member = source(sim.write_clouds_yaml(tmp_path / "m.yaml", user="member")).volumes()
    assert member["all_projects"] is False and len(member["items"]) == 1
