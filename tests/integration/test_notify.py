"""Notifications through apprise to real local receivers: order, retries, tags, SMTP."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.peers.postgres import RealPostgres
from tests.peers.receivers import JsonReceiver, SmtpReceiver
from tests.unit.test_engine import Adapter, FakeWorld, make_config
from tests.unit.test_notify_delivery import T0, rows, upgrade_outbox_from_version_2
from watchdogd.checks import REGISTRY
from watchdogd.config import NotifyConfig
from watchdogd.engine import Engine
from watchdogd.notify import Notifier, load_destinations
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.store import Store

pytestmark = pytest.mark.integration


def engine_with(tmp_path: Path, world: FakeWorld, urls: str, clock: SimClock,
                **remediation: Any) -> Engine:
    config = make_config(tmp_path, **remediation)
    urls_file = tmp_path / "apprise.txt"
    urls_file.write_text(urls)
    notify = NotifyConfig(urls_file=str(urls_file), retry_after=timedelta(minutes=1))
    factories = {n: (lambda _c, _n: Adapter(world)) for n in ("hubdb", "hubapi", "proxy", "kube")}
    return Engine(config, Store(config.state.resolved_url()), Sources(config, factories),
                  notifier=Notifier.from_config(notify), clock=clock,
                  registry={"sessions": REGISTRY["sessions"]})


def test_new_action_and_resolved_notices_reach_http_and_smtp(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    with JsonReceiver() as http, SmtpReceiver() as smtp:
        engine = engine_with(tmp_path, world, f"{http.url}\n{smtp.url}\n", clock)
        engine.run_pass()  # sighting 1: nothing announced yet
        assert http.messages == []
        engine.run_pass()  # confirmed: announced and acted on
        engine.run_pass()  # gone: resolved
        titles = http.titles()
        assert len(titles) == 3
        assert "[critical] stale-session alice (sessions/main)" in titles[0]
        assert "action stop-server done: alice" in titles[1]
        assert "[resolved] stale-session alice" in titles[2]
        assert http.messages[0]["type"] == "failure"
        assert len(smtp.subjects) == 3
        assert "resolved" in smtp.subjects[2]


def test_outage_then_delivery_exactly_once_in_order(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    with JsonReceiver() as http:
        http.failing = True
        engine = engine_with(tmp_path, world, http.url, clock)
        for _ in range(3):
            engine.run_pass()
            clock.advance(minutes=10)
        assert http.messages == []
        pending = [r for r in engine.store.outbox() if r["delivered_at"] is None]
        assert [r["event"] for r in pending] == ["new", "action", "resolved"]
        assert pending[0]["attempts"] >= 2
        http.failing = False
        # A restarted daemon (new engine, same store) delivers what is queued.
        restarted = engine_with(tmp_path, world, http.url, clock)
        assert restarted.notifier is not None
        clock.advance(hours=3)
        restarted.notifier.deliver(restarted.store, clock())
        new, action, resolved = http.titles()
        assert "[critical] stale-session alice" in new
        assert "action stop-server done: alice" in action
        assert "[resolved] stale-session alice" in resolved
        restarted.notifier.deliver(restarted.store, clock() + timedelta(hours=1))
        assert len(http.messages) == 3


def test_severity_tags_choose_destinations(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice")
    world.users.append("bob")
    world.pods.append({"metadata": {"name": "jupyter-bob", "namespace": "jhub", "uid": "b",
                                    "annotations": {"hub.jupyter.org/username": "bob"}},
                       "status": {"phase": "Running"}})
    clock = SimClock(T0)
    with JsonReceiver() as pager, JsonReceiver() as chat:
        urls = f"critical={pager.url}\n{chat.url}\n"
        engine = engine_with(tmp_path, world, urls, clock, confirm_after=1)
        engine.run_pass()
        assert pager.messages == []  # an orphan pod is a warning: not for the phone
        assert len(chat.messages) == 1
        assert "orphan-pod bob" in chat.titles()[0]


def test_bad_apprise_config_is_a_config_error(tmp_path: Path) -> None:
    from watchdogd.notify import NotifyConfigError

    path = tmp_path / "urls.txt"
    path.write_text("this is not a url\n")
    with pytest.raises(NotifyConfigError, match="no valid apprise URL"):
        load_destinations(NotifyConfig(urls_file=str(path)))
    with pytest.raises(NotifyConfigError, match="does not exist"):
        load_destinations(NotifyConfig(urls_file=str(tmp_path / "missing")))



def test_outbox_upgrade_from_schema_2_on_postgresql(postgres: RealPostgres) -> None:
    upgrade_outbox_from_version_2(postgres.create_database("wd_outbox_upgrade"))


def test_a_row_postgresql_refuses_is_set_aside_and_the_rest_are_queued(
        postgres: RealPostgres) -> None:
    """A NUL is stored escaped; a row PostgreSQL still refuses must not cost the others."""
    store = Store(postgres.create_database("wd_outbox_nul"))
    batch = rows(("sessions/main/stale-session/e\x00ve", "new"), ("b", "new"),
                 ("c", "new"))
    batch[2]["destination"] = "d" * 100  # longer than the column: PostgreSQL refuses it
    assert store.enqueue(batch, T0) == 1
    nul, good, bad = store.outbox()
    assert nul["finding_key"] == "sessions/main/stale-session/e\\0ve"
    assert nul["set_aside_at"] is None
    assert bad["set_aside_at"] == T0
    assert bad["last_error"].startswith("could not be stored")
    assert (good["finding_key"], good["set_aside_at"]) == ("b", None)
    assert [n.finding_key for n in store.pending_notices("d1", T0)] == [
        "sessions/main/stale-session/e\\0ve", "b"]
    store.close()


def test_a_name_with_html_is_text_in_the_mail(tmp_path: Path) -> None:
    """A username is outside text: an HTML e-mail shows it escaped, never renders it."""
    world = FakeWorld()
    hostile = 'eve<img src="http://tracker.example/x"><b>bold</b>'
    world.add(hostile, pod=False)
    clock = SimClock(T0)
    with SmtpReceiver() as smtp:
        engine = engine_with(tmp_path, world, f"{smtp.url}\n", clock)
        engine.run_pass()
        engine.run_pass()  # confirmed: announced
        [mail, *_] = smtp.handler.messages
        parts = {p.get_content_subtype(): p.get_payload(decode=True).decode()
                 for p in mail.walk() if p.get_content_maintype() == "text"}
        # Plain text shows the name as it is; an HTML part, if any, escaped.
        assert hostile in parts["plain"]
        if "html" in parts:
            assert "<img" not in parts["html"] and "&lt;img" in parts["html"]
