"""A ``noauth`` cloud (real Cinder, ``auth_type: none``) works with the default settings.

``check_credentials`` defaults on; without Keystone there is no user whose application
credentials could be listed, which used to fail every volume verdict of the cloud.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.peers.openstack_real import RealCinder, cinder_venv, venv_ready
from watchdogd.checks import REGISTRY
from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cinder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCinder]:
    if not venv_ready():
        reason = f"Cinder venv missing at {cinder_venv()}: run scripts/setup-cinder-venv.sh"
        if os.environ.get("WATCHDOGD_REQUIRE_PEERS", "").strip() not in ("", "0"):
            pytest.fail(f"WATCHDOGD_REQUIRE_PEERS is set but the {reason}", pytrace=False)
        pytest.skip(reason)
    with RealCinder(tmp_path_factory.mktemp("wd-cinder-noauth-defaults")) as peer:
        yield peer


def test_a_noauth_cloud_gets_volume_verdicts_with_the_defaults(cinder: RealCinder,
                                                               tmp_path: Path) -> None:
    volume = cinder.create_volume(f"pvc-noauth-{uuid.uuid4().hex[:6]}")
    stale = (datetime.now(UTC) - timedelta(hours=3)).replace(tzinfo=None)
    cinder.sql("UPDATE volumes SET status = 'detaching', updated_at = :t WHERE id = :id",
               {"t": stale.strftime("%Y-%m-%d %H:%M:%S.%f"), "id": volume["id"]})
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(json.dumps({"clouds": {"real": {
        "auth_type": "none", "block_storage_endpoint_override": cinder.url}}}))
    config = Config.model_validate({
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "clouds": {"real": {"cloud": "real", "clouds_yaml": str(clouds), "timeout": "30s"}},
    })
    assert REGISTRY["volumes"].settings(config.checks).check_credentials is True
    clock = SimClock()
    store = Store(config.state.resolved_url())
    sources = Sources(config)
    try:
        engine = Engine(config, store, sources, clock=clock)
        reports = []
        for _ in range(2):
            reports.append(engine.run_pass(only=["volumes"]).as_json())
            clock.advance(minutes=6)
    finally:
        sources.close()
        store.close()
    checks = [c for r in reports for c in r["checks"]]
    assert all(c["status"] != "error" for c in checks), checks
    found = {(f["kind"], f["subject"]) for f in reports[-1]["checks"][0]["findings"]}
    assert ("volume-stuck", volume["id"]) in found
    assert not {kind for kind, _ in found} & {"credential-check-failed", "credential-invalid"}
