"""The simulated Nova through openstacksdk and the ``openstack`` CLI (the runbook's soft
scaling), and watchdogd's ``OpenStackSource.servers`` against it: pages, listing scope, faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sim.test_openstack_sim import connect, openstack_cli, source
from watchdogd.model import SourceError
from watchdogd.sim.openstack import OpenStackSim


@pytest.fixture
def sim() -> Iterator[OpenStackSim]:
    with OpenStackSim(page_max=50) as world:
        yield world


@pytest.fixture
def clouds(sim: OpenStackSim, tmp_path: Path) -> str:
    return sim.write_clouds_yaml(tmp_path / "clouds.yaml")


def test_sdk_discovers_compute_and_pages_servers(sim: OpenStackSim, clouds: str) -> None:
    ids = {sim.add_server(f"node-{i}")["id"] for i in range(120)}
    conn = connect(clouds)
    try:
        assert {s.id for s in conn.compute.servers(all_projects=True)} == ids
        page = conn.compute.get("/servers/detail?all_tenants=1&limit=30")
        assert page.status_code == 200
        assert page.headers["OpenStack-API-Version"] == "compute 2.1"
        assert page.headers["X-OpenStack-Nova-API-Version"] == "2.1"
        body = page.json()
        assert len(body["servers"]) == 30 and body["servers_links"][0]["rel"] == "next"
        newest = conn.compute.get("/servers/detail?limit=1", microversion="2.100")
        assert newest.headers["OpenStack-API-Version"] == "compute 2.100"
        assert "vcpus" in newest.json()["servers"][0]["flavor"]
        too_new = conn.compute.get("/servers/detail", microversion="2.101")
        assert too_new.status_code == 406 and "maximum is 2.100" in too_new.text
        bad_marker = conn.compute.get("/servers/detail?marker=nope")
        assert bad_marker.status_code == 400
        assert bad_marker.json()["badRequest"]["message"] == "marker [nope] not found"
    finally:
        conn.close()
    # the SDK followed servers_links: 50, 50 and 20 (max_limit 50), then the 4 above
    assert sim.count("nova", r"/servers/detail") == 3 + 4
    assert sim.errors == []


def test_cli_shelves_and_lists_like_the_runbook(sim: OpenStackSim, clouds: str) -> None:
    server = sim.add_server("node-4")
    shelved = openstack_cli(clouds, "server", "shelve", server["id"])
    assert shelved.returncode == 0, shelved.stderr
    listed = openstack_cli(clouds, "server", "list", "--all-projects", "-f", "json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["ID"], row["Status"]) == (server["id"], "SHELVED_OFFLOADED")
    conn = connect(clouds)
    try:  # the CLI skips a shelved server itself; the API refuses it with a 409
        again = conn.compute.post(f"/servers/{server['id']}/action", json={"shelve": None})
        assert again.status_code == 409
        assert "vm_state shelved_offloaded" in again.json()["conflict"]["message"]
        back = conn.compute.post(f"/servers/{server['id']}/action", json={"unshelve": None})
        assert back.status_code == 202
    finally:
        conn.close()
    assert (sim.server(server["id"]) or {})["status"] == "ACTIVE"
    assert sim.errors == []


def test_source_reads_every_page_with_only_the_fields_it_needs(sim: OpenStackSim,
                                                               clouds: str) -> None:
    for i in range(45):
        sim.add_server(f"node-{i}", vm_state="shelved_offloaded" if i == 7 else "active")
    listed = source(clouds).servers()
    assert listed["all_projects"] is True and listed["pages"] == 3
    assert len({s["id"] for s in listed["items"]}) == 45
    assert {s["status"] for s in listed["items"]} == {"ACTIVE", "SHELVED_OFFLOADED"}
    assert set(listed["items"][0]) == {"id", "name", "status", "OS-EXT-STS:vm_state",
                                       "OS-EXT-STS:task_state", "updated", "tenant_id"}


def test_non_admin_gets_403_for_all_tenants_and_its_own_project(sim: OpenStackSim,
                                                                 tmp_path: Path) -> None:
    sim.add_user("member", "member-secret", project="users")
    mine = sim.add_server("node-mine", project="users")
    sim.add_server("node-admins")
    clouds = sim.write_clouds_yaml(tmp_path / "m.yaml", user="member")
    conn = connect(clouds)
    try:
        refused = conn.compute.get("/servers/detail?all_tenants=1")
        assert refused.status_code == 403
        assert "get_all_tenants" in refused.json()["forbidden"]["message"]
    finally:
        conn.close()
    listed = source(clouds).servers()
    assert listed["all_projects"] is False
    assert [s["id"] for s in listed["items"]] == [mine["id"]]


def test_any_partial_list_is_a_source_error(sim: OpenStackSim, clouds: str) -> None:
    for i in range(45):
        sim.add_server(f"node-{i}")
    src = source(clouds)
    sim.fail(r"/servers/detail", status=503, times=2, service="nova")
    assert len(src.servers()["items"]) == 45  # retried
    sim.fail(r"/servers/detail", status=0, after=1, service="nova")  # dropped from page 2
    with pytest.raises(SourceError, match="list servers"):
        src.servers()
    sim.clear_faults()
    sim.on_request(r"/servers/detail", lambda s: s.add_server("late", server_id=None),
                   service="nova", times=1)
    # a server created between pages is newest, so before the marker: the list still ends,
    # without it and without a duplicate
    names = [s["name"] for s in src.servers()["items"]]
    assert len(names) == len(set(names)) == 45 and "late" not in names
    assert len(sim.nova.servers) == 46
    sim.down("nova")
    with pytest.raises(SourceError, match="list servers"):
        src.servers()
