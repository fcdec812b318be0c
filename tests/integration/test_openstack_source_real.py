"""watchdogd's OpenStack source, the volumes check and the engine against the real Cinder API
(PyPI ``cinder`` in its own virtualenv, ``noauth``) and, for permissions and credentials, real
Keystone in front of it.

What real Cinder cannot do here: anything that needs a cinder-volume service. Deleting an
*attached* attachment makes an RPC call to cinder-volume (it would block for the RPC timeout),
so that is covered in the simulator only (tests/sim/test_openstack_sim.py,
``test_attachment_delete_recomputes_the_volume``); watchdogd never deletes attached attachments
anyway. Deleting a *reserved* attachment, the remediation, runs for real below, as do listing
with pages, listing attachments, resetting a status, the 403 of a non-admin reset, metadata and
the deletion of a quarantined volume.
"""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from openstack.identity.v3 import _proxy as identity_v3

from watchdogd.config import CloudConfig, Config
from watchdogd.engine import Engine
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.sources.base import counting
from watchdogd.sources.openstack import OpenStackSource
from watchdogd.store import Store

try:
    from tests.peers.openstack_real import RealCinder, cinder_venv, venv_ready
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.peers.openstack_real import RealCinder, cinder_venv, venv_ready

pytestmark = pytest.mark.integration


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
    with RealCinder(tmp_path_factory.mktemp("wd-cinder-noauth")) as peer:
        yield peer


@pytest.fixture(scope="module")
def cinder_ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCinder]:
    _require_venv()
    with RealCinder(tmp_path_factory.mktemp("wd-cinder-keystone"), keystone=True) as peer:
        yield peer


def noauth_yaml(cinder: RealCinder, path: Path) -> str:
    path.write_text(json.dumps({"clouds": {"real": {
        "auth_type": "none", "block_storage_endpoint_override": cinder.url}}}))
    return str(path)


def keystone_yaml(cinder: RealCinder, path: Path, *, user: str = "admin",
                  password: str = RealCinder.ADMIN_PASSWORD, project: str = "admin") -> str:
    assert cinder.keystone_url is not None
    path.write_text(json.dumps({"clouds": {"real": {
        "auth_type": "password", "region_name": "RegionOne", "interface": "public",
        "identity_api_version": "3",
        "auth": {"auth_url": cinder.keystone_url + "/v3", "username": user,
                 "password": password, "project_name": project,
                 "user_domain_name": "Default", "project_domain_name": "Default"}}}}))
    return str(path)


def source(clouds: str, **overrides: Any) -> OpenStackSource:
    config = CloudConfig(cloud="real", clouds_yaml=clouds, timeout=30,
                         **{"page_size": 5, **overrides})
    return OpenStackSource("real", config, sleep=lambda _s: None)


def db_time(delta: timedelta) -> str:
    """Cinder's database timestamp ``delta`` ago (naive UTC)."""
    return (datetime.now(UTC) - delta).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def live_and_dangling(cinder: RealCinder, name: str) -> tuple[dict[str, Any], dict[str, Any],
                                                               dict[str, Any]]:
    """A volume with an attached attachment and a reservation beside it, as a crash leaves it.

    The API refuses a second reservation on an in-use non-multiattach volume, so the volume is
    flagged multiattach for that one call (the state itself is what production clouds show).
    """
    volume = cinder.create_volume(name)
    live = cinder.create_attachment(volume["id"], instance_uuid=str(uuid.uuid4()),
                                    connector={"host": "node-1", "initiator": "iqn.x"},
                                    complete=True)
    cinder.sql("UPDATE volumes SET multiattach = 1 WHERE id = :id", {"id": volume["id"]})
    dangling = cinder.create_attachment(volume["id"], instance_uuid=str(uuid.uuid4()))
    cinder.sql("UPDATE volumes SET multiattach = 0 WHERE id = :id", {"id": volume["id"]})
    return cinder.get_volume(volume["id"]), live, dangling


# -- noauth ---------------------------------------------------------------------------------------


def test_volumes_of_every_project_page_by_page(cinder: RealCinder, tmp_path: Path) -> None:
    created = {cinder.create_volume(f"pvc-list-{i}",
                                    project_id="p-other" if i % 2 else None)["id"]
               for i in range(23)}
    src = source(noauth_yaml(cinder, tmp_path / "c.yaml"))
    with counting() as requests:
        result = src.volumes()
    ids = [v["id"] for v in result["items"]]
    assert created <= set(ids) and len(ids) == len(set(ids))
    total = len(ids)
    assert result["pages"] == total // 5 + 1  # full pages carry a next link; then the end
    pages_needed = math.ceil(total / 5)
    assert requests[0] <= pages_needed + 10
    projects = {v["os-vol-tenant-attr:tenant_id"] for v in result["items"]}
    assert {"p-other", cinder.project_id} <= projects
    # Real Cinder sends its clock with every answer: the ages of its timestamps are taken
    # on it (this machine is Cinder's host here, so the two clocks agree to the second).
    cloud_now = datetime.fromisoformat(result["cloud_now"])
    assert abs((cloud_now - datetime.now(UTC)).total_seconds()) < 120
    src.close()


