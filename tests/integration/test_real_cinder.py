"""Real Cinder (and Keystone) from PyPI: prove the test peer works and pin down the facts that
watchdogd's OpenStack source, its volume check and the Cinder simulator rely on.

Every assertion here is something the production code or the simulator copies: the raw JSON
shapes read through openstacksdk's proxy, the ``volumes_links`` pagination, the microversion
gate on attachments, what deleting a reserved attachment does to its volume, and the real 403
a non-admin gets. If Cinder changes any of them, this module is where we find out.

The services need the virtualenv made by ``scripts/setup-cinder-venv.sh``. Without it the
module is skipped, unless ``WATCHDOGD_REQUIRE_PEERS`` is set (CI), where that is a failure.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack.connection
import pytest

try:
    from tests.peers.openstack_real import RealCinder, cinder_venv, venv_ready
except ModuleNotFoundError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.peers.openstack_real import RealCinder, cinder_venv, venv_ready

pytestmark = pytest.mark.integration

MV_ATTACH = "3.27"  # attachments API; also what watchdogd uses for volume lists


def _require_venv() -> None:
    """Skip (developer machine) or fail (WATCHDOGD_REQUIRE_PEERS set) without the venv."""
    if venv_ready():
        return
    reason = f"Cinder venv missing at {cinder_venv()}: run scripts/setup-cinder-venv.sh"
    if os.environ.get("WATCHDOGD_REQUIRE_PEERS", "").strip() not in ("", "0"):
        pytest.fail(f"WATCHDOGD_REQUIRE_PEERS is set but the {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cinder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCinder]:
    """One noauth cinder-api for the whole session (start-up ~5 s)."""
    _require_venv()
    peer = RealCinder(tmp_path_factory.mktemp("cinder-noauth"))
    with peer:
        print(f"\nreal cinder (noauth) up: {peer.timings}")
        yield peer


@pytest.fixture(scope="session")
def cinder_ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCinder]:
    """Keystone + cinder-api behind keystonemiddleware (start-up ~15-20 s)."""
    _require_venv()
    peer = RealCinder(tmp_path_factory.mktemp("cinder-keystone"), keystone=True)
    with peer:
        print(f"\nreal cinder (keystone) up: {peer.timings}")
        yield peer


@pytest.fixture(scope="session")
def conn(cinder: RealCinder) -> Iterator[openstack.connection.Connection]:
    c = cinder.connection()
    yield c
    c.close()


def _json(resp: Any, status: int) -> Any:
    assert resp.status_code == status, f"{resp.status_code}: {resp.text[:500]}"
    return resp.json() if resp.content else None


def _list_all(
    conn: openstack.connection.Connection, path: str, key: str, microversion: str = MV_ATTACH
) -> tuple[list[dict[str, Any]], list[str]]:
    """Follow ``<key>_links`` the way watchdogd does: reuse only the ``marker`` of ``next``.

    The href's scheme/host come from the request Cinder saw (wrong behind a TLS-terminating
    proxy without ``public_endpoint``), so only its query is trusted. Returns the items and
    the next-hrefs seen.
    """
    items: list[dict[str, Any]] = []
    hrefs: list[str] = []
    url = path
    for _ in range(1000):
        body = _json(conn.block_storage.get(url, microversion=microversion), 200)
        items.extend(body[key])
        nxt = [link["href"] for link in body.get(f"{key}_links", []) if link["rel"] == "next"]
        if not nxt:
            return items, hrefs
        hrefs.append(nxt[0])
        marker = urllib.parse.parse_qs(urllib.parse.urlsplit(nxt[0]).query)["marker"][0]
        sep = "&" if "?" in path else "?"
        url = f"{path}{sep}marker={marker}"
    raise AssertionError("pagination did not end")


# -- the noauth peer ------------------------------------------------------------------------


def test_version_discovery_and_endpoint(
    cinder: RealCinder, conn: openstack.connection.Connection
) -> None:
    """openstacksdk finds v3 at the root URL; Cinder 29 offers microversions 3.0-3.71."""
    data = conn.block_storage.get_endpoint_data()
    assert data is not None
    assert data.min_microversion == (3, 0)
    assert data.max_microversion == (3, 71)
    # noauth: no project id in the URL.
    assert conn.block_storage.get_endpoint() == f"{cinder.url}/v3/"
    resp = conn.block_storage.get("/volumes", microversion="3.0")
    assert resp.headers["OpenStack-API-Version"] == "volume 3.0"


def test_volume_json_shape(cinder: RealCinder, conn: openstack.connection.Connection) -> None:
    """The fields watchdogd reads from a detailed volume (admin view, 3.27)."""
    vol = cinder.create_volume("pvc-shape", size=2)
    got = _json(conn.block_storage.get(f"/volumes/{vol['id']}", microversion=MV_ATTACH), 200)
    v = got["volume"]
    assert v["status"] == "available"
    assert v["name"] == "pvc-shape"
    assert v["size"] == 2
    assert v["attachments"] == []
    assert v["multiattach"] is False
    assert v["bootable"] == "false"  # a string, not a boolean
    # naive UTC timestamps, microseconds, no zone suffix
    assert len(v["updated_at"]) == len("2026-11-22T03:00:15.806119")
    assert "T" in v["updated_at"]
    assert not v["updated_at"].endswith("Z")
    # admin-only extension fields are present for the admin
    for key in (
        "os-vol-tenant-attr:tenant_id",
        "os-vol-host-attr:host",
        "os-vol-mig-status-attr:migstat",
        "migration_status",
    ):
        assert key in v
    # keystoneauth's "none" plugin sends the token "notused": that is the project noauth records
    assert v["os-vol-tenant-attr:tenant_id"] == "notused" == cinder.project_id
    assert v["user_id"] == "notused"
    assert v["links"][0] == {"rel": "self", "href": f"{cinder.url}/v3/volumes/{vol['id']}"}


def test_create_volume_in_another_project(
    cinder: RealCinder, conn: openstack.connection.Connection
) -> None:
    """A volume in project p-other is listed with all_tenants=1 only."""
    vol = cinder.create_volume("pvc-other", project_id="p-other")
    assert vol["os-vol-tenant-attr:tenant_id"] == "p-other"
    own = _json(conn.block_storage.get("/volumes", microversion=MV_ATTACH), 200)["volumes"]
    assert vol["id"] not in {v["id"] for v in own}
    every, _ = _list_all(conn, "/volumes/detail?all_tenants=1&limit=50", "volumes")
    assert vol["id"] in {v["id"] for v in every}


def test_paged_volume_listing_raw_json(
    cinder: RealCinder, conn: openstack.connection.Connection
) -> None:
    """limit=2 pages, newest first, each with a ``next`` link until the last page."""
    ids = {cinder.create_volume(f"pvc-page-{i}")["id"] for i in range(5)}
    first = _json(
        conn.block_storage.get("/volumes/detail?all_tenants=1&limit=2", microversion=MV_ATTACH),
        200,
    )
    assert len(first["volumes"]) == 2
    (link,) = first["volumes_links"]
    assert link["rel"] == "next"
    parts = urllib.parse.urlsplit(link["href"])
    # the next link repeats the query and adds the last item's id as marker
    assert f"{parts.scheme}://{parts.netloc}" == cinder.url
    assert parts.path == "/v3/volumes/detail"
    query = urllib.parse.parse_qs(parts.query)
    assert query == {
        "all_tenants": ["1"],
        "limit": ["2"],
        "marker": [first["volumes"][-1]["id"]],
    }
    # the href itself can also be followed as given (absolute URL through the proxy)
    second = _json(conn.block_storage.get(link["href"], microversion=MV_ATTACH), 200)
    assert {v["id"] for v in second["volumes"]}.isdisjoint({v["id"] for v in first["volumes"]})

    items, hrefs = _list_all(conn, "/volumes/detail?all_tenants=1&limit=2", "volumes")
    listed = [v["id"] for v in items]
    assert len(listed) == len(set(listed)), "pages overlap"
    assert ids <= set(listed)
    # every full page has a next link, even the last one: then an empty page without links
    assert len(hrefs) == len(listed) // 2
    # newest first by default (sort created_at desc, then id desc)
    created = [v["created_at"] for v in items]
    assert created == sorted(created, reverse=True)
    # the whole count in one call, without reading the volumes (3.45+: with_count)
    counted = _json(
        conn.block_storage.get(
            "/volumes?all_tenants=1&limit=1&with_count=true", microversion="3.45"
        ),
        200,
    )
    assert counted["count"] == len(listed)
    assert set(counted["volumes"][0]) == {"id", "name", "links"}  # non-detail list

    exact = _json(
        conn.block_storage.get(
            f"/volumes/detail?all_tenants=1&limit={len(listed)}", microversion=MV_ATTACH
        ),
        200,
    )
    assert len(exact["volumes"]) == len(listed)
    assert exact["volumes_links"][0]["rel"] == "next"
    after = _json(conn.block_storage.get(exact["volumes_links"][0]["href"]), 200)
    assert after == {"volumes": []}  # no volumes_links key at all on the empty page


def test_attachment_list_needs_microversion_3_27(
    cinder: RealCinder, conn: openstack.connection.Connection
) -> None:
    """``/attachments`` does not exist below 3.27 (404), and the shapes at 3.27."""
    vol = cinder.create_volume("pvc-attlist")
    instance = str(uuid.uuid4())
    att = cinder.create_attachment(vol["id"], instance_uuid=instance)
    assert att == {
        "id": att["id"],
        "status": "reserved",
        "instance": instance,
        "volume_id": vol["id"],
        "attached_at": "",  # empty strings, not null
        "detached_at": "",
        "attach_mode": "null",  # the string "null"
        "connection_info": {},
    }

    old = conn.block_storage.get("/attachments?all_tenants=1", microversion="3.0")
    assert old.status_code == 404
    assert old.json() == {
        "itemNotFound": {"code": 404, "message": "The resource could not be found."}
    }

    detail, _ = _list_all(conn, "/attachments/detail?all_tenants=1&limit=100", "attachments")
    assert att in detail
    summary, _ = _list_all(conn, "/attachments?all_tenants=1&limit=100", "attachments")
    assert {"id": att["id"], "status": "reserved", "instance": instance,
            "volume_id": vol["id"]} in summary  # fmt: skip
    filtered = _json(
        conn.block_storage.get(
            f"/attachments?all_tenants=1&volume_id={vol['id']}", microversion=MV_ATTACH
        ),
        200,
    )["attachments"]
    assert [a["id"] for a in filtered] == [att["id"]]

    too_new = conn.block_storage.get("/attachments", microversion="3.99")
    assert too_new.status_code == 406
    assert too_new.json() == {
        "computeFault": {
            "code": 406,
            "message": "Version 3.99 is not supported by the API. "
            "Minimum is 3.0 and maximum is 3.71.",
        }
    }


def test_reset_status(cinder: RealCinder, conn: openstack.connection.Connection) -> None:
    """``os-reset_status``: 202 with an empty body; bad status 400; unknown volume 404."""
    vol = cinder.create_volume("pvc-reset")
    action = f"/volumes/{vol['id']}/action"
    resp = conn.block_storage.post(
        action, json={"os-reset_status": {"status": "error"}}, microversion=MV_ATTACH
    )
    assert resp.status_code == 202
    assert resp.content == b""
    assert cinder.get_volume(vol["id"])["status"] == "error"

    resp = conn.block_storage.post(
        action,
        json={"os-reset_status": {"status": "available", "attach_status": "detached"}},
        microversion=MV_ATTACH,
    )
    assert resp.status_code == 202
    assert cinder.get_volume(vol["id"])["status"] == "available"

    bad = conn.block_storage.post(
        action, json={"os-reset_status": {"status": "bogus"}}, microversion=MV_ATTACH
    )
    assert bad.status_code == 400
    assert bad.json()["badRequest"]["code"] == 400
    assert bad.json()["badRequest"]["message"].startswith("Volume status: bogus is invalid")

    missing = str(uuid.uuid4())
    gone = conn.block_storage.post(
        f"/volumes/{missing}/action",
        json={"os-reset_status": {"status": "available"}},
        microversion=MV_ATTACH,
    )
    assert gone.status_code == 404
    assert gone.json() == {
        "itemNotFound": {"code": 404, "message": f"Volume {missing} could not be found."}
    }


def test_delete_reserved_attachment_frees_the_volume(
    cinder: RealCinder, conn: openstack.connection.Connection
) -> None:
    """The remediation: deleting a dangling reservation needs no cinder-volume."""
    vol = cinder.create_volume("pvc-dangling")
    att = cinder.create_attachment(vol["id"], instance_uuid=str(uuid.uuid4()))
    v = cinder.get_volume(vol["id"])
    assert v["status"] == "reserved"
    assert v["attachments"] == []  # a volume lists attached attachments only

    # a non-multiattach volume takes no second reservation
    again = conn.block_storage.post(
        "/attachments",
        json={"attachment": {"volume_uuid": vol["id"], "instance_uuid": str(uuid.uuid4())}},
        microversion=MV_ATTACH,
    )
    assert again.status_code == 400
    assert (
        "status must be available or downloading to reserve"
        in (again.json()["badRequest"]["message"])
    )

    resp = conn.block_storage.delete(f"/attachments/{att['id']}", microversion=MV_ATTACH)
    # 200 and the volume's remaining attachments (summary form), here none
    assert _json(resp, 200) == {"attachments": []}
    v = cinder.get_volume(vol["id"])
    assert v["status"] == "available"
    assert cinder.sql("SELECT attach_status FROM volumes WHERE id = :id", {"id": vol["id"]}) == [
        {"attach_status": "detached"}
    ]
    twice = conn.block_storage.delete(f"/attachments/{att['id']}", microversion=MV_ATTACH)
    assert twice.status_code == 404
    assert twice.json() == {
        "itemNotFound": {
            "code": 404,
            "message": "Volume attachment could not be found with filter: "
            f"attachment_id = {att['id']}.",
        }
    }


def test_delete_reserved_beside_attached_keeps_in_use(
    cinder: RealCinder, conn: openstack.connection.Connection
) -> None:
    """A reservation beside a live attachment: delete it, the volume goes back to in-use."""
    vol = cinder.create_volume("pvc-double")
    live = cinder.create_attachment(
        vol["id"],
        instance_uuid=str(uuid.uuid4()),
        connector={"host": "node-1", "initiator": "iqn.1993-08.org.debian:01:abc"},
        complete=True,
    )
    assert live["status"] == "attached"
    assert live["attached_at"] == ""  # os-complete does not set attach_time
    v = cinder.get_volume(vol["id"])
    assert v["status"] == "in-use"
    assert v["attachments"] == [
        {
            "id": vol["id"],  # the *volume* id, as Cinder has always done
            "attachment_id": live["id"],
            "volume_id": vol["id"],
            "server_id": live["instance"],
            "host_name": None,
            "device": None,
            "attached_at": None,
        }
    ]

    # The API refuses a second reservation on a non-multiattach in-use volume; production
    # clouds still end up like this (nova retries, crashed hosts). Make it for real by
    # flagging the volume multiattach for the one call.
    cinder.sql("UPDATE volumes SET multiattach = 1 WHERE id = :id", {"id": vol["id"]})
    dangling = cinder.create_attachment(vol["id"], instance_uuid=str(uuid.uuid4()))
    cinder.sql("UPDATE volumes SET multiattach = 0 WHERE id = :id", {"id": vol["id"]})
    assert dangling["status"] == "reserved"
    v = cinder.get_volume(vol["id"])
    assert v["status"] == "reserved"  # the new reservation overwrote in-use
    assert [a["attachment_id"] for a in v["attachments"]] == [live["id"]]
    rows = cinder.sql(
        "SELECT id, attach_status, connector FROM volume_attachment "
        "WHERE volume_id = :id AND deleted = 0 ORDER BY attach_status",
        {"id": vol["id"]},
    )
    assert [(r["id"], r["attach_status"]) for r in rows] == [
        (live["id"], "attached"),
        (dangling["id"], "reserved"),
    ]
    assert rows[0]["connector"] is not None and "node-1" in rows[0]["connector"]

    resp = conn.block_storage.delete(f"/attachments/{dangling['id']}", microversion=MV_ATTACH)
    assert _json(resp, 200) == {
        "attachments": [
            {
                "id": live["id"],
                "status": "attached",
                "instance": live["instance"],
                "volume_id": vol["id"],
            }
        ]
    }
    assert cinder.get_volume(vol["id"])["status"] == "in-use"


def test_sql_makes_old_states(cinder: RealCinder) -> None:
    """Age a stuck volume in Cinder's DB; the API then reports the old ``updated_at``."""
    vol = cinder.create_volume("pvc-stuck")
    cinder.sql(
        "UPDATE volumes SET status = 'detaching', updated_at = :t WHERE id = :id",
        {"t": "2026-01-02 03:04:05.000000", "id": vol["id"]},
    )
    v = cinder.get_volume(vol["id"])
    assert v["status"] == "detaching"
    assert v["updated_at"] == "2026-01-02T03:04:05.000000"
    rows = cinder.sql("SELECT status FROM volumes WHERE id = :id", {"id": vol["id"]})
    assert rows == [{"status": "detaching"}]


