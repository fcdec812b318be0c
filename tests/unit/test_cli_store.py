"""`watchdogd findings` and `watchdogd actions` read the state store a pass wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_engine import FakeWorld, make_engine
from watchdogd.cli import main


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("WATCHDOGD_CONFIG",):
        monkeypatch.delenv(key, raising=False)
    world = FakeWorld()
    world.add("alice", pod=False)
    world.add("bob", route=False)
    engine = make_engine(tmp_path, world, confirm_after=1)
    engine.run_pass()
    path = tmp_path / "watchdogd.toml"
    path.write_text('[state]\nurl_file = "state-url"\n')
    (tmp_path / "state-url").write_text(f"sqlite:///{tmp_path}/state.db\n")
    return path


def test_findings_table_and_json(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["findings", "--config", str(config_file)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["SEVERITY", "KIND", "SUBJECT", "TARGET", "SEEN", "FIRST",
                                "SEEN", "STATUS"]
    assert any("stale-session" in line and "alice" in line for line in table)
    main(["findings", "--config", str(config_file), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {(r["kind"], r["subject"], r["status"]) for r in rows} == {
        ("stale-session", "alice", "open"), ("missing-route", "bob", "open")}


def test_actions_audit_log(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["actions", "--config", str(config_file), "--json"])
    records = json.loads(capsys.readouterr().out)
    assert sorted((r["name"], r["status"]) for r in records) == [
        ("stop-server", "done"), ("sync-routes", "done")]
    assert all(r["finished_at"] for r in records)
    main(["actions", "--config", str(config_file)])
    assert "stop-server" in capsys.readouterr().out


def test_missing_state_directory_is_a_config_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.toml"
    path.write_text('[state]\nurl_file = "u"\n')
    (tmp_path / "u").write_text(f"sqlite:///{tmp_path}/missing/state.db")
    with pytest.raises(SystemExit) as info:
        main(["findings", "--config", str(path)])
    assert info.value.code == 78
    assert "does not exist" in capsys.readouterr().err