def test_attachments_page_by_page(cinder: RealCinder, tmp_path: Path) -> None:
    for i in range(3):
        volume = cinder.create_volume(f"pvc-att-{i}")
        cinder.create_attachment(volume["id"], instance_uuid=str(uuid.uuid4()),
                                 complete=bool(i % 2))
    expected = {r["id"] for r in cinder.sql(
        "SELECT id FROM volume_attachment WHERE deleted = 0")}
    for page_size in (2, 1000):
        result = source(noauth_yaml(cinder, tmp_path / "c.yaml"),
                        page_size=page_size).attachments()
        assert {a["id"] for a in result["items"]} == expected
        assert {a["status"] for a in result["items"]} >= {"reserved", "attached"}
        assert all("connection_info" not in a for a in result["items"])


def test_reset_status_action(cinder: RealCinder, tmp_path: Path) -> None:
    volume = cinder.create_volume("pvc-reset")
    cinder.sql("UPDATE volumes SET status = 'detaching', updated_at = :t WHERE id = :id",
               {"t": db_time(timedelta(hours=2)), "id": volume["id"]})
    observed = cinder.get_volume(volume["id"])
    src = source(noauth_yaml(cinder, tmp_path / "c.yaml"))
    with pytest.raises(PreconditionFailed, match="changed since"):
        src.reset_volume_status(volume["id"], "available", "detaching", volume["updated_at"])
    detail = src.reset_volume_status(volume["id"], "available", "detaching",
                                     observed["updated_at"])
    assert "detaching -> available" in detail
    assert cinder.get_volume(volume["id"])["status"] == "available"
    with pytest.raises(PreconditionFailed, match="now 'available'"):
        src.reset_volume_status(volume["id"], "available", "detaching", observed["updated_at"])


def test_delete_reserved_attachment_action(cinder: RealCinder, tmp_path: Path) -> None:
    volume, live, dangling = live_and_dangling(cinder, "pvc-dangle")
    assert volume["status"] == "reserved"
    src = source(noauth_yaml(cinder, tmp_path / "c.yaml"))
    detail = src.delete_attachment(dangling["id"], volume["id"], "reserved", "reserved",
                                   volume["updated_at"])
    assert "now in-use" in detail
    rows = cinder.sql("SELECT id, attach_status FROM volume_attachment WHERE volume_id = :v "
                      "AND deleted = 0", {"v": volume["id"]})
    assert rows == [{"id": live["id"], "attach_status": "attached"}]
    # the attached one is refused by watchdogd itself, before Cinder would need cinder-volume
    with pytest.raises(PreconditionFailed, match="now 'attached'"):
        src.delete_attachment(live["id"], volume["id"], "reserved", "in-use", None)


def test_quarantine_and_delete_orphan(cinder: RealCinder, tmp_path: Path) -> None:
    volume = cinder.create_volume("pvc-orphan")
    src = source(noauth_yaml(cinder, tmp_path / "c.yaml"))
    key, value = "watchdogd-orphaned-since", "2026-11-01T00:00:00Z"
    src.quarantine_volume(volume["id"], key, value, "available", volume["updated_at"])
    marked = cinder.get_volume(volume["id"])
    assert marked["metadata"] == {key: value}
    # A metadata write does not touch updated_at in Cinder (the simulator does the same):
    # the mark is its own record of the quarantine's time, and a re-read must compare
    # metadata itself, not only updated_at.
    assert marked["updated_at"] == volume["updated_at"]
    assert "deleted orphaned volume" in src.delete_volume(
        volume["id"], "available", marked["updated_at"], key, value)
    assert src.volume(volume["id"]) is None


