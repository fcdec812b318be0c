"""/metrics and /healthz over real HTTP, fed by real engine passes.

A small check registered only for these tests plans actions on two targets, one of
whose source fails; the engine runs real passes (policy, store, listeners) and the
endpoint is scraped with ``requests`` and parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from watchdogd.checks import CheckSpec
from watchdogd.config import CheckConfig, Config, Inventory
from watchdogd.engine import Engine
from watchdogd.metrics import Health, InstrumentedSources, Metrics, MetricsServer, parse_listen
from watchdogd.model import (
    Action,
    CheckTarget,
    Detection,
    Finding,
    Need,
    Severity,
    Snapshot,
    SourceError,
)
from watchdogd.sim.world import SimClock
from watchdogd.store import Store


class World:
    """Items per target; an item named ``bad-*`` is a finding with a planned ``fix``."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {"t1": ["ok", "bad-a", "bad-b"], "t2": ["ok"]}
        self.broken: set[str] = {"t2"}
        self.fixed: list[str] = []


class Adapter:
    def __init__(self, world: World, target: str) -> None:
        self.world = world
        self.target = target

    def items(self) -> list[str]:
        if self.target in self.world.broken:
            raise SourceError("fake", self.target, "connection refused")
        return list(self.world.items[self.target])

    def fix(self, item: str) -> str:
        self.world.fixed.append(item)
        self.world.items[self.target].remove(item)
        return f"fixed {item}"


def _targets(_settings: CheckConfig, _inventory: Inventory) -> list[CheckTarget]:
    return [CheckTarget(t, (Need.of("items", "fake", t, "items"),)) for t in ("t1", "t2")]


def _detect(snapshot: Snapshot, now: datetime) -> Detection:
    findings = [
        Finding("probe", snapshot.target, "bad-item", item,
                Severity.CRITICAL if item == "bad-a" else Severity.WARNING, f"{item} is bad",
                action=Action("fix", "fake", snapshot.target, "fix", {"item": item}))
        for item in snapshot["items"] if item.startswith("bad-")
    ]
    return Detection(findings, len(snapshot["items"]))


PROBE = CheckSpec("probe", ("bad-item",), CheckConfig, _targets, _detect)




@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[World, Engine, Metrics, str]]:
    world = World()
    config = Config.model_validate({
        "remediation": {"dry_run": False, "confirm_after": 2, "min_age": 0,
                        "enabled": ["stop-server"]},
    })
    metrics = Metrics(Health(stuck_after=600))
    sources = InstrumentedSources(config, metrics,
                                  {"fake": lambda _c, target: Adapter(world, target)})
    # "fix" is not a configured remediation name: allow it for this test's policy.
    config = config.model_copy(update={"remediation": config.remediation.model_copy(
        update={"enabled": ["fix"]})})
    engine = Engine(config, Store(f"sqlite:///{tmp_path}/state.db"), sources,
                    registry={"probe": PROBE},
                    clock=SimClock(datetime(2026, 11, 22, 3, 0, tzinfo=UTC)))
    engine.listeners.append(metrics.observe)
    server = MetricsServer(metrics, "127.0.0.1:0")
    host, port = server.start()
    try:
        yield world, engine, metrics, f"http://{host}:{port}"
    finally:
        server.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_after_passes(setup: tuple[World, Engine, Metrics, str]) -> None:
    world, engine, _metrics, url = setup
    engine.run_pass()
    first = scrape(url)
    assert value(first, "watchdogd_passes_total", check="probe", target="t1",
                 status="findings") == 1
    assert value(first, "watchdogd_passes_total", check="probe", target="t2",
                 status="error") == 1
    assert value(first, "watchdogd_pass_duration_seconds_count", check="probe",
                 target="t1") == 1
    assert value(first, "watchdogd_findings_open", check="probe", target="t1",
                 kind="bad-item", severity="critical") == 1
    assert value(first, "watchdogd_findings_open", check="probe", target="t1",
                 kind="bad-item", severity="warning") == 1
    assert value(first, "watchdogd_actions_total", action="fix", status="unconfirmed") == 2
    assert value(first, "watchdogd_source_errors_total", source="fake", target="t2") == 1
    assert value(first, "watchdogd_last_success_timestamp_seconds", check="probe",
                 target="t1") == engine.clock().timestamp()
    # A target whose pass could not complete has no "last success".
    assert value(first, "watchdogd_last_success_timestamp_seconds", check="probe",
                 target="t2") is None
    assert value(first, "watchdogd_leader") == 1
    assert value(first, "watchdogd_healthy") == 1

    engine.run_pass()  # confirmed: both fixed
    second = scrape(url)
    assert sorted(world.fixed) == ["bad-a", "bad-b"]
    assert value(second, "watchdogd_actions_total", action="fix", status="done") == 2
    assert value(second, "watchdogd_source_errors_total", source="fake", target="t2") == 2

    engine.run_pass()  # nothing open any more: the gauges go away, the counters stay
    third = scrape(url)
    assert not [k for k in third if k[0] == "watchdogd_findings_open"]
    assert value(third, "watchdogd_passes_total", check="probe", target="t1",
                 status="ok") == 1