def test_noauth_has_no_member(cinder: RealCinder) -> None:
    with pytest.raises(ValueError, match="no non-admin"):
        cinder.connection(admin=False)


# -- behind Keystone ------------------------------------------------------------------------


def test_keystone_urls_carry_project_id(cinder_ks: RealCinder) -> None:
    """The catalog entry is ``/v3/%(project_id)s``: every URL and link carries the project."""
    admin = cinder_ks.connection()
    try:
        endpoint = admin.block_storage.get_endpoint()
        assert endpoint == f"{cinder_ks.url}/v3/{cinder_ks.project_id}"
        vol = cinder_ks.create_volume("pvc-ks")
        assert vol["os-vol-tenant-attr:tenant_id"] == cinder_ks.project_id
        assert vol["user_id"] != "notused"
        first = _json(
            admin.block_storage.get(
                "/volumes/detail?all_tenants=1&limit=1", microversion=MV_ATTACH
            ),
            200,
        )
        href = first["volumes_links"][0]["href"]
        assert href.startswith(f"{cinder_ks.url}/v3/{cinder_ks.project_id}/volumes/detail?")
        data = admin.block_storage.get_endpoint_data()
        assert data is not None and data.max_microversion == (3, 71)
    finally:
        admin.close()


def test_member_reset_status_is_forbidden(cinder_ks: RealCinder) -> None:
    """A non-admin's ``os-reset_status`` on its own volume gets a real policy 403."""
    member = cinder_ks.connection(admin=False)
    try:
        assert cinder_ks.member_project_id is not None
        assert str(member.block_storage.get_endpoint()).endswith(
            f"/v3/{cinder_ks.member_project_id}"
        )
        created = member.block_storage.post(
            "/volumes", json={"volume": {"name": "mine", "size": 1}}, microversion=MV_ATTACH
        )
        vol = _json(created, 202)["volume"]
        assert vol["status"] == "creating"
        resp = member.block_storage.post(
            f"/volumes/{vol['id']}/action",
            json={"os-reset_status": {"status": "available"}},
            microversion=MV_ATTACH,
        )
        assert resp.status_code == 403
        assert resp.json() == {
            "forbidden": {
                "code": 403,
                "message": "Policy doesn't allow "
                "volume_extension:volume_admin_actions:reset_status to be performed.",
            }
        }
        # the admin can
        cinder_ks.reset_status(vol["id"], "available")
        assert cinder_ks.get_volume(vol["id"])["status"] == "available"
    finally:
        member.close()


