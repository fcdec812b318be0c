"""Hostile names, secrets in pods, and passwords with "@" through every output.

Any project member names a Cinder volume, any user a server. Names with NUL, ANSI escape
sequences, bidi overrides and newlines that forge a report line go through the real
sources into a PostgreSQL state store (which cannot hold NUL), the text report, the
``findings`` and ``actions`` commands, the logs and the notifications. A pod whose env
holds the hub's API token is deleted, and the audit log must not keep it. A hub database
password with an unescaped "@" must not reach any message in part.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.peers.postgres import RealPostgres
from tests.safety.procs import check, launch
from tests.safety.receiver import Receiver
from tests.safety.sessions_world import SafeWorld
from tests.safety.stats import STATS
from watchdogd.sim.parts import CloudPart

#: what must never reach an operator's terminal, a log or a notification raw
CONTROLS = ("\x1b", "\x00", "\x07", "\u202e", "\r")
EVIL_VOLUME = "pvc-evil\x00\x1b]0;pwned\x07\x1b[2J\nsummary: 0 finding(s)\u202e"
EVIL_USER = "mallory\x1b[31m"


def run(config: Path, *args: str) -> tuple[int, str, str]:
    proc = launch(config, *args)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def raw_controls(text: str) -> list[str]:
    return [c for c in CONTROLS if c in text]


def test_hostile_names_reach_no_output_raw_and_block_nothing(
        tmp_path: Path, postgres: RealPostgres) -> None:
    state_url = postgres.create_database("wd_hostile_names")
    (tmp_path / "state-url").write_text(state_url)
    part = CloudPart()
    with Receiver() as rx, SafeWorld(tmp_path / "world", timeout="5s", notify_url=rx.url,
                                     parts=[part],
                                     extra={"state": {"url_file": str(tmp_path / "state-url")},
                                            "notify": {"retry_after": "0.01s"}}) as world:
        world.healthy(users=4, running=3)
        assert part.sim is not None
        part.sim.inject_orphan_volume(EVIL_VOLUME)
        world.stale_session(EVIL_USER)
        world.write_config()
        outputs: list[str] = []
        for _ in range(3):
            code, out, err = run(world.config_path, "check")
            assert code in (0, 1), err[-3000:]  # never 2 (store) or 70 (a bug)
            outputs += [out, err]
        lines = outputs[-2].splitlines()
        assert sum(line.lstrip().startswith("summary:") for line in lines) == 1, outputs[-2]
        assert "pvc-evil\\x00\\x1b]0;pwned\\x07\\x1b[2J\\nsummary" in outputs[-2]
        for command in (("findings", "--all"), ("actions",), ("findings", "--json")):
            code, out, err = run(world.config_path, *command)
            assert code == 0, err
            outputs += [out, err]
        # The user's stale session was repaired all the same, and its notice went out.
        assert not world.hub.is_running(EVIL_USER)
        titles = [m["title"] + "\n" + m["message"] for m in rx.messages]
        assert any("mallory\\x1b[31m" in t for t in titles), titles
        for text in [*outputs, *titles]:
            assert raw_controls(text) == [], text[:2000]
        STATS.add("secret_scans", len(outputs) + len(titles))


def test_a_pod_with_secrets_in_its_env_leaves_none_in_the_audit_log(tmp_path: Path) -> None:
    marker = "TkN-hostile-pod-token-4471"
    with SafeWorld(tmp_path / "world", timeout="5s") as world:
        world.healthy(users=4, running=3)
        world.orphan_pod("olga")
        pods = [p for p in world.kube.list("Pod", world.namespace)
                if "olga" in p["metadata"]["name"]]
        [pod] = pods
        pod["spec"]["containers"][0]["env"] = [
            {"name": "JUPYTERHUB_API_TOKEN", "value": marker},
            {"name": "JPY_API_TOKEN", "value": marker}]
        pod["spec"]["containers"][0]["args"] = ["--token", marker]
        pod["metadata"].setdefault("annotations", {})["example.org/api-token"] = marker
        pod["metadata"].pop("resourceVersion", None)
        world.kube.put(pod)
        runs = [check(world.config_path) for _ in range(3)]
        assert all(r.code in (0, 1) for r in runs), [r.stderr for r in runs]
        code, out, err = run(world.config_path, "actions", "--json")
        assert code == 0, err
        rows = json.loads(out)
        [delete] = [r for r in rows if r["name"] == "delete-pod"]
        assert delete["status"] == "done"
        image = delete["before"]["pod"]
        assert image["metadata"]["name"] == pod["metadata"]["name"]
        assert image["spec"]["containers"][0]["env_names"] == ["JPY_API_TOKEN",
                                                               "JUPYTERHUB_API_TOKEN"]
        for text in [out, err, *(json.dumps(r.report) + r.stderr for r in runs)]:
            assert marker not in text
        assert marker.encode() not in world.state_path.read_bytes()
        assert world.state_path.stat().st_mode & 0o077 == 0
        STATS.add("secret_scans", 3 + len(runs))


def test_a_password_with_an_at_sign_never_shows_in_part(tmp_path: Path) -> None:
    password = "p@ssWd-Mk9/x:y"
    fragments = ("ssWd-Mk9", "p@ss", "Mk9/x", "x:y")
    with SafeWorld(tmp_path / "world", timeout="2s") as world:
        world.healthy(users=2, running=1)
        url_file = tmp_path / "hub-db-url"
        url_file.write_text(f"postgresql://hub:{password}@127.0.0.1:1/jupyterhub\n")
        world.extra = {"hubs": {"main": {"db_url_file": str(url_file)}}}
        world.write_config()
        run_ = check(world.config_path, "--only", "sessions")
        assert run_.code == 2, run_.stderr  # the hub database cannot be reached
        [result] = run_.report["checks"]
        assert "hubdb" in result["error"]
        text = json.dumps(run_.report) + run_.stderr
        assert [f for f in fragments if f in text] == [], result["error"]
        STATS.add("secret_scans")