def test_oldest_finding_intervals_and_outbox(setup: tuple[World, Engine, Metrics, str]) -> None:
    _world, engine, metrics, url = setup
    assert metrics.health is not None
    metrics.health.expect("probe", 60)
    first_pass = engine.clock().timestamp()
    engine.run_pass()
    engine.clock.advance(minutes=1)  # type: ignore[attr-defined]
    world = _world
    world.items["t1"].append("bad-c")  # a newer warning beside the first pass's
    engine.run_pass()
    metrics.observe_outbox({"queued": 3, "delivered": 9, "set_aside": 1})
    samples = scrape(url)
    # Both findings of t1 were first seen in the first pass, the new one a minute later:
    # the oldest per severity is the first pass's time.
    assert value(samples, "watchdogd_findings_oldest_open_timestamp_seconds", check="probe",
                 target="t1", severity="warning") == first_pass
    assert value(samples, "watchdogd_findings_oldest_open_timestamp_seconds", check="probe",
                 target="t1", severity="critical") == first_pass
    assert value(samples, "watchdogd_check_interval_seconds", check="probe") == 60
    assert value(samples, "watchdogd_outbox_notices", state="queued") == 3
    assert value(samples, "watchdogd_outbox_notices", state="set_aside") == 1
    assert value(samples, "watchdogd_outbox_notices", state="delivered") is None


MONITORING = Path(__file__).resolve().parents[2] / "config" / "kubernetes" / "monitoring"


def _promql_names(text: str) -> set[str]:
    return set(re.findall(r"\bwatchdogd_[a-z_]+", text))


def test_alerts_and_dashboard_use_only_metrics_that_exist(
        setup: tuple[World, Engine, Metrics, str]) -> None:
    """A rule or panel on a misspelt metric is silent for ever: hold them to a real scrape."""
    _world, engine, metrics, url = setup
    assert metrics.health is not None
    metrics.health.expect("probe", 60)
    engine.run_pass()
    engine.run_pass()
    metrics.observe_outbox({"queued": 0, "delivered": 0, "set_aside": 0})
    exported = {name for name, _labels in scrape(url)}
    rules = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    expressions = [rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "dashboards" / "watchdogd.json").read_text())
    expressions += [target["expr"] for panel in dashboard["panels"]
                    for target in panel["targets"]]
    used = set().union(*(_promql_names(e) for e in expressions))
    assert used, "no watchdogd metric found in the rules and panels"
    assert not used - exported, f"not exported: {sorted(used - exported)}"
    # The alerts the issue names are all there.
    names = {rule["alert"] for group in rules["spec"]["groups"] for rule in group["rules"]}
    assert {"WatchdogdAbsent", "WatchdogdNoSuccessfulPass", "WatchdogdSourceErrors",
            "WatchdogdCriticalFinding", "WatchdogdActionsNotDone",
            "WatchdogdLeaderNotOne"} <= names


