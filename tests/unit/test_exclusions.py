"""Exclusions: subjects no action may touch, whatever the check; still reported.

``[exclusions]`` names users, server names and namespaces (patterns), volume ids and
volume metadata; a pod or claim annotated ``watchdogd.io/ignore: "true"`` is exempt too.
Judged by the policy on each action's parameters and on what its check says it touches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_engine import T0, Adapter, FakeWorld, make_config
from watchdogd.app import load_config
from watchdogd.checks import REGISTRY
from watchdogd.config import ConfigError, ExclusionsConfig
from watchdogd.engine import Engine
from watchdogd.model import Action
from watchdogd.policy import exclusion
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.store import Store

RULES = ExclusionsConfig(users=["test-*", "root"], server_names=["keep"],
                         namespaces=["kube-system"], volume_ids=["v-keep"],
                         volume_metadata={"backup": "precious"})


def action(about: dict[str, Any] | None = None, **params: Any) -> Action:
    return Action("x", "src", "t", "call", params, about=about or {})


@pytest.mark.parametrize(("act", "reason"), [
    (action(user="test-42"), "user 'test-42' is excluded (exclusions.users)"),
    (action(user="alice", server_name="keep"),
     "server name 'keep' is excluded (exclusions.server_names)"),
    (action(namespace="kube-system", name="p"),
     "namespace 'kube-system' is excluded (exclusions.namespaces)"),
    (action(volume_id="v-keep"), "volume v-keep is excluded (exclusions.volume_ids)"),
    (action({"volume_metadata": {"backup": "precious"}}, volume_id="v1"),
     "volume metadata backup=precious is excluded (exclusions.volume_metadata)"),
    (action({"annotations": {"watchdogd.io/ignore": "True"}}, namespace="jhub"),
     'annotated watchdogd.io/ignore: "true"'),
    (action(user="alice"), None),
    (action(user="Test-42"), None),  # patterns are case-sensitive, as names are
    (action({"annotations": {"watchdogd.io/ignore": "false"}}, namespace="jhub"), None),
    (action({"volume_metadata": {"backup": "daily"}}, volume_id="v1"), None),
    (action(), None),
])
def test_exclusion_rules(act: Action, reason: str | None) -> None:
    assert exclusion(act, RULES) == reason


def engine_for(tmp_path: Path, world: FakeWorld, rules: ExclusionsConfig) -> Engine:
    config = make_config(tmp_path, enabled=["stop-server", "delete-pod"])
    config = config.model_copy(update={"exclusions": rules})
    factories = {n: (lambda _c, _n: Adapter(world)) for n in ("hubdb", "hubapi", "proxy", "kube")}
    return Engine(config, Store(config.state.resolved_url()), Sources(config, factories),
                  clock=SimClock(T0), registry={"sessions": REGISTRY["sessions"]})


def entries(engine: Engine) -> dict[str, dict[str, Any]]:
    report = engine.run_pass().as_json()
    return {f["subject"]: f for c in report["checks"] for f in c["findings"]}


def test_excluded_subjects_are_reported_and_never_acted_on(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)        # stale: stop-server
    world.add("test-7", pod=False)       # stale, but an excluded user
    world.users.append("carol")          # not running, yet her pod runs: orphan-pod
    world.pods.append({"metadata": {
        "name": "jupyter-carol", "namespace": "jhub", "uid": "u-carol",
        "annotations": {"hub.jupyter.org/username": "carol", "watchdogd.io/ignore": "true"}},
        "status": {"phase": "Running"}})
    engine = engine_for(tmp_path, world, ExclusionsConfig(users=["test-*"]))
    engine.run_pass()
    found = entries(engine)  # confirmed now
    assert found["alice"]["action"]["status"] == "done"
    assert found["test-7"]["action"]["status"] == "excluded"
    assert "user 'test-7' is excluded (exclusions.users)" in found["test-7"]["action"]["detail"]
    assert found["carol"]["kind"] == "orphan-pod"
    assert found["carol"]["action"]["status"] == "excluded"
    assert "watchdogd.io/ignore" in found["carol"]["action"]["detail"]
    acted = [(name, params.get("user") or params.get("name")) for name, params in world.calls]
    assert acted == [("stop_server", "alice")]


def test_unknown_exclusion_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "watchdogd.toml"
    path.write_text('[exclusions]\nusers = ["a"]\nvolumes = ["v"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.startswith("exclusions.volumes") for p in info.value.problems), \
        info.value.problems
