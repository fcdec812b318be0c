"""The admin page without a hub: what it shows, how it escapes, who may see it, its buttons.

The world is the engine test's plain-data hub (stale sessions that ``stop-server`` would
fix); the page is rendered from the store and the latest pass reports as the daemon keeps
them, and parsed back with the standard library's HTML parser, so an assertion about what
a browser would show is about the parsed text, not about substrings of the markup.
"""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_engine import T0, FakeWorld
from tests.unit.test_silences import KEY, engine_for, stopped
from watchdogd.config import WebConfig
from watchdogd.engine import Engine
from watchdogd.model import Action, Finding, Severity, SourceError
from watchdogd.sim.world import SimClock
from watchdogd.web import (
    Latest,
    Refusal,
    acknowledge,
    add_silence,
    allowed,
    expire_silence,
    gather,
    render_page,
    undo_action,
)

pytest.importorskip("jinja2")

HOSTILE = 'eve<script>alert("x")</script>\x1b[2J\'"&'


class Page(HTMLParser):
    """The page as a browser reads it: text, script elements, and form fields."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []
        self.inputs: list[dict[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "input":
            self.inputs.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


WORLDS: dict[int, FakeWorld] = {}


def world_engine(tmp_path: Path, *users: str, **remediation: Any) -> tuple[Engine, Latest,
                                                                            SimClock]:
    world = FakeWorld()
    for user in users:
        world.add(user, pod=False)
    clock = SimClock(T0)
    engine = engine_for(tmp_path, world, clock, **remediation)
    latest = Latest()
    engine.listeners.append(latest.observe)
    engine.run_pass()
    WORLDS[id(engine)] = world
    return engine, latest, clock


def page(engine: Engine, latest: Latest, clock: SimClock, **kwargs: Any) -> Page:
    data = gather(engine.config, engine.store, latest, clock())
    return Page(render_page(data, user=kwargs.pop("user", "ana"), xsrf="tok", base="/s/w/",
                            **kwargs))


def test_page_shows_findings_with_why_the_fix_waits(tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice", dry_run=True)
    clock.advance(minutes=5)
    engine.run_pass()
    shown = page(engine, latest, clock)
    text = shown.all_text
    assert "stale-session" in text and "alice" in text
    assert "hub main (1)" in text  # grouped by hub, cloud and cluster
    assert "stop-server: dry-run" in text
    assert "dry run: remediation.dry_run is on" in text
    assert "5m" in text  # its age
    # Each finding has a silence and an acknowledge form carrying the XSRF token.
    keys = [i["value"] for i in shown.inputs if i.get("name") == "key"]
    assert keys == [KEY, KEY]
    assert {i["value"] for i in shown.inputs if i.get("name") == "_xsrf"} == {"tok"}


def test_unconfirmed_and_done_actions_are_explained(tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice")
    assert "not confirmed yet" in page(engine, latest, clock).all_text
    clock.advance(minutes=5)
    engine.run_pass()
    assert stopped_by_engine(engine) == ["stop-server"]
    shown = page(engine, latest, clock).all_text
    assert "stop-server" in shown and "done" in shown


def stopped_by_engine(engine: Engine) -> list[str]:
    return [r.name for r in engine.store.actions()]


def test_hostile_names_are_escaped_and_control_characters_shown_as_escapes(
        tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, HOSTILE)
    html = render_page(gather(engine.config, engine.store, latest, clock()), user=HOSTILE,
                       xsrf="tok", base="/s/w/")
    shown = Page(html)
    assert "script" not in shown.tags
    assert "\x1b" not in html
    # The name is on the page as text, its escape visible as such.
    assert 'eve<script>alert("x")</script>\\x1b[2J\'"&' in shown.all_text
    # Inside attribute values too: the hidden key field holds the name, not markup.
    [key, *_] = [i["value"] for i in shown.inputs if i.get("name") == "key"]
    assert key is not None and "<script>" in key and "\x1b" not in key


def test_no_secret_from_evidence_reaches_the_page(tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice")
    finding = Finding("sessions", "main", "stale-session", "bob", Severity.WARNING, "m",
                      evidence={"api_token": "s3cr3t-token", "password": "hunter2",
                                "pod": "jupyter-bob"})
    engine.store.track("sessions", "main", [finding], clock(), announce_after=1,
                       repeat_after=timedelta(hours=1), resolve=False)
    text = page(engine, latest, clock).all_text
    assert 'pod: "jupyter-bob"\n' in text  # one line per item
    assert "s3cr3t-token" not in text and "hunter2" not in text


@pytest.mark.parametrize(("model", "web", "expected"), [
    ({"kind": "user", "name": "ana", "admin": True,
      "scopes": ["access:services!service=watchdogd"]}, {}, True),
    ({"kind": "user", "name": "ana", "admin": True, "scopes": ["access:services"]}, {}, True),
    # an admin whose token does not carry access to this service
    ({"kind": "user", "name": "ana", "admin": True,
      "scopes": ["access:services!service=other"]}, {}, False),
    ({"kind": "user", "name": "bob", "admin": False,
      "scopes": ["access:services!service=watchdogd"]}, {}, False),
    ({"kind": "user", "name": "ana", "admin": True,
      "scopes": ["access:services!service=watchdogd"]}, {"allow_admins": False}, False),
    ({"kind": "user", "name": "bob", "admin": False, "groups": ["ops"],
      "scopes": ["access:services!service=watchdogd"]}, {"allowed_groups": ["ops"]}, True),
    ({"kind": "user", "name": "bob", "admin": False, "groups": ["ops"], "roles": ["user"],
      "scopes": ["access:services!service=watchdogd"]}, {"allowed_roles": ["operator"]}, False),
    ({"kind": "user", "name": "bob", "roles": ["operator"],
      "scopes": ["access:services!service=watchdogd"]}, {"allowed_roles": ["operator"]}, True),
    # a service's token is never a visitor, admin or not
    ({"kind": "service", "name": "culler", "admin": True,
      "scopes": ["access:services"]}, {}, False),
    # "admin": "yes" is not True
    ({"kind": "user", "name": "x", "admin": "yes", "scopes": ["access:services"]}, {}, False),
])
def test_who_may_see_the_page(model: dict[str, Any], web: dict[str, Any],
                              expected: bool) -> None:
    assert allowed(model, WebConfig(**web)) is expected


def test_silence_from_the_page_covers_only_that_finding_and_is_audited(tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice", "al*", "bob")
    key = "sessions/main/stale-session/al*"
    silence = add_silence(engine.store, latest, key=key, duration="2h",
                          reason="known, fixing it", by="ana", now=clock())
    assert silence.subject == "al[*]" and silence.created_by == "ana"
    assert silence.expires_at == clock() + timedelta(hours=2)
    assert silence.matches("sessions", "main", "stale-session", "al*")
    assert not silence.matches("sessions", "main", "stale-session", "alice")
    [row] = engine.store.actions(name="silence-add")
    assert row.params["by"] == "ana" and row.params["finding"] == key
    assert row.status == "done" and not row.destructive
    # The audit row is not an action on the finding: it cannot hold the finding's repair.
    assert key not in engine.store.done_actions_by_finding(T0)
    # The next passes act on the others and not on the silenced one.
    clock.advance(minutes=5)
    engine.run_pass()
    assert sorted(stopped(engine_world(engine))) == ["alice", "bob"]
    shown = page(engine, latest, clock).all_text
    assert "silenced until" in shown and "known, fixing it" in shown


def engine_world(engine: Engine) -> FakeWorld:
    return WORLDS[id(engine)]


@pytest.mark.parametrize(("duration", "reason", "problem"), [
    ("2h", "  ", "reason"), ("soon", "r", "duration"), ("0s", "r", "duration"),
    ("31d", "r", "duration")])
def test_a_bad_silence_is_refused_and_changes_nothing(tmp_path: Path, duration: str,
                                                      reason: str, problem: str) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice")
    with pytest.raises(Refusal, match=problem):
        add_silence(engine.store, latest, key=KEY, duration=duration, reason=reason,
                    by="ana", now=clock())
    assert engine.store.silences(clock()) == [] and engine.store.actions() == []


def test_a_silence_of_a_finding_that_is_gone_is_refused(tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice")
    with pytest.raises(Refusal, match="no open finding"):
        add_silence(engine.store, latest, key=KEY + "x", duration="1h", reason="r",
                    by="ana", now=clock())


def test_ack_and_expire_are_audited_with_the_admin(tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice")
    acknowledge(engine.store, key=KEY, by="ana", now=clock())
    assert KEY in engine.store.acks()
    silence = add_silence(engine.store, latest, key=KEY, duration="1h", reason="r", by="ana",
                          now=clock())
    assert expire_silence(engine.store, silence_id=silence.id, by="bo", now=clock())
    assert not expire_silence(engine.store, silence_id=silence.id, by="bo", now=clock())
    assert engine.store.silences(clock()) == []
    names = [(r.name, r.params["by"]) for r in reversed(engine.store.actions())]
    assert names == [("ack", "ana"), ("silence-add", "ana"), ("silence-expire", "bo")]
    with pytest.raises(Refusal, match="no silence"):
        expire_silence(engine.store, silence_id=999, by="bo", now=clock())


def test_undo_from_the_page_refuses_what_has_no_undo(tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice")
    clock.advance(minutes=5)
    engine.run_pass()
    [stop] = engine.store.actions(name="stop-server")
    with pytest.raises(Refusal, match="cannot be undone"):
        undo_action(engine.config, engine.store, action_id=stop.id, by="ana")
    # No undo button is offered for it either.
    data = gather(engine.config, engine.store, latest, clock())
    assert [a["undo"] for a in data.actions if a["id"] == stop.id] == [False]


def test_undo_from_the_page_names_the_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) \
        -> None:
    from watchdogd import undo as undo_module

    engine, _latest, clock = world_engine(tmp_path)
    finding = Finding("orphans", "cloud", "orphan-volume", "v1", Severity.INFO, "m")
    action = Action("quarantine", "openstack", "cloud", "quarantine", destructive=False)
    action_id = engine.store.begin_action("p1", finding, action, clock())
    engine.store.finish_action(action_id, "done", "marked", clock())
    monkeypatch.setitem(undo_module.UNDO, "quarantine", lambda _ctx, _record: "unmarked v1")
    undo_action(engine.config, engine.store, action_id=action_id, by="ana")
    [row] = engine.store.actions(name="undo")
    assert row.params == {"undoes": action_id, "action": "quarantine", "by": "ana"}
    assert row.status == "done"
    data = gather(engine.config, engine.store, Latest(), clock())
    assert [a["undo"] for a in data.actions if a["id"] == action_id] == [False]


def test_failing_checks_are_listed_with_their_error(tmp_path: Path) -> None:
    engine, latest, clock = world_engine(tmp_path, "alice")
    WORLDS[id(engine)].fail["hubapi"] = SourceError("hubapi", "main", "<unreachable>\x1b")
    clock.advance(minutes=5)
    engine.run_pass()
    shown = page(engine, latest, clock)
    failing = shown.all_text.split("Failing checks", 1)[1].split("Silences", 1)[0]
    assert "sessions/main" in failing
    assert "hubapi main: <unreachable>\\x1b" in failing


@pytest.mark.parametrize(("web", "problem"), [
    ({"listen": "127.0.0.1:8090"}, "web.hub: required with web.listen"),
    ({"listen": "127.0.0.1:8090", "hub": "nope"}, "web.hub: no hub named 'nope'"),
    ({"service_name": "a/b"}, "web.service_name"),
])
def test_web_config_problems_name_the_key(tmp_path: Path, web: dict[str, Any],
                                          problem: str) -> None:
    from watchdogd.config import ConfigError, load_config

    lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in web.items())
    path = tmp_path / "w.toml"
    path.write_text(f"""
[clusters.js2]
kubeconfig = "/nonexistent"
[hubs.main]
cluster = "js2"
api_url = "http://hub:8081/hub/api"
[web]
{lines}
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_a_page_without_the_hubs_token_is_a_build_error(tmp_path: Path) -> None:
    from watchdogd.app import BuildError, build
    from watchdogd.config import Config

    config = Config.model_validate({
        "state": {"url": f"sqlite:///{tmp_path}/s.db"},
        "daemon": {"metrics_listen": None},
        "clusters": {"js2": {"kubeconfig": "/nonexistent"}},
        "hubs": {"main": {"cluster": "js2", "api_url": "http://hub:8081/hub/api"}},
        "web": {"listen": "127.0.0.1:0", "hub": "main"}})
    with pytest.raises(BuildError, match=r"web\.hub: hubs\.main has no api_token"):
        build(config, service=True, notify=False)


def test_a_bad_listen_address_names_web_listen() -> None:
    """The page's address is its own setting: an error names ``web.listen``."""
    from watchdogd.metrics import parse_listen

    with pytest.raises(ValueError, match=r"^web\.listen: expected host:port"):
        parse_listen("nowhere", "web.listen")