def test_an_incomplete_pass_keeps_the_last_open_findings(
        setup: tuple[World, Engine, Metrics, str]) -> None:
    world, engine, _metrics, url = setup
    engine.run_pass()
    world.broken = {"t1", "t2"}
    engine.run_pass()
    samples = scrape(url)
    # Nothing is known about t1 now; like the store, the metrics resolve nothing.
    assert value(samples, "watchdogd_findings_open", check="probe", target="t1",
                 kind="bad-item", severity="critical") == 1
    assert value(samples, "watchdogd_source_errors_total", source="fake", target="t1") == 1


def test_check_failing_is_an_open_finding_of_a_target_in_error(
        setup: tuple[World, Engine, Metrics, str]) -> None:
    world, engine, _metrics, url = setup
    engine.run_pass()
    world.broken = {"t1", "t2"}
    clock = engine.clock
    assert isinstance(clock, SimClock)
    for _ in range(3):
        clock.advance(minutes=5)
        engine.run_pass()
    samples = scrape(url)
    # t2 has never completed, t1 has failed three passes over ten minutes: both page now, and
    # t1's last open findings are kept beside its check-failing.
    for target in ("t1", "t2"):
        assert value(samples, "watchdogd_findings_open", check="probe", target=target,
                     kind="check-failing", severity="warning") == 1, target
    assert value(samples, "watchdogd_findings_open", check="probe", target="t1",
                 kind="bad-item", severity="critical") == 1
    world.broken = set()
    engine.run_pass()
    samples = scrape(url)
    assert not [k for k in samples if k[0] == "watchdogd_findings_open"
                and ("kind", "check-failing") in k[1]]


