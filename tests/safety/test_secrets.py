"""Secrets never leak: every secret is a marker, everything watchdogd says is searched for it.

The hub API token, the proxy token, the Kubernetes token, the notification URL's password
and header, the state database's password, the OpenStack application credential secret and
password are each set to a distinct marker. Passes run with remediation on while faults are
injected everywhere, including peers that echo the request's credentials back in their error
bodies (a misconfigured gateway does exactly that). Then every log line (JSON and console),
every report, every audit row, finding and notification, every recorded exception and every
output of the command line is searched for the markers (as they are, base64-encoded and
URL-quoted).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import structlog

from tests.peers.postgres import RealPostgres
from tests.safety.faults import DownFault, FileFault, HttpFault
from tests.safety.procs import check, launch
from tests.safety.receiver import Receiver
from tests.safety.sessions_world import SafeWorld, SessionsModel
from tests.safety.stats import STATS
from watchdogd import logs
from watchdogd.engine import Engine
from watchdogd.notify import Notifier
from watchdogd.sim.hub import SERVICE_SCOPES
from watchdogd.sim.parts import CloudPart
from watchdogd.sim.world import SimClock
from watchdogd.store import StoreError

PREFIX = "Zq9sEcReT"
MARKERS = {name: f"{PREFIX}-{name}-Xk7" for name in (
    "hub-token", "proxy-token", "kube-token", "notify-pass", "notify-header", "state-pass",
    "os-secret", "os-password")}


def forms(secret: str) -> list[str]:
    """How a secret could show up: as is, base64 (Basic auth), URL-quoted."""
    return [secret, PREFIX, base64.b64encode(secret.encode()).decode()[:16],
            base64.b64encode(f"watchdogd:{secret}".encode()).decode()[:20],
            quote(secret, safe="")]


def leaks(text: str) -> list[str]:
    return sorted({form for secret in MARKERS.values() for form in forms(secret)
                   if form in text})


class Capture:
    """structlog and the standard library's logging, into a buffer, as the CLI sets them up."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def configure(self, *, json_lines: bool) -> None:
        logs.configure(json_lines=json_lines, level="DEBUG", stream=self.buffer)

    def text(self) -> str:
        return self.buffer.getvalue()


@pytest.fixture
def capture() -> Iterator[Capture]:
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    cap = Capture()
    try:
        yield cap
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


def echo_credentials(sim: Any, header: str) -> None:
    """Every answer of ``sim`` becomes a 500 that quotes the request's ``header`` back."""
    from watchdogd.sim._http import Response

    real = sim.handle

    def handle(req: Any) -> Any:
        if getattr(sim, "echo", False):
            return Response.text(500, f"upstream error; request had {header}: "
                                      f"{req.headers.get(header)}")
        return real(req)

    sim.handle = handle


def echo_kube(kube: Any) -> None:
    from watchdogd.sim.kube import _Response

    real = kube._route

    def route(req: Any, ident: Any) -> Any:
        if getattr(kube, "echo", False):
            return _Response(500, json.dumps({"kind": "Status", "status": "Failure",
                                              "message": "echo: " + str(
                                                  req.headers.get("Authorization")),
                                              "code": 500}).encode())
        return real(req, ident)

    kube._route = route


def echo_keystone(sim: Any) -> None:
    from watchdogd.sim._http import Response

    real = sim.keystone.route

    def route(req: Any) -> Any:
        if getattr(sim, "echo", False) and req.method == "POST":
            return Response(500, b'{"error": {"message": "cannot parse ' + req.body[:400]
                            + b'", "code": 500}}', None, {"Content-Type": "application/json"})
        return real(req)

    sim.keystone.route = route


def marked_world(tmp_path: Path, rx: Receiver, state_url: str) -> SafeWorld:
    """A world (hub side and a cloud) whose every secret is a marker."""
    secrets = tmp_path / "marked"
    secrets.mkdir()
    state_file = secrets / "state_url"
    state_file.write_text(state_url)
    notify = (f"json://watchdogd:{MARKERS['notify-pass']}@127.0.0.1:{rx.port}/notify"
              f"?+X-Api-Key={MARKERS['notify-header']}")
    part = CloudPart()
    world = SafeWorld(tmp_path / "world", clock=SimClock(), timeout="1s", notify_url=notify,
                      parts=[part], remediation={"confirm_after": 2},
                      extra={"state": {"url_file": str(state_file)},
                             "notify": {"timeout": "0.5s", "retry_after": "1m"}})
    world.start()
    assert part.sim is not None
    hub_token = world.hub.add_token(MARKERS["hub-token"], SERVICE_SCOPES)
    world.chp.token = MARKERS["proxy-token"]
    world.kube.add_token(MARKERS["kube-token"])
    world.kube.write_kubeconfig(world.kubeconfig_path, context=world.cluster_name,
                                namespace=world.namespace, token=MARKERS["kube-token"])
    (world.secrets_dir / "hub_api_token").write_text(hub_token + "\n")
    (world.secrets_dir / "proxy_token").write_text(MARKERS["proxy-token"] + "\n")
    part.sim.add_user("watchdogd", MARKERS["os-password"], project="admin",
                      roles=("admin", "member", "reader"))
    part.sim.write_clouds_yaml(part.clouds_yaml, part.cloud, user="watchdogd",
                               password=MARKERS["os-password"])
    acid, _ = part.sim.add_application_credential("watchdogd", "watchdogd",
                                                  secret=MARKERS["os-secret"])
    (secrets / "os_secret").write_text(MARKERS["os-secret"])
    world.extra["clouds"] = {part.cloud: {
        "application_credential_id": acid,
        "application_credential_secret_file": str(secrets / "os_secret")}}
    # Rewrite the configuration with the credential, then put the markers back in place
    # (writing the configuration rewrites the world's own secret files).
    world.write_config()
    (world.secrets_dir / "hub_api_token").write_text(hub_token + "\n")
    (world.secrets_dir / "proxy_token").write_text(MARKERS["proxy-token"] + "\n")
    echo_credentials(world.hub, "Authorization")
    echo_credentials(world.chp, "Authorization")
    echo_kube(world.kube)
    echo_keystone(part.sim)
    return world


