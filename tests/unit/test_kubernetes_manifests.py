"""config/kubernetes: renders, validates against the Kubernetes models, and RBAC is exact.

The ClusterRole is checked against what the code *does*, not against a list kept by
hand: the checks enabled by the ConfigMap's watchdogd.toml run one real pass against
the simulated API server (every other outside system refuses connections), the
remediations enabled there are called on the simulator, and the Deployment's Lease
elector makes its rounds. Every request the simulator saw is mapped to (API group,
resource, verb); the test fails when a rule is missing for one, or when a rule grants
something no request needed. Registering a new check (or enabling a remediation)
therefore fails this test until the ClusterRole says what it needs.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import subprocess
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import kubernetes.client
import pytest
import yaml

from tests.bindings import planned_calls
from watchdogd import checks
from watchdogd.app import load_config
from watchdogd.cli import main
from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.leader import KubeLeaseApi, LeaderElector
from watchdogd.model import SourceError
from watchdogd.sim.kube import KubeSim
from watchdogd.sources import Sources
from watchdogd.sources.kube import api_client
from watchdogd.store import Store

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "config" / "kubernetes"
MODES = {"deployment": KUSTOMIZE, "cronjob": KUSTOMIZE / "cronjob", "z2jh": KUSTOMIZE / "z2jh"}
#: The namespace each mode deploys to: z2jh's overlay runs in the hub's namespace.
NAMESPACES = {"deployment": "watchdogd", "cronjob": "watchdogd", "z2jh": "jhub"}
SECRETS_DIR = "/etc/watchdogd/secrets/"


# -- rendering -----------------------------------------------------------------------------


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("WATCHDOGD_REQUIRE_PEERS", "") not in ("", "0"):
            pytest.fail("kubectl is required (WATCHDOGD_REQUIRE_PEERS is set)")
        pytest.skip("kubectl not installed")
    return path


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(mode: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of one mode, parsed (rendered once per test session)."""
    if mode not in _RENDERED:
        result = subprocess.run([_kubectl(), "kustomize", str(MODES[mode])],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        _RENDERED[mode] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _RENDERED[mode]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind]
    return obj


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def model_class(obj: dict[str, Any]) -> Any:
    """``apps/v1`` + ``Deployment`` -> ``kubernetes.client.V1Deployment``."""
    version = obj["apiVersion"].split("/")[-1]
    return getattr(kubernetes.client, version[0].upper() + version[1:] + obj["kind"])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_renders_and_validates_against_the_models(mode: str) -> None:
    objects = render(mode)
    kinds = Counter(o["kind"] for o in objects)
    expected = Counter(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                        "ConfigMap", "Secret"])
    if mode == "deployment":
        expected.update(["Deployment", "Role", "RoleBinding", "Service", "PodDisruptionBudget"])
    elif mode == "cronjob":
        expected.update(["CronJob", "PersistentVolumeClaim"])
    else:
        # The hub's namespace is the chart's (no Namespace object), and RBAC is two Roles in
        # it (the checks' reads and the Lease), nothing cluster-wide.
        expected = Counter({"ServiceAccount": 1, "ConfigMap": 1, "Secret": 1, "Deployment": 1,
                            "Role": 2, "RoleBinding": 2, "Service": 2,
                            "PodDisruptionBudget": 1})
    assert kinds == expected, kinds
    for obj in objects:
        # The models are pydantic with extra="forbid": a misspelt or misplaced field, a
        # wrong type or a missing required field fails here, as the API server would.
        model_class(obj).model_validate(obj)
        if obj["kind"] != "Namespace" and model_class(obj).__name__ not in (
                "V1ClusterRole", "V1ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACES[mode], obj["metadata"]
        for subject in obj.get("subjects", []):
            assert subject["namespace"] == NAMESPACES[mode], subject


def test_a_misspelt_field_would_be_caught() -> None:
    deployment = one(render("deployment"), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = 1
    with pytest.raises(ValueError, match="readOnlyRootFS"):
        kubernetes.client.V1Deployment.model_validate(broken)


def pod_spec(mode: str) -> dict[str, Any]:
    objects = render(mode)
    if mode != "cronjob":
        return one(objects, "Deployment")["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"][  # type: ignore[no-any-return]
        "spec"]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_pods_are_hardened(mode: str) -> None:
    spec = pod_spec(mode)
    assert spec["serviceAccountName"] == "watchdogd"
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    [container] = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["image"].startswith("watchdogd:")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The only writable paths: a small /tmp and the CronJob's state volume (the
    # Deployment's state is in PostgreSQL).
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    assert writable == ({"/var/lib/watchdogd", "/tmp"} if mode == "cronjob" else {"/tmp"})
    volumes = {v["name"]: v for v in spec["volumes"]}
    secrets = volumes[mounts["/etc/watchdogd/secrets"]["name"]]
    if mode == "z2jh":
        assert {s["secret"]["name"] for s in secrets["projected"]["sources"]} == {
            "watchdogd-secrets", "hub"}
    else:
        assert secrets["secret"]["secretName"] == "watchdogd-secrets"
    config_volume = volumes[mounts["/etc/watchdogd/config"]["name"]]["configMap"]["name"]
    assert config_volume == one(render(mode), "ConfigMap")["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WATCHDOGD_CONFIG"]["value"] == "/etc/watchdogd/config/watchdogd.toml"


@pytest.mark.parametrize("mode", ["deployment", "z2jh"])
def test_the_deployment_runs_two_electing_replicas(mode: str) -> None:
    objects = render(mode)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["run"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WATCHDOGD_DAEMON__LEADER_ELECTION"]["value"] == "true"
    assert env["WATCHDOGD_DAEMON__LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.namespace"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # One shared state the pods do not own: a new leader inherits the open findings,
    # the audit log and the outbox. Required, so a missing key stops the pod from starting
    # instead of falling back to a SQLite file that dies with it.
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "state" not in volumes
    state_url = env["WATCHDOGD_STATE__URL"]["valueFrom"]["secretKeyRef"]
    assert state_url == {"name": "watchdogd-secrets", "key": "state-url"}
    # The grace period covers the running pass, so the Lease is released after it.
    config = k8s_config(objects)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= config["daemon"]["pass_timeout_s"]


def test_the_cronjob_runs_check_one_at_a_time_with_state_on_a_pvc() -> None:
    objects = render("cronjob")
    cronjob = one(objects, "CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["check"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert claim == one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    state_url = env["WATCHDOGD_STATE__URL"]["valueFrom"]["secretKeyRef"]
    assert state_url == {"name": "watchdogd-secrets", "key": "state-url", "optional": True}


def k8s_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The ConfigMap's watchdogd.toml, parsed, plus the pass timeout in seconds."""
    data = tomllib.loads(one(objects, "ConfigMap")["data"]["watchdogd.toml"])
    data.setdefault("daemon", {})
    from watchdogd.config import parse_duration

    data["daemon"]["pass_timeout_s"] = parse_duration(
        data["daemon"].get("pass_timeout", "5m")).total_seconds()
    return data


def secret_files(text: str) -> set[str]:
    """The file names under SECRETS_DIR a watchdogd.toml reads."""
    return {line.split(SECRETS_DIR, 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if SECRETS_DIR in line and not line.lstrip().startswith("#")}


def test_every_secret_file_of_the_config_is_a_key_of_the_secret() -> None:
    objects = render("cronjob")
    wanted = secret_files(one(objects, "ConfigMap")["data"]["watchdogd.toml"])
    secret = one(objects, "Secret")
    assert wanted and wanted <= set(secret["stringData"]), wanted - set(secret["stringData"])


#: z2jh's Secret ``hub`` (templates/hub/secret.yaml of the chart): the token the chart
#: generates for ``hub.services.watchdogd`` and the proxy's auth token.
Z2JH_TOKEN_KEYS = {"hub.services.watchdogd.apiToken": "api_token_file",
                   "hub.config.ConfigurableHTTPProxy.auth_token": "proxy_token_file"}


def test_z2jh_reads_the_tokens_from_the_charts_secret() -> None:
    objects = render("z2jh")
    text = one(objects, "ConfigMap")["data"]["watchdogd.toml"]
    spec = pod_spec("z2jh")
    [secrets] = [v for v in spec["volumes"] if v["name"] == "secrets"]
    files: dict[str, tuple[str, str]] = {}
    for source in secrets["projected"]["sources"]:
        for item in source["secret"]["items"]:
            assert item["path"] not in files, f"two sources project {item['path']}"
            files[item["path"]] = (source["secret"]["name"], item["key"])
    # Every file the configuration reads is projected, and nothing else is.
    assert set(files) == secret_files(text)
    ours = one(objects, "Secret")
    for name, key in files.values():
        if name == "watchdogd-secrets":
            assert key in ours["stringData"], key
    # The hub's tokens: exactly the chart's key names, each where the TOML key expects it.
    hub = tomllib.loads(text)["hubs"]["main"]
    from_chart = {key: path for path, (name, key) in files.items() if name == "hub"}
    assert set(from_chart) == set(Z2JH_TOKEN_KEYS)
    for key, toml_key in Z2JH_TOKEN_KEYS.items():
        assert hub[toml_key] == SECRETS_DIR + from_chart[key]
    # No hub database, and no copy of a token in watchdogd's own Secret.
    assert "db_url" not in hub and "db_url_file" not in hub
    assert not {k for k in ours["stringData"] if k.startswith("hub-")}


def test_z2jh_pod_carries_the_network_policy_labels() -> None:
    deployment = one(render("z2jh"), "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    # The chart's hub and proxy NetworkPolicies admit exactly these labels (string "true").
    assert labels["hub.jupyter.org/network-access-hub"] == "true"
    assert labels["hub.jupyter.org/network-access-proxy-api"] == "true"
    # The selector is the base's: the labels do not change which pods the Service, the PDB
    # or the anti-affinity select.
    assert not any(k.startswith("hub.jupyter.org/")
                   for k in deployment["spec"]["selector"]["matchLabels"])


def test_z2jh_config_aims_at_the_charts_services_in_the_pods_namespace() -> None:
    objects = render("z2jh")
    hub = tomllib.loads(one(objects, "ConfigMap")["data"]["watchdogd.toml"])["hubs"]["main"]
    assert hub["api_url"] == "http://hub:8081/hub/api"
    assert hub["proxy_api_url"] == "http://proxy-api:8001"
    assert hub["namespace"] == NAMESPACES["z2jh"]
    [container] = pod_spec("z2jh")["containers"]
    env = {e["name"]: e for e in container["env"]}
    # The hub's namespace follows the kustomization's: the pod's own.
    assert env["WATCHDOGD_HUBS__MAIN__NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.namespace"


def test_z2jh_monitoring_lives_next_to_its_service() -> None:
    result = subprocess.run([_kubectl(), "kustomize", str(MODES["z2jh"] / "monitoring")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {o["kind"] for o in objects} == {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert {o["metadata"]["namespace"] for o in objects} == {NAMESPACES["z2jh"]}
    service = named(render("z2jh"), "Service", "watchdogd-metrics")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]}


def test_z2jh_serves_the_admin_page_where_the_hub_and_its_proxy_look() -> None:
    """The chain proxy -> Service -> pod port -> [web] listen, and the hub's service entry."""
    objects = render("z2jh")
    web = tomllib.loads(one(objects, "ConfigMap")["data"]["watchdogd.toml"])["web"]
    deployment = one(objects, "Deployment")
    template = deployment["spec"]["template"]
    [container] = template["spec"]["containers"]
    ports = {p["name"]: p for p in container["ports"]}
    # The page listens on all interfaces on the pod's port `web`; /metrics keeps its own.
    host, _, port = web["listen"].rpartition(":")
    assert host == "0.0.0.0" and ports["web"]["containerPort"] == int(port)
    assert ports["metrics"]["containerPort"] != int(port)
    service = named(objects, "Service", "watchdogd-web")
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == "web"
    # It selects the Deployment's pods (and only what the Deployment's selector selects).
    selector = service["spec"]["selector"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    # Two replicas, each with its own cookie secret: the proxy must stay on one of them.
    assert deployment["spec"]["replicas"] > 1
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    # The hub registers exactly this Service (same namespace: a short name) under the
    # service name the page expects, with the token the pod projects from the Secret `hub`.
    values = yaml.safe_load((MODES["z2jh"] / "z2jh-values.yaml").read_text())
    entry = values["hub"]["services"][web["service_name"]]
    assert entry["url"] == f"http://{service['metadata']['name']}:{service_port['port']}"
    assert f"hub.services.{web['service_name']}.apiToken" in Z2JH_TOKEN_KEYS
    assert web["hub"] == "main"
    # The proxy's extra egress rule admits these pods on the pod's port (NetworkPolicy
    # sees the port after the Service's translation).
    [rule] = values["proxy"]["chp"]["networkPolicy"]["egress"]
    [to] = rule["to"]
    assert to["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert [p["port"] for p in rule["ports"]] == [ports["web"]["containerPort"]]


# -- the configuration of the ConfigMap, loaded for real, aimed at the simulator -------------


@dataclass
class World:
    sim: KubeSim
    config: Config
    config_path: Path


def dead_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def make_world(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A mode's ConfigMap config, loaded by load_config, every cluster on the simulator."""
    objects = render(mode)
    text = one(objects, "ConfigMap")["data"]["watchdogd.toml"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for key, value in one(objects, "Secret")["stringData"].items():
        (secrets / key).write_text(
            "sqlite:////nonexistent/jupyterhub.sqlite" if "db-url" in key else value)
    for key in secret_files(text) - set(one(objects, "Secret")["stringData"]):
        (secrets / key).write_text("a-token-from-another-secret\n")  # z2jh's Secret `hub`
    path = tmp_path / "watchdogd.toml"
    path.write_text(text.replace(SECRETS_DIR, f"{secrets}/"))
    raw = tomllib.loads(text)
    with KubeSim() as sim:
        kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
        dead = f"http://127.0.0.1:{dead_port()}"
        env = {"WATCHDOGD_STATE__URL": f"sqlite:///{tmp_path}/state.db"}
        for name in raw.get("clusters", {}):
            prefix = f"WATCHDOGD_CLUSTERS__{name.upper()}__"
            env |= {prefix + "IN_CLUSTER": "false", prefix + "KUBECONFIG": kubeconfig,
                    prefix + "TIMEOUT": "5s"}
        for name, hub in raw.get("hubs", {}).items():
            prefix = f"WATCHDOGD_HUBS__{name.upper()}__"
            env |= {prefix + "API_URL": f"{dead}/hub/api", prefix + "TIMEOUT": "2s"}
            if "proxy_api_url" in hub:
                env[prefix + "PROXY_API_URL"] = dead
        for name in raw.get("clouds", {}):
            prefix = f"WATCHDOGD_CLOUDS__{name.upper()}__"
            env |= {prefix + "AUTH_URL": f"{dead}/v3", prefix + "TIMEOUT": "2s"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield World(sim, load_config(path), path)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The Deployment's (and the CronJob's: they share base/) configuration."""
    with make_world("deployment", tmp_path, monkeypatch) as built:
        yield built


def test_the_z2jh_configmap_is_a_valid_api_only_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with make_world("z2jh", tmp_path, monkeypatch) as built:
        # `watchdogd config check` itself, on the file with the secret files stubbed.
        main(["config", "check", "--config", str(built.config_path)])
        assert "configuration is valid" in capsys.readouterr().out
        config = built.config
        assert config.remediation.dry_run is True
        [hub] = config.hubs.values()
        assert hub.db_url is None and hub.db_url_file is None  # API-only: no hub database
        assert hub.api_token is not None and hub.proxy_token is not None
        assert config.daemon.lease_cluster in config.clusters
        assert config.clusters[hub.cluster].in_cluster is False  # the simulator, here
        # The admin page is on, guarded by this hub's login (its api_url and token).
        assert config.web.listen == "0.0.0.0:8090"
        assert config.web.hub is not None and config.hubs[config.web.hub] is hub
        assert config.web.base_url == "/services/watchdogd/"
        sections = tomllib.loads(built.config_path.read_text()).get("checks", {})
        assert checks.section_problems(sections) == []


def test_the_configmap_is_a_valid_configuration(world: World) -> None:
    config = world.config
    assert config.remediation.dry_run is True
    assert config.daemon.lease_cluster in config.clusters
    assert config.daemon.metrics_listen == "0.0.0.0:9464"  # probed by the kubelet
    sections = tomllib.loads(world.config_path.read_text()).get("checks", {})
    assert sections
    assert checks.section_problems(sections) == []


# -- RBAC: derived from the requests the code makes -----------------------------------------


Call = tuple[str, str, str, str | None, str | None]  # group, resource, verb, namespace, name
#: Paths every authenticated user may read (system:discovery, system:public-info-viewer).
PUBLIC = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")


def classify(method: str, raw: str) -> Call | None:
    """A request as RBAC sees it; None for the discovery paths everyone may read."""
    path, _, query = raw.partition("?")
    if path.rstrip("/") in PUBLIC or path.startswith(("/openapi/",)):
        return None
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    elif parts[0] == "apis":
        return None  # group discovery
    else:
        raise AssertionError(f"unexpected non-resource request {method} {raw}")
    watch = parse_qs(query).get("watch", [""])[0] in ("true", "1")
    if rest and rest[0] == "watch":
        rest, watch = rest[1:], True
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and not (
            len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    verb = {
        "GET": "get" if name else ("watch" if watch else "list"),
        "POST": "create", "PUT": "update", "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    return group, resource, verb, namespace, name


def action_calls() -> dict[str, set[tuple[str, str]]]:
    """remediation name -> {(source, call)} for every action the registered checks can plan."""
    found: dict[str, set[tuple[str, str]]] = {}
    for planned in planned_calls():
        if planned.action is not None:
            found.setdefault(planned.action, set()).add((planned.source, planned.method))
    assert found
    return found


def derive_calls(config: Config, sim: KubeSim, tmp_path: Path, *,
                 lease_namespace: str | None) -> set[Call]:
    """Every Kubernetes API call the configured watchdogd makes, as RBAC sees it."""
    sim.reset_requests()
    # 1. Collect: one real pass of every enabled check (no notifier: nothing is sent).
    engine = Engine(config, Store(f"sqlite:///{tmp_path}/derive.db"), Sources(config),
                    notifier=None, dry_run=True)
    engine.run_pass()
    # 2. Act: each enabled remediation's adapter call, on every cluster that has one.
    sources = Sources(config)
    for name, calls in action_calls().items():
        if name not in config.remediation.enabled:
            continue
        for source, call in calls:
            for cluster in config.clusters:
                try:
                    adapter = sources.adapter(source, cluster)
                except SourceError:
                    continue  # this source is not one of a cluster (a hub, a cloud)
                method = getattr(adapter, call)
                probe = {p.name: "rbac-probe" for p in inspect.signature(method).parameters
                         .values() if p.default is inspect.Parameter.empty
                         and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
                # A 404 on the probe object is fine: the request was made and recorded.
                with contextlib.suppress(Exception):
                    method(**probe)
    # 3. Leader election (the Deployment): acquire, renew, release.
    if lease_namespace is not None:
        cluster = config.daemon.lease_cluster or next(iter(config.clusters))
        client = api_client(cluster, config.clusters[cluster])
        elector = LeaderElector(
            KubeLeaseApi(client, lease_namespace, config.daemon.lease_name, timeout=5),
            "rbac-probe", config.daemon.lease_duration.total_seconds())
        elector.step()
        elector.step()
        elector.release()
    seen = {classify(m, p) for m, p in sim.requests}
    return {c for c in seen if c is not None}


@dataclass(frozen=True)
class Rule:
    kind: str  # ClusterRole or Role
    namespace: str | None
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    names: tuple[str, ...]

    def grants(self, call: Call, group: str, resource: str, verb: str) -> bool:
        cg, cr, cv, cns, cname = call
        if (cg, cr, cv) != (group, resource, verb):
            return False
        if self.namespace is not None and cns != self.namespace:
            return False
        return not self.names or cname in self.names

    def covers(self, call: Call) -> bool:
        return any(self.grants(call, g, r, v) for g in self.groups for r in self.resources
                   for v in self.verbs)


def rules(objects: list[dict[str, Any]]) -> list[Rule]:
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"], b["metadata"].get("namespace"))
             for b in objects if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and any(s["kind"] == "ServiceAccount" and s["name"] == "watchdogd"
                     for s in b["subjects"])}
    out = []
    for role in objects:
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        namespace = role["metadata"].get("namespace") if role["kind"] == "Role" else None
        assert (role["kind"], role["metadata"]["name"], namespace) in bound, \
            f"{role['kind']} {role['metadata']['name']} is not bound to the ServiceAccount"
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"no wildcards: {rule}"
            assert not rule.get("nonResourceURLs"), rule
            out.append(Rule(role["kind"], namespace, tuple(rule["apiGroups"]),
                            tuple(rule["resources"]), tuple(rule["verbs"]),
                            tuple(rule.get("resourceNames", ()))))
    return out


def describe(call: Call) -> str:
    group, resource, verb, namespace, name = call
    where = f" in namespace {namespace}" if namespace else " (cluster scope)"
    return f"{verb} {resource}{'.' + group if group else ''}{where}" + (
        f" named {name}" if name else "")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_rbac_grants_exactly_what_the_code_calls(mode: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(mode)
    lease_namespace = None
    if mode != "cronjob":
        lease_namespace = one(objects, "Deployment")["metadata"]["namespace"]
    with make_world(mode, tmp_path, monkeypatch) as world:
        needed = derive_calls(world.config, world.sim, tmp_path,
                              lease_namespace=lease_namespace)
    assert needed, "no Kubernetes API call was made: the derivation is broken"
    granted = rules(objects)
    missing = sorted(describe(c) for c in needed if not any(r.covers(c) for r in granted))
    assert not missing, (f"{mode}: the RBAC rules lack {missing}; add them to "
                         "config/kubernetes (base/clusterrole.yaml, or the lease Role)")
    unused = sorted(
        f"{r.kind} {v} {res}{'.' + g if g else ''}" + (f" in {r.namespace}" if r.namespace else "")
        for r in granted for g in r.groups for res in r.resources for v in r.verbs
        if not any(r.grants(c, g, res, v) for c in needed))
    assert not unused, f"{mode}: the RBAC rules grant more than the code calls: {unused}"


def test_enabling_a_kube_remediation_requires_its_rule(world: World, tmp_path: Path) -> None:
    """The derivation sees action calls too: delete-pod needs delete on pods."""
    if "delete-pod" not in action_calls():
        pytest.skip("no registered check plans delete-pod")
    remediation = world.config.remediation.model_copy(update={
        "enabled": [*world.config.remediation.enabled, "delete-pod"]})
    config = world.config.model_copy(update={"remediation": remediation})
    needed = derive_calls(config, world.sim, tmp_path, lease_namespace=None)
    assert ("", "pods", "delete", "rbac-probe", "rbac-probe") in needed
    assert not any(r.covers(("", "pods", "delete", "x", "y")) for r in rules(render("cronjob")))


def test_the_simulator_agrees_with_the_rules(world: World, tmp_path: Path) -> None:
    """With a token limited to the ClusterRole's rules, no check's request is forbidden."""
    allow = {(v, res if not g else f"{res}.{g}") for r in rules(render("cronjob"))
             for g in r.groups for res in r.resources for v in r.verbs}
    world.sim.add_token("limited-token", allow)
    kubeconfig = world.sim.write_kubeconfig(tmp_path / "limited", token="limited-token")
    clusters = {name: c.model_copy(update={"kubeconfig": kubeconfig})
                for name, c in world.config.clusters.items()}
    config = world.config.model_copy(update={"clusters": clusters})
    engine = Engine(config, Store(f"sqlite:///{tmp_path}/limited.db"), Sources(config),
                    notifier=None, dry_run=True)
    report = engine.run_pass()
    errors = [c.error or "" for c in report.checks]
    # "Forbidden", not "403": a port number such as 40353 in an error is not a refusal.
    assert not [e for e in errors if "Forbidden" in e], errors


def test_classify() -> None:
    assert classify("GET", "/api/v1/namespaces/jhub/pods?labelSelector=a%3Db&limit=500") == (
        "", "pods", "list", "jhub", None)
    assert classify("GET", "/api/v1/pods?watch=true") == ("", "pods", "watch", None, None)
    assert classify("DELETE", "/api/v1/namespaces/jhub/pods/p1") == (
        "", "pods", "delete", "jhub", "p1")
    assert classify("GET", "/api/v1/namespaces/jhub") == ("", "namespaces", "get", None, "jhub")
    assert classify("PUT", "/api/v1/namespaces/jhub/finalize") == (
        "", "namespaces/finalize", "update", None, "jhub")
    assert classify("POST", "/apis/coordination.k8s.io/v1/namespaces/w/leases") == (
        "coordination.k8s.io", "leases", "create", "w", None)
    assert classify("POST", "/api/v1/namespaces/j/pods/p/eviction") == (
        "", "pods/eviction", "create", "j", "p")
    assert classify("GET", "/version") is None
    assert classify("GET", "/apis") is None


# -- the image the manifests run: Containerfile properties (the build itself is too slow
# -- for the test run; scripts/build-container.sh proves it) --------------------------------


def containerfile_stages() -> list[list[tuple[str, str]]]:
    """The Containerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    text = (REPO / "Containerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for entry in logical:
        instruction, _, args = entry.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_containerfile_final_stage_is_slim_non_root_and_read_only_friendly() -> None:
    preamble, build, final = containerfile_stages()
    assert preamble[0][0] == "ARG" and "slim" in preamble[0][1]
    assert build[0] == ("FROM", "${BASE} AS build")
    assert final[0] == ("FROM", "${BASE}")
    instructions = dict(final)
    runs = " ".join(args for inst, args in final if inst == "RUN")
    # No build tools in the final stage: no package installs, no pip, no compilers.
    for tool in ("apt-get", "apk ", "pip", "gcc", "build-essential", "make "):
        assert tool not in runs, f"final stage runs {tool}"
    assert [args for inst, args in final if inst == "COPY"] == [
        "--from=build /opt/watchdogd /opt/watchdogd"]
    # The build stage leaves no pip behind in the copied virtualenv.
    build_runs = " ".join(args for inst, args in build if inst == "RUN")
    assert "pip uninstall -y -q pip setuptools wheel" in build_runs
    assert "compileall" in build_runs  # bytecode now: nothing written at run time
    # With the admin page's extra (config/kubernetes/z2jh turns the page on), proven to import.
    assert '--no-compile ".[web]"' in build_runs
    assert "import jupyterhub.services.auth" in build_runs
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("jupyterhub") for d in extras["web"])
    # Non-root, and the same user the pods run as.
    user = instructions["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    for mode in MODES:
        assert pod_spec(mode)["securityContext"]["runAsUser"] == int(user)
    assert instructions["ENTRYPOINT"] == '["/opt/watchdogd/bin/watchdogd"]'
    assert instructions["VOLUME"] == '["/var/lib/watchdogd"]'
    assert "PYTHONDONTWRITEBYTECODE=1" in instructions["ENV"]
    port = one(render("deployment"), "Deployment")["spec"]["template"]["spec"]["containers"][
        0]["ports"][0]["containerPort"]
    assert instructions["EXPOSE"] == str(port)


def test_build_script_uses_podman_with_chroot_isolation() -> None:
    script = (REPO / "scripts" / "build-container.sh").read_text()
    assert "podman build --isolation=chroot" in script
    assert "mmdebstrap" in script and "podman import" in script
    result = subprocess.run(["bash", "-n", str(REPO / "scripts" / "build-container.sh")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
