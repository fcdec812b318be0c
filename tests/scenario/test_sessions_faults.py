"""Every source failure of the sessions check, end to end through `watchdogd check`.

Each fault must give status `error` for the hub, zero actions (the stale session
planted beside it stays untouched), exit code 2, and a one-line message that says
what failed and where, without any secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdogd.sim.world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with World(tmp_path / "world", sessions={}, remediation={"confirm_after": 1}) as w:
        w.healthy(users=6, running=4)
        w.stale_session("stella")
        yield w


def check(world: World, *args: str,
          env: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | None, str]:
    result = subprocess.run(
        [sys.executable, "-m", "watchdogd", "check", "--only", "sessions", "--json",
         "--config", str(world.config_path), *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})})
    report = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, report, result.stderr


def secrets_of(world: World) -> list[str]:
    return [p.read_text().strip() for p in world.secrets_dir.iterdir() if p.is_file()]


def assert_error_and_untouched(world: World, expected: str,
                               env: dict[str, str] | None = None) -> None:
    code, report, stderr = check(world, env=env)
    assert code == 2, stderr
    assert report is not None
    [result] = report["checks"]
    assert result["status"] == "error"
    assert result["findings"] == []
    assert expected in result["error"], result["error"]
    assert "\n" not in result["error"]
    assert report["summary"]["actions_done"] == 0
    assert world.hub.is_running("stella")  # nothing was stopped
    for secret in secrets_of(world):
        assert secret not in json.dumps(report)
        assert secret not in stderr


Fault = Callable[[World], object]

FAULTS: dict[str, tuple[Fault, str]] = {
    "kube down": (lambda w: w.kube.down(), "kube sim: list pods in namespace jhub"),
    "kube 500": (lambda w: w.kube.fail(r"/pods$", status=500), "HTTP 500"),
    "kube hang": (lambda w: w.kube.fail(r"/pods$", hang=30), "no answer within 5s"),
    "kube 410 halfway": (lambda w: w.kube.expire_continue_after(1), "410 Gone"),
    "hub api 503": (lambda w: w.hub.fail(503, path="/users"), "hubapi main: GET /hub/api/users"),
    "hub api down": (lambda w: w.hub.down(), "hubapi main: GET /hub/api/users: cannot connect"),
    "proxy 500": (lambda w: w.chp.fail(500), "proxy main: GET /api/routes: HTTP 500"),
    "hub db unreachable": (lambda w: w.hub.db_path.rename(w.hub.db_path.with_suffix(".gone")),
                           "hubdb main: unable to open database file"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_means_error_no_action_exit_2(world: World, fault: str) -> None:
    inject, expected = FAULTS[fault]
    inject(world)
    # Small pages, so that the pod list really is paginated.
    assert_error_and_untouched(world, expected, env={"WATCHDOGD_CLUSTERS__SIM__PAGE_SIZE": "2"})


def test_bad_hub_token(world: World) -> None:
    (world.secrets_dir / "hub_api_token").write_text("not-the-token\n")
    assert_error_and_untouched(world, "the API token of hub main (hubs.main.api_token_file) "
                                      "is wrong or expired")


def test_bad_proxy_token(world: World) -> None:
    (world.secrets_dir / "proxy_token").write_text("not-the-token\n")
    assert_error_and_untouched(world, "the proxy token of hub main")


def test_bad_kube_token(world: World) -> None:
    world.kube.write_kubeconfig(world.kubeconfig_path, token="not-the-token")
    assert_error_and_untouched(world, "401 Unauthorized: the credentials of cluster sim")


def test_no_running_hub_pod_is_implausible(world: World) -> None:
    # A pod list without a running hub pod cannot be the cluster the hub runs in.
    assert world.hub.hub_pod is not None
    pod = world.kube.get("Pod", world.hub.hub_pod, "jhub")
    assert pod is not None
    pod["status"]["phase"] = "Pending"
    world.kube.put(pod)
    assert_error_and_untouched(world, "no single running hub pod")


def test_without_faults_the_same_world_is_repaired(world: World) -> None:
    code, report, stderr = check(world)
    assert code == 0, stderr
    assert report is not None
    [finding] = report["checks"][0]["findings"]
    assert (finding["kind"], finding["action"]["status"]) == ("stale-session", "done")
    assert not world.hub.is_running("stella")