@pytest.mark.integration  # a real PostgreSQL holds the state (its password is a marker)
def test_no_secret_in_any_output(tmp_path: Path, postgres: RealPostgres,
                                 capture: Capture) -> None:
    state_url = postgres.create_database("wd_secrets").replace(
        "postgres@", f"postgres:{MARKERS['state-pass']}@")
    outputs: list[tuple[str, str]] = []
    with Receiver() as rx:
        world = marked_world(tmp_path, rx, state_url)
        try:
            model = SessionsModel(world, world.clock)  # type: ignore[arg-type]
            world.healthy(users=4, running=3)
            model.plant("stale-session")
            model.plant("orphan-pod")
            cloud = world.parts["openstack"]
            config = world.load_config()
            assert config.hubs["main"].api_token is not None
            assert config.hubs["main"].api_token.get_secret_value() == MARKERS["hub-token"]

            def engine() -> Engine:
                from watchdogd.sources import Sources
                from watchdogd.store import Store

                return Engine(config, Store(config.state.resolved_url()), Sources(config),
                              notifier=Notifier.from_config(config.notify),
                              clock=world.clock)

            hub, chp, kube = world.hub, world.chp, world.kube
            os_sim = cloud.sim  # type: ignore[attr-defined]
            scenarios: list[tuple[str, list[Any]]] = [
                ("clean", []),
                ("hub 401", [HttpFault("hubapi", hub, "401", status=401)]),
                ("proxy 403", [HttpFault("proxy", chp, "403", status=403)]),
                ("echoing peers", [_Flag(hub), _Flag(chp), _Flag(kube), _Flag(os_sim)]),
                ("everything down", [DownFault("hubapi", hub.down, hub.up),
                                     DownFault("proxy", chp.down, chp.up),
                                     DownFault("kube", kube.down, kube.up),
                                     DownFault("openstack", lambda: os_sim.down("keystone"),
                                               lambda: os_sim.up("keystone")),
                                     FileFault("hubdb", hub.db_path, "missing")]),
                ("kube 401 and hangs", [HttpFault("kube", kube, "401", path_regex=r"/pods$",
                                                  status=401),
                                        HttpFault("hubapi", hub, "hang", status=500, hang=1.5)]),
                ("receiver failing", []),
                ("clean again", []),
                ("receiver back", []),
            ]
            for index, (name, faults) in enumerate(scenarios):
                capture.configure(json_lines=index % 2 == 0)
                rx.set_mode("failing" if name == "receiver failing" else "up")
                wd = engine()
                wd.recover()
                for fault in faults:
                    fault.arm()
                try:
                    report = wd.run_pass()
                finally:
                    for fault in reversed(faults):
                        fault.disarm()
                outputs.append((f"report {name}", json.dumps(report.as_json(), default=str)))
                world.clock.advance(minutes=20)  # type: ignore[attr-defined]
                wd.store.close()
                wd.sources.close()
            # The state store fails: its error names the database, never the password.
            postgres.stop()
            try:
                wd = engine()
            except StoreError as exc:
                outputs.append(("store error at start", f"{exc} {exc!r}"))
            else:
                try:
                    wd.run_pass()
                except StoreError as exc:
                    outputs.append(("store error", f"{exc} {exc!r}"))
                else:
                    raise AssertionError("a pass without its state database completed")
            run = check(world.config_path)
            outputs.append(("check without the store", json.dumps(run.report) + run.stderr))
            assert run.code in (2, 78)
            postgres.start()
            # The command line, in new processes, with a fault or two.
            hub.fail(401, path="/users$")
            run = check(world.config_path)
            hub.clear_faults()
            outputs.append(("check --json", json.dumps(run.report) + run.stderr))
            for args in (["findings", "--json", "--all"], ["actions", "--json"],
                         ["config", "check"], ["check"]):
                proc = launch(world.config_path, *args)
                out, err = proc.communicate(timeout=120)
                outputs.append((" ".join(args), out + err))
            store = engine().store
            outputs.append(("findings", json.dumps(store.findings(status=None), default=str)))
            outputs.append(("actions", json.dumps([r.__dict__ for r in store.actions()],
                                                  default=str)))
            outputs.append(("outbox", json.dumps(store.outbox(), default=str)))
            store.close()
        finally:
            world.stop()
    outputs.append(("logs", capture.text()))
    outputs.append(("notifications", json.dumps(rx.messages)))
    assert rx.messages, "no notification was delivered: the test proves nothing"
    assert "action stop-server done" in json.dumps(rx.messages)
    assert "cannot connect" in capture.text() or "connection refused" in capture.text()
    found = []
    for where, text in outputs:
        STATS.add("secret_scans")
        hits = leaks(text)
        if hits:
            index = text.find(hits[0])
            found.append(f"{where}: {hits} in ...{text[max(0, index - 160):index + 60]}...")
    STATS.add("violations", len(found))
    assert not found, "\n".join(found)


class _Flag:
    """Sets ``sim.echo`` for a pass."""

    source = "echo"
    label = "echo"
    unstable = False
    collect_only = False

    def __init__(self, sim: Any) -> None:
        self.sim = sim

    def arm(self) -> None:
        self.sim.echo = True

    def disarm(self) -> None:
        self.sim.echo = False

    def fired(self) -> bool:
        return True
