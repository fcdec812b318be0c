"""The Prometheus Operator pieces: they render, select the daemon, and their alerts behave.

``config/kubernetes/monitoring`` holds a ServiceMonitor, a PrometheusRule and a Grafana
dashboard ConfigMap. The alerts are run through ``promtool test rules`` on series that
should and should not fire each one (``tests/data/prometheus/rules_test.yaml``);
``tests/unit/test_metrics.py`` holds the rules and panels to metrics that exist.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "config" / "kubernetes" / "monitoring"
DATA = REPO / "tests" / "data" / "prometheus"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("WATCHDOGD_REQUIRE_PEERS"):
            pytest.fail(f"{name} is not installed (scripts/setup-test-peers.sh installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def _render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([_tool("kubectl"), "kustomize", str(path)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_monitoring_renders_and_selects_the_daemons_service() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _render(MONITORING)}
    assert set(objects) == {("ServiceMonitor", "watchdogd"), ("PrometheusRule", "watchdogd"),
                            ("ConfigMap", "watchdogd-dashboard")}
    dashboard = objects[("ConfigMap", "watchdogd-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["watchdogd.json"])["uid"] == "watchdogd"
    monitor = objects[("ServiceMonitor", "watchdogd")]
    assert monitor["metadata"]["namespace"] == "watchdogd"

    services = [o for o in _render(REPO / "config" / "kubernetes" / "deployment")
                if o["kind"] == "Service"]
    selected = [s for s in services
                if monitor["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["watchdogd-metrics"]
    ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(DATA / "rules_test.yaml", tmp_path / "rules_test.yaml")
    checked = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "rules_test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a case of its own in the promtool tests.
    cases = yaml.safe_load((DATA / "rules_test.yaml").read_text())["tests"]
    tested_alerts = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts == tested_alerts