def test_openmetrics_when_asked(setup: tuple[World, Engine, Metrics, str]) -> None:
    _world, engine, _metrics, url = setup
    engine.run_pass()
    response = requests.get(f"{url}/metrics", timeout=10,
                            headers={"Accept": "application/openmetrics-text"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_unknown_path_is_404(setup: tuple[World, Engine, Metrics, str]) -> None:
    assert requests.get(f"{setup[3]}/", timeout=10).status_code == 404


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthz_turns_unhealthy_when_passes_stop_completing() -> None:
    clock = Monotonic()
    health = Health(stuck_after=600, clock=clock)
    health.expect("sessions", 60)
    health.expect("certs", 6 * 3600)
    server = MetricsServer(Metrics(health), "127.0.0.1:0")
    host, port = server.start()
    url = f"http://{host}:{port}/healthz"
    try:
        assert requests.get(url, timeout=10).status_code == 200
        health.pass_started("sessions")
        clock.now += 5
        health.pass_finished("sessions", True)
        clock.now += 3 * 60  # exactly three intervals since the last completed pass
        assert requests.get(url, timeout=10).status_code == 200
        clock.now += 1
        response = requests.get(url, timeout=10)
        assert response.status_code == 503
        assert "sessions: no pass completed in 3m01s" in response.text
        assert "certs" not in response.text  # 6 h interval: 18 h before it is stale
        # Passes that start and fail do not count as completing.
        health.pass_started("sessions")
        health.pass_finished("sessions", False)
        assert requests.get(url, timeout=10).status_code == 503
        assert not health.alive()
        health.pass_started("sessions")
        health.pass_finished("sessions", True)
        assert requests.get(url, timeout=10).status_code == 200
        assert health.alive()
        metrics_text = requests.get(f"http://{host}:{port}/metrics", timeout=10).text
        assert "watchdogd_healthy 1.0" in metrics_text
    finally:
        server.stop()


def test_a_stuck_pass_is_unhealthy() -> None:
    clock = Monotonic()
    health = Health(stuck_after=600, clock=clock)
    health.expect("sessions", 3600)
    health.pass_started("sessions")
    clock.now += 601
    assert health.problems() == ["sessions: a pass has been running for 10m01s"]
    assert not health.alive()


def test_never_completed_since_start() -> None:
    clock = Monotonic()
    health = Health(stuck_after=600, clock=clock)
    health.expect("sessions", 60)
    clock.now += 181
    assert health.problems() == [
        "sessions: no pass completed since start 3m01s (3 intervals are 3m00s)"]


def test_leader_gauge_follows_the_gate(tmp_path: Path) -> None:
    leading = [False]
    metrics = Metrics(leader=lambda: leading[0])
    body, _ = metrics.exposition()
    assert b"watchdogd_leader 0.0" in body
    leading[0] = True
    assert b"watchdogd_leader 1.0" in metrics.exposition()[0]


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("127.0.0.1", 9464)  # localhost unless configured
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("9464", "host:", "host:99999", "host:http"):
        with pytest.raises(ValueError, match="metrics_listen"):
            parse_listen(bad)
    assert Config().daemon.metrics_listen == "127.0.0.1:9464"


def test_ipv6_loopback() -> None:
    server = MetricsServer(Metrics(), "[::1]:0")
    try:
        host, port = server.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert requests.get(f"http://[{host}]:{port}/healthz", timeout=10).text == "ok\n"
    finally:
        server.stop()


def test_precondition_failures_are_not_source_errors(tmp_path: Path) -> None:
    from watchdogd.model import PreconditionFailed

    class Gone:
        def act(self) -> str:
            raise PreconditionFailed("already gone")

        def read(self) -> str:
            raise SourceError("fake", "t", "refused")

    metrics = Metrics()
    sources = InstrumentedSources(Config(), metrics, {"fake": lambda _c, _t: Gone()})
    adapter = sources.adapter("fake", "t")
    with pytest.raises(PreconditionFailed):
        adapter.act()
    with pytest.raises(SourceError):
        adapter.read()
    with pytest.raises(SourceError):
        sources.adapter("missing", "t")  # not configured: counted too
    body = metrics.exposition()[0].decode()
    assert 'watchdogd_source_errors_total{source="fake",target="t"} 1.0' in body
    assert 'watchdogd_source_errors_total{source="missing",target="t"} 1.0' in body


def test_durations_are_observed(setup: tuple[World, Engine, Metrics, str]) -> None:
    _world, engine, metrics, _url = setup
    engine.run_pass()
    engine.clock.now += timedelta(minutes=1)  # type: ignore[attr-defined]
    engine.run_pass()
    body = metrics.exposition()[0].decode()
    assert 'watchdogd_pass_duration_seconds_count{check="probe",target="t1"} 2.0' in body


def run_daemon(tmp_path: Path, daemon: str) -> subprocess.CompletedProcess[str]:
    """``watchdogd run`` in a new process with a config whose [daemon] is ``daemon``."""
    config = tmp_path / "watchdogd.toml"
    config.write_text(f"[state]\n[daemon]\n{daemon}\n"
                      '[clusters.c]\nkubeconfig = "/nonexistent"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
    env["WATCHDOGD_STATE__URL"] = f"sqlite:///{tmp_path}/state.db"
    return subprocess.run([sys.executable, "-m", "watchdogd", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_a_metrics_port_in_use_is_a_configuration_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_daemon(tmp_path, f'metrics_listen = "127.0.0.1:{port}"')
    assert result.returncode == 78, result.stderr
    assert "daemon.metrics_listen" in result.stderr


def test_an_invalid_metrics_address_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_daemon(tmp_path, 'metrics_listen = "localhost"')
    assert result.returncode == 78
    assert "daemon.metrics_listen: expected host:port" in result.stderr
