"""The z2jh overlay's configuration and token scopes against a real JupyterHub 5.5.

z2jh 4.x ships JupyterHub 5.5. The hub here gets exactly the role of
config/kubernetes/z2jh/z2jh-values.yaml (nothing more, unlike the other real-hub tests'
service role), watchdogd gets the overlay's rendered watchdogd.toml with the two tokens
in the files the chart's Secret `hub` is projected to, and no hub database. Every hub and
proxy API call watchdogd makes then succeeds: the active servers with their spawner state,
the re-read before an action, the proxy's routes, the route sync and the stop; and the
optional services scopes are really absent (GET /services is refused). Then whole passes
of the configured checks run on that configuration.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import tests.peers.jupyterhub as jupyterhub_peer
from tests.integration.conftest import require_or_skip
from tests.peers.jupyterhub import RealHub, hub_available
from tests.unit.test_kubernetes_manifests import SECRETS_DIR, one, render
from watchdogd.app import load_config
from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.model import SourceError
from watchdogd.sim.kube import KubeSim
from watchdogd.sources import Sources
from watchdogd.sources.hubapi import HubApiSource
from watchdogd.sources.proxy import ProxySource
from watchdogd.store import Store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HUB5_PYTHON = REPO / ".cache" / "hub5-venv" / "bin" / "python"
SNIPPET = REPO / "config" / "kubernetes" / "z2jh" / "z2jh-values.yaml"


@dataclass
class Z2jh:
    hub: RealHub
    config: Config
    workdir: Path


@pytest.fixture(scope="module")
def z2jh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Z2jh]:
    """A JupyterHub 5 with the snippet's role, and the overlay's configuration aimed at it."""
    require_or_skip(hub_available())
    require_or_skip(None if HUB5_PYTHON.exists() else
                    f"no JupyterHub 5 venv at {HUB5_PYTHON}: run scripts/setup-test-peers.sh")
    tmp_path = tmp_path_factory.mktemp("z2jh")
    scopes = yaml.safe_load(SNIPPET.read_text())["hub"]["loadRoles"]["watchdogd"]["scopes"]
    text = one(render("z2jh"), "ConfigMap")["data"]["watchdogd.toml"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "apprise-urls").write_text("json://127.0.0.1:9/unused\n")
    with pytest.MonkeyPatch.context() as monkeypatch, KubeSim() as kube:
        monkeypatch.setattr(jupyterhub_peer, "SERVICE_SCOPES", scopes)
        hub = RealHub(tmp_path / "hub", kube_url=kube.url, kube_token=kube.token)
        hub.python = str(HUB5_PYTHON)
        with hub:
            # z2jh's hub pod, which the sessions check finds by the overlay's hub_pod_selector
            kube.put({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "hub-5f7c9", "namespace": "jhub",
                                   "labels": {"component": "hub", "app": "jupyterhub"}},
                      "spec": {"containers": [{"name": "hub", "image": "hub"}]},
                      "status": {"phase": "Running"}})
            # The hub runs the snippet's role, not the peer's broader default one.
            assert "admin:users" not in hub.config_file.read_text()
            assert all(scope in hub.config_file.read_text() for scope in scopes)
            # What the projected volume holds: the chart's two tokens under these names.
            (secrets / "hub-main-api-token").write_text(hub.service_token + "\n")
            (secrets / "hub-main-proxy-token").write_text(hub.proxy_token + "\n")
            path = tmp_path / "watchdogd.toml"
            path.write_text(text.replace(SECRETS_DIR, f"{secrets}/"))
            # The chart's service names resolve in the pod's namespace only: aim at the peers.
            monkeypatch.setenv("WATCHDOGD_HUBS__MAIN__API_URL", hub.api_url)
            monkeypatch.setenv("WATCHDOGD_HUBS__MAIN__PROXY_API_URL", hub.proxy_api_url)
            monkeypatch.setenv("WATCHDOGD_CLUSTERS__LOCAL__IN_CLUSTER", "false")
            monkeypatch.setenv("WATCHDOGD_CLUSTERS__LOCAL__KUBECONFIG",
                               kube.write_kubeconfig(tmp_path / "kubeconfig"))
            config = load_config(path)
            assert config.hubs["main"].db_url is None  # API-only: no hub database anywhere
            yield Z2jh(hub, config, tmp_path)


def test_the_snippets_role_is_enough_on_jupyterhub_5(z2jh: Z2jh) -> None:
    hub, target = z2jh.hub, z2jh.config.hubs["main"]
    hub.create_user("alice")
    hub.start_server("alice")
    api = HubApiSource("main", target)
    [server] = [s for s in api.active_servers() if s["user"] == "alice"]
    assert server["server_name"] == ""
    assert server["state"].get("pod_name")  # admin:server_state
    assert api.server("alice") is not None
    routes = ProxySource("main", target).routes()
    assert any(p.startswith("/user/alice") for p in routes), routes
    assert api.sync_routes() == "routes synced (POST /proxy)"
    assert api.stop_server("alice").startswith(("stopped", "stop accepted"))
    deadline = time.monotonic() + 30
    while api.server("alice") is not None:
        assert time.monotonic() < deadline, "the hub never stopped alice's server"
        time.sleep(0.2)
    # Least privilege is real: the optional culler scopes are not in the role.
    with pytest.raises(SourceError, match="list:services"):
        api.services()


def run_pass(z2jh: Z2jh, name: str, only: list[str]) -> dict[str, str | None]:
    engine = Engine(z2jh.config, Store(f"sqlite:///{z2jh.workdir}/{name}.db"),
                    Sources(z2jh.config), notifier=None, dry_run=True)
    return {f"{c.check}/{c.target}": c.error for c in engine.run_pass(only=only).checks}


def test_the_culler_check_completes_api_only(z2jh: Z2jh) -> None:
    """culler_timeout stands in for the services the token may not read."""
    assert run_pass(z2jh, "culler", ["culler"]) == {"culler/main": None}


def test_the_sessions_check_completes_api_only(z2jh: Z2jh) -> None:
    z2jh.hub.create_user("bob")
    z2jh.hub.start_server("bob")
    assert run_pass(z2jh, "sessions", ["sessions"]) == {"sessions/main": None}
