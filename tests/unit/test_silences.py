"""Silences and acknowledgements: what the operator said, applied by the engine.

A silenced finding is tracked and reported (with the silence in the report), never
notified, and acted on only when its silence allows it; when the silence ends, a finding
that is still open is announced then. An acknowledgement stops reminders until the
finding escalates or resolves. The world is the engine test's plain-data hub; the
notices are read from the outbox, where the engine puts everything it means to send.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_engine import T0, Adapter, FakeWorld, make_config
from watchdogd.checks import REGISTRY
from watchdogd.cli import main
from watchdogd.config import NotifyConfig
from watchdogd.engine import Engine
from watchdogd.model import Severity, Silence
from watchdogd.notify import Notifier
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.store import Store

KEY = "sessions/main/stale-session/alice"


def engine_for(tmp_path: Path, world: FakeWorld, clock: SimClock, **remediation: Any) -> Engine:
    config = make_config(tmp_path, **remediation)
    urls_file = tmp_path / "apprise.txt"
    urls_file.write_text("json://127.0.0.1:9/nobody-listens\n")
    config = config.model_copy(update={"notify": NotifyConfig(
        urls_file=str(urls_file), repeat_after=timedelta(hours=1))})
    factories = {n: (lambda _c, _n: Adapter(world)) for n in ("hubdb", "hubapi", "proxy", "kube")}
    return Engine(config, Store(config.state.resolved_url()), Sources(config, factories),
                  notifier=Notifier.from_config(config.notify), clock=clock,
                  registry={"sessions": REGISTRY["sessions"]})


def events(engine: Engine, key: str = KEY) -> list[str]:
    return [r["event"] for r in engine.store.outbox() if r["finding_key"] == key]


def stopped(world: FakeWorld) -> list[str]:
    return [c[1]["user"] for c in world.calls if c[0] == "stop_server"]


def report_entry(engine: Engine, key: str = KEY) -> dict[str, Any]:
    report = engine.run_pass().as_json()
    [entry] = [f for c in report["checks"] for f in c["findings"] if f["key"] == key]
    return entry


def test_silence_matching() -> None:
    silence = Silence(1, "upgrade", "ana", T0, T0 + timedelta(hours=1), kind="stale-session",
                      subject="al*")
    assert silence.matches("sessions", "main", "stale-session", "alice")
    assert not silence.matches("sessions", "main", "stale-session", "bob")
    assert not silence.matches("sessions", "main", "orphan-pod", "alice")
    assert not silence.matches("sessions", "main", "stale-session", "ALICE")  # case counts
    assert silence.active(T0) and not silence.active(T0 + timedelta(hours=1))


def test_silenced_finding_is_reported_not_notified_not_acted_then_announced(
        tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)  # a stale session: stop-server once confirmed
    clock = SimClock(T0)
    engine = engine_for(tmp_path, world, clock)
    silence = engine.store.add_silence(reason="hub upgrade tonight", created_by="ana", now=T0,
                                       expires_at=T0 + timedelta(hours=2), kind="stale-session")
    first = report_entry(engine)
    clock.advance(minutes=5)
    second = report_entry(engine)
    # Tracked and reported as usual, with its silence; confirmed, yet no action and no notice.
    assert second["sightings"] == 2
    assert second["silenced"] == {"id": silence.id, "window": None,
                                  "until": "2026-11-22T05:00:00Z",
                                  "by": "ana", "reason": "hub upgrade tonight",
                                  "allow_actions": False}
    assert second["action"]["status"] == "silenced"
    assert "hub upgrade tonight" in second["action"]["detail"]
    assert first["action"]["status"] == "silenced"
    assert stopped(world) == [] and events(engine) == []

    # The silence ends: the finding, still open, is announced and acted on now.
    engine.store.expire_silence(silence.id, "ana", clock())
    clock.advance(minutes=5)
    third = report_entry(engine)
    assert third["silenced"] is None
    assert third["action"]["status"] == "done"
    assert stopped(world) == ["alice"]
    assert events(engine)[0] == "new"


def test_silence_may_allow_actions_and_its_resolution_is_not_notified(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    engine = engine_for(tmp_path, world, clock)
    engine.store.add_silence(reason="known, let it fix itself", created_by="ana", now=T0,
                             expires_at=T0 + timedelta(days=1), subject="alice",
                             allow_actions=True)
    engine.run_pass()
    clock.advance(minutes=5)
    assert report_entry(engine)["action"]["status"] == "done"
    assert stopped(world) == ["alice"]
    clock.advance(minutes=5)
    report = engine.run_pass().as_json()
    assert KEY in [k for c in report["checks"] for k in c["resolved"]]
    # Neither the finding, its action, nor its resolution went to the outbox.
    assert events(engine) == []


def test_a_silence_covers_only_its_matches_and_expires_by_time(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    world.add("bob", pod=False)
    clock = SimClock(T0)
    engine = engine_for(tmp_path, world, clock)
    engine.store.add_silence(reason="alice is testing", created_by="ana", now=T0,
                             expires_at=T0 + timedelta(minutes=7), subject="alice")
    engine.run_pass()
    clock.advance(minutes=5)
    engine.run_pass()
    assert stopped(world) == ["bob"]
    assert events(engine, "sessions/main/stale-session/bob")[0] == "new"
    assert events(engine) == []
    clock.advance(minutes=5)  # past the silence's end
    engine.run_pass()
    assert stopped(world) == ["bob", "alice"]
    assert events(engine)[0] == "new"


def test_ack_stops_reminders_until_escalation_or_resolution(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    engine = engine_for(tmp_path, world, clock, enabled=[])  # report only: it stays open
    engine.run_pass()
    clock.advance(minutes=5)
    engine.run_pass()
    assert events(engine) == ["new"]
    with pytest.raises(KeyError):
        engine.store.ack("sessions/main/stale-session/nobody", "ana", clock())
    assert engine.store.ack(KEY, "ana", clock()) is Severity.CRITICAL
    clock.advance(hours=2)  # a reminder would be due (repeat_after = 1h)
    entry = report_entry(engine)
    assert entry["acked"] is True
    assert events(engine) == ["new"]
    # Resolved: the notice goes out and the acknowledgement ends with it.
    world.pods.append({"metadata": {"name": "jupyter-alice", "namespace": "jhub", "uid": "a2",
                                    "annotations": {"hub.jupyter.org/username": "alice"}},
                       "status": {"phase": "Running"}})
    clock.advance(minutes=5)
    engine.run_pass()
    assert events(engine) == ["new", "resolved"]
    assert engine.store.acks() == {}


def test_without_ack_the_reminder_is_sent(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    engine = engine_for(tmp_path, world, clock, enabled=[])
    engine.run_pass()
    clock.advance(minutes=5)
    engine.run_pass()
    clock.advance(hours=2)
    engine.run_pass()
    assert events(engine) == ["new", "reminder"]


def test_cli_silence_add_list_expire_and_ack(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    engine = engine_for(tmp_path, world, SimClock(T0), enabled=[])
    engine.run_pass()
    config = tmp_path / "watchdogd.toml"
    config.write_text('[state]\nurl_file = "state_url"\n')
    (tmp_path / "state_url").write_text(f"sqlite:///{tmp_path}/state.db\n")

    def run(*args: str) -> tuple[int, str]:
        words = list(args)
        words.insert(2 if words[0] == "silence" else 1, f"--config={config}")
        try:
            main(words)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out + out.err

    code, out = run("silence", "add", "--kind", "stale-session", "--subject", "al*", "--for",
                    "2h", "--reason", "maintenance", "--by", "ana")
    assert code == 0, out
    assert out.startswith("silence 1 added until ")
    out = run("silence", "list")[1]
    assert "stale-session" in out and "al*" in out and "ana" in out and "active" in out
    assert run("silence", "expire", "1", "--by", "bo") == (0, "silence 1 expired\n")
    code, out = run("silence", "expire", "1")
    assert code == 0 and "had already ended" in out
    assert "expired by bo" in run("silence", "list", "--all")[1]
    assert run("silence", "list") == (0, "no silences\n")

    # Bad input: one line naming what is wrong, exit 64, nothing written.
    for args, expected in [
            (("silence", "add", "--for", "2h", "--reason", "x"), "at least one of --check"),
            (("silence", "add", "--kind", "k", "--reason", "x"), "exactly one of --for"),
            (("silence", "add", "--kind", "k", "--for", "soon", "--reason", "x"), "--for:"),
            (("silence", "add", "--kind", "k", "--until", "2000-01-01T00:00:00Z",
              "--reason", "x"), "--until: 2000-01-01T00:00:00Z is already past"),
            (("silence", "add", "--check", "nope", "--for", "1h", "--reason", "x"),
             "--check: unknown check 'nope'"),
            (("silence", "expire", "99"), "silence 99: no such silence"),
            (("ack", "sessions/main/stale-session/nobody"), "no open finding with key")]:
        code, out = run(*args)
        assert code == 64, (args, out)
        assert expected in out and len(out.strip().splitlines()) == 1, (args, out)
    assert len(Store(f"sqlite:///{tmp_path}/state.db").silences(T0, include_expired=True)) == 1

    code, out = run("ack", KEY, "--by", "ana")
    assert code == 0, out
    assert "acknowledged sessions/main/stale-session/alice (critical)" in out