def test_member_all_tenants_is_silently_scoped(cinder_ks: RealCinder) -> None:
    """all_tenants=1 from a non-admin is not refused: it quietly lists the own project only.

    watchdogd must therefore not trust an all-projects list from a credential without the
    admin role (it would look like every other project's volumes vanished).
    """
    other = cinder_ks.create_volume("pvc-admins")
    member = cinder_ks.connection(admin=False)
    try:
        resp = member.block_storage.get("/volumes/detail?all_tenants=1", microversion=MV_ATTACH)
        vols = _json(resp, 200)["volumes"]
        assert other["id"] not in {v["id"] for v in vols}
        assert {v["os-vol-tenant-attr:tenant_id"] for v in vols} <= {cinder_ks.member_project_id}
        for v in vols:  # admin-only fields are absent for a member
            assert "os-vol-host-attr:host" not in v
        # someone else's volume is a 404 (not 403) for a member
        gone = member.block_storage.get(f"/volumes/{other['id']}", microversion=MV_ATTACH)
        assert gone.status_code == 404
        # deleting someone else's attachment: 403 from policy
        att = cinder_ks.create_attachment(other["id"], instance_uuid=str(uuid.uuid4()))
        denied = member.block_storage.delete(f"/attachments/{att['id']}", microversion=MV_ATTACH)
        assert denied.status_code == 403
        assert denied.json()["forbidden"]["message"] == (
            "Policy doesn't allow volume:attachment_delete to be performed."
        )
    finally:
        member.close()


def test_keystone_rejects_bad_token(cinder_ks: RealCinder) -> None:
    """keystonemiddleware's 401 body (a different shape from Cinder's own errors)."""
    import requests

    resp = requests.get(
        f"{cinder_ks.url}/v3/{cinder_ks.project_id}/volumes",
        headers={"X-Auth-Token": "garbage"},
        timeout=10,
    )
    assert resp.status_code == 401
    assert resp.json() == {
        "error": {
            "code": 401,
            "title": "Unauthorized",
            "message": "The request you have made requires authentication.",
        }
    }
    assert "Keystone uri=" in resp.headers.get("WWW-Authenticate", "")
