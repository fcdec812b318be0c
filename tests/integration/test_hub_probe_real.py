"""``hub-unresponsive`` against a real JupyterHub 6 behind a real configurable-http-proxy.

The hub process is frozen (SIGSTOP; SIGCONT in teardown) while its simulated pod stays
Running: CHP, which has no upstream timeout, leaves the probe unanswered. Then the hub is
stopped: CHP answers 503 ``Service Unavailable``, the answer the CHP simulator gives too.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import require_or_skip
from tests.peers.jupyterhub import RealHub, hub_available
from watchdogd.app import load_config
from watchdogd.engine import Engine
from watchdogd.sim.kube import KubeSim
from watchdogd.sources import Sources
from watchdogd.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def engine_and_hub(tmp_path: Path) -> Iterator[tuple[Engine, RealHub]]:
    require_or_skip(hub_available())
    with KubeSim() as kube:
        kube.put({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "hub-5f7c9", "namespace": "jhub",
                               "labels": {"component": "hub"}},
                  "spec": {"containers": [{"name": "hub", "image": "hub"}]},
                  "status": {"phase": "Running"}})
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        with RealHub(tmp_path / "hub", kube_url=kube.url, kube_token=kube.token) as hub:
            (tmp_path / "token").write_text(hub.service_token + "\n")
            (tmp_path / "state_url").write_text(f"sqlite:///{tmp_path}/state.db\n")
            config_path = tmp_path / "watchdogd.toml"
            config_path.write_text(f"""
[state]
url_file = "{tmp_path / 'state_url'}"
[clusters.sim]
kubeconfig = "{kubeconfig}"
timeout = "5s"
[hubs.main]
cluster = "sim"
namespace = "jhub"
api_url = "{hub.api_url}"
api_token_file = "{tmp_path / 'token'}"
public_url = "{hub.public_url}"
timeout = "2s"
""")
            config = load_config(config_path)
            engine = Engine(config, Store(config.state.resolved_url()), Sources(config),
                            dry_run=True)
            try:
                yield engine, hub
            finally:
                engine.sources.close()


def probe(engine: Engine) -> dict[str, Any]:
    [check] = engine.run_pass(only=["probes"]).as_json()["checks"]
    return dict(check)


def test_a_frozen_hub_is_unresponsive_through_the_real_proxy(
        engine_and_hub: tuple[Engine, RealHub]) -> None:
    engine, hub = engine_and_hub
    assert probe(engine)["status"] == "ok"
    pid = hub.hub_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        check = probe(engine)
    finally:
        os.kill(pid, signal.SIGCONT)
    [finding] = check["findings"]
    assert finding["kind"] == "hub-unresponsive" and "no answer in time" in finding["message"]
    assert finding["evidence"]["hub_pod"]["name"] == "hub-5f7c9"
    assert finding["action"]["name"] == "restart-hub"
    assert probe(engine)["status"] == "ok"  # thawed: it answers again, resolved
    hub.stop_hub()
    check = probe(engine)
    [finding] = check["findings"]
    assert finding["evidence"]["probe"]["status"] == 503
    assert finding["evidence"]["probe"]["body"] == "Service Unavailable"
