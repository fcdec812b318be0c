"""The z2jh overlay's configuration and token scopes against a real JupyterHub 5.5.

z2jh 4.x ships JupyterHub 5.5. The hub here gets exactly the role of
config/kubernetes/z2jh/z2jh-values.yaml (nothing more, unlike the other real-hub tests'
service role), watchdogd gets the overlay's rendered watchdogd.toml with the two tokens
in the files the chart's Secret `hub` is projected to, and no hub database. Every hub and
proxy API call watchdogd makes then succeeds: the active servers with their spawner state,
the re-read before an action, the proxy's routes, the route sync and the stop; and the
optional services scopes are really absent (GET /services is refused).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

import tests.peers.jupyterhub as jupyterhub_peer
from tests.integration.conftest import require_or_skip
from tests.peers.jupyterhub import RealHub, hub_available
from tests.unit.test_kubernetes_manifests import SECRETS_DIR, one, render
from watchdogd.app import load_config
from watchdogd.model import SourceError
from watchdogd.sim.kube import KubeSim
from watchdogd.sources.hubapi import HubApiSource
from watchdogd.sources.proxy import ProxySource

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HUB5_PYTHON = REPO / ".cache" / "hub5-venv" / "bin" / "python"
SNIPPET = REPO / "config" / "kubernetes" / "z2jh" / "z2jh-values.yaml"


def test_the_snippets_role_is_enough_on_jupyterhub_5(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    require_or_skip(hub_available())
    require_or_skip(None if HUB5_PYTHON.exists() else
                    f"no JupyterHub 5 venv at {HUB5_PYTHON}: run scripts/setup-test-peers.sh")
    scopes = yaml.safe_load(SNIPPET.read_text())["hub"]["loadRoles"]["watchdogd"]["scopes"]
    monkeypatch.setattr(jupyterhub_peer, "SERVICE_SCOPES", scopes)
    text = one(render("z2jh"), "ConfigMap")["data"]["watchdogd.toml"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "apprise-urls").write_text("json://127.0.0.1:9/unused\n")
    with KubeSim() as kube:
        hub = RealHub(tmp_path / "hub", kube_url=kube.url, kube_token=kube.token)
        hub.python = str(HUB5_PYTHON)
        with hub:
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
            target = config.hubs["main"]
            assert target.db_url is None  # API-only: no hub database anywhere

            hub.create_user("alice")
            hub.start_server("alice")
            api = HubApiSource("main", target)
            [server] = api.active_servers()
            assert (server["user"], server["server_name"]) == ("alice", "")
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