def test_engine_passes_fix_what_is_stuck(cinder: RealCinder, tmp_path: Path) -> None:
    """The whole ladder through the engine, with Cinder's own answers deciding."""
    stuck = cinder.create_volume("pvc-stuck")
    cinder.sql("UPDATE volumes SET status = 'error_deleting', updated_at = :t WHERE id = :id",
               {"t": db_time(timedelta(hours=3)), "id": stuck["id"]})
    doubled, live, dangling = live_and_dangling(cinder, "pvc-doubled")
    cinder.sql("UPDATE volumes SET updated_at = :t WHERE id = :id",
               {"t": db_time(timedelta(hours=1)), "id": doubled["id"]})
    clock = SimClock()
    config = Config.model_validate({
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "remediation": {"dry_run": False, "confirm_after": 2, "min_age": "0s"},
        "clouds": {"real": {"cloud": "real", "clouds_yaml": noauth_yaml(cinder, tmp_path / "c"),
                            "timeout": "30s", "page_size": 50}},
        "checks": {"volumes": {"check_credentials": False}},
    })
    store = Store(config.state.resolved_url())
    sources = Sources(config)
    try:
        engine = Engine(config, store, sources, clock=clock)
        reports = []
        for _ in range(4):
            reports.append(engine.run_pass(only=["volumes"]).as_json())
            clock.advance(minutes=6)
    finally:
        sources.close()
        store.close()
    assert all(r["summary"]["errors"] == 0 for r in reports), reports
    done = {(f["kind"], f["subject"]): f["action"]["name"] for r in reports
            for c in r["checks"] for f in c["findings"]
            if f["action"] and f["action"]["status"] == "done"}
    assert done == {("volume-stuck", stuck["id"]): "reset-volume-status",
                    ("attachment-stale", dangling["id"]): "delete-attachment"}
    assert cinder.get_volume(stuck["id"])["status"] == "available"
    assert cinder.get_volume(doubled["id"])["status"] == "in-use"
    assert cinder.get_attachment(live["id"])["status"] == "attached"


# -- behind Keystone -----------------------------------------------------------------------------


def test_keystone_admin_lists_and_resets(cinder_ks: RealCinder, tmp_path: Path) -> None:
    volume = cinder_ks.create_volume("pvc-ks")
    cinder_ks.sql("UPDATE volumes SET status = 'error_deleting' WHERE id = :id",
                  {"id": volume["id"]})
    observed = cinder_ks.get_volume(volume["id"])
    src = source(keystone_yaml(cinder_ks, tmp_path / "admin.yaml"))
    assert volume["id"] in {v["id"] for v in src.volumes()["items"]}
    src.reset_volume_status(volume["id"], "available", "error_deleting",
                            observed["updated_at"])
    assert cinder_ks.get_volume(volume["id"])["status"] == "available"


def test_non_admin_reset_is_a_403(cinder_ks: RealCinder, tmp_path: Path) -> None:
    assert cinder_ks.member_project_id is not None
    mine = cinder_ks.create_volume("pvc-member", project_id=cinder_ks.member_project_id)
    admins = cinder_ks.create_volume("pvc-admin-only")
    src = source(keystone_yaml(cinder_ks, tmp_path / "member.yaml", user=RealCinder.MEMBER_USER,
                               password=RealCinder.MEMBER_PASSWORD,
                               project=RealCinder.MEMBER_PROJECT))
    listed = {v["id"] for v in src.volumes()["items"]}
    assert mine["id"] in listed and admins["id"] not in listed  # all_tenants silently scoped
    with pytest.raises(SourceError, match=r"403 Forbidden.*reset_status"):
        src.reset_volume_status(mine["id"], "available", "available", mine["updated_at"])


def test_wrong_password_is_credential_invalid(cinder_ks: RealCinder, tmp_path: Path) -> None:
    src = source(keystone_yaml(cinder_ks, tmp_path / "bad.yaml", password="not-it"))
    result = src.volumes()
    assert "Keystone rejected" in result["auth_error"]
    assert "not-it" not in result["auth_error"]


def test_application_credentials_with_expiry(cinder_ks: RealCinder, tmp_path: Path) -> None:
    admin = cinder_ks.connection(admin=True)
    expires = (datetime.now(UTC) + timedelta(days=5)).replace(microsecond=0)
    try:
        identity = cast(identity_v3.Proxy, admin.identity)
        cred = identity.create_application_credential(
            user=str(admin.current_user_id), name=f"watchdogd-{uuid.uuid4().hex[:6]}",
            expires_at=expires.strftime("%Y-%m-%dT%H:%M:%S"))
    finally:
        admin.close()
    clouds = keystone_yaml(cinder_ks, tmp_path / "ac.yaml")
    src = source(clouds, application_credential_id=cred.id,
                 application_credential_secret=cred.secret)
    result = src.application_credentials()
    assert result["in_use"] == cred.id
    (mine,) = [c for c in result["items"] if c["id"] == cred.id]
    assert mine["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S"))
    assert "items" in src.volumes()  # the credential itself authenticates
    assert cred.secret not in json.dumps(result)
