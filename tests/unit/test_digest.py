"""The weekly digest builder over a week of a real SQLite store; its once-a-week rule."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.unit.test_notify_delivery import Scripted
from watchdogd.config import Config, DigestConfig, NotifyConfig, parse_weekly
from watchdogd.daemon import Daemon
from watchdogd.digest import build_digest, due, make_digest, send_digest, week_of
from watchdogd.model import Action, Finding, Severity
from watchdogd.notify import Notifier, Outcome
from watchdogd.store import Store

#: the digest's end: Monday 2026-12-07 08:00 UTC
UNTIL = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=7)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def seen(store: Store, check: str, target: str, findings: list[Finding],
         when: datetime) -> None:
    store.track(check, target, findings, when, announce_after=1,
                repeat_after=timedelta(days=99))


def f(check: str, target: str, kind: str, subject: str, severity: Severity = Severity.WARNING,
      **evidence: object) -> Finding:
    return Finding(check, target, kind, subject, severity, f"{kind} {subject}", dict(evidence))


def act(store: Store, finding: Finding, name: str, status: str, when: datetime,
        before: dict[str, object] | None = None) -> None:
    action = Action(name, "openstack", "cloud", "call", {}, True, before or {})
    action_id = store.begin_action("p", finding, action, when)
    store.finish_action(action_id, status, f"{name} {status}", when + timedelta(seconds=5))


def fill(store: Store, until: datetime = UNTIL) -> None:
    """A week of findings, actions and passes (and some from before it, left out)."""
    def at(delta: timedelta) -> datetime:
        return until + delta

    bob = f("sessions", "main", "stale-session", "bob", Severity.CRITICAL)
    alice = f("sessions", "main", "stale-session", "alice", Severity.CRITICAL)
    seen(store, "sessions", "main", [bob], at(-8 * DAY))
    seen(store, "sessions", "main", [bob, alice], at(-6 * DAY))
    seen(store, "sessions", "main", [bob], at(-6 * DAY + 3 * HOUR))  # alice resolved: 3h
    seen(store, "sessions", "main", [], at(-DAY))  # bob resolved: open 7 days
    old = f("certs", "files", "cert-expiring", "old.example.org",
            not_after=(until + 40 * DAY).isoformat(), days_left=50.0)
    hub = f("certs", "files", "cert-expiring", "hub.example.org", Severity.CRITICAL,
            not_after=(until + 5 * DAY).isoformat(), days_left=7.0, password="s3cr3t-pw")
    seen(store, "certs", "files", [old], at(-10 * DAY))
    seen(store, "certs", "files", [old, hub], at(-2 * DAY))
    cred = f("volumes", "cloud", "credential-expiring", "ci-cred\x1b[31m",
             expires_at=(until + 12 * DAY).strftime("%Y-%m-%dT%H:%M:%S.000000"))
    seen(store, "volumes", "cloud", [cred], at(-20 * DAY))
    vol1 = f("orphans", "cloud", "orphan-volume", "vol-1",
             volume={"id": "vol-1", "size": 10}, quarantined_since="2026-12-04T08:00:00Z")
    vol2 = f("orphans", "cloud", "orphan-volume", "vol-2",
             volume={"id": "vol-2", "size": 5}, quarantined_since=None)
    vol3 = f("orphans", "cloud", "orphan-volume", "vol-3",
             volume={"id": "vol-3", "size": 20}, quarantined_since="2026-11-20T08:00:00Z")
    pv9 = f("orphans", "cloud", "released-pv", "pv-9")
    seen(store, "orphans", "cloud", [vol3], at(-16 * DAY))
    seen(store, "orphans", "cloud", [vol3, vol1, vol2, pv9], at(-3 * DAY))
    seen(store, "orphans", "cloud", [vol1, vol2, pv9], at(-2 * DAY))  # vol-3 deleted
    act(store, bob, "stop-server", "done", at(-8 * DAY))  # before the window
    act(store, alice, "stop-server", "done", at(-6 * DAY + 2 * HOUR))
    act(store, vol1, "quarantine", "done", at(-3 * DAY))
    act(store, vol2, "quarantine", "failed", at(-3 * DAY))
    act(store, vol3, "delete-orphan-volume", "done", at(-2 * DAY - HOUR),
        {"volume": {"id": "vol-3", "size": 20, "metadata": {"token": "s3cr3t-tk"}}})
    passes = [("certs", "files", at(-5 * DAY), "ok", None),
              ("certs", "files", at(-4 * DAY), "ok", None),
              ("orphans", "cloud", at(-9 * DAY), "error", "before the window"),
              ("orphans", "cloud", at(-5 * DAY), "error", "cinder: HTTP 503"),
              ("orphans", "cloud", at(-4 * DAY), "ok", None),
              ("orphans", "cloud", at(-DAY), "error", "keystone said <b>\x1b[31mno\x00")]
    for number, (check, target, when, status, error) in enumerate(passes):
        store.record_pass(f"pass-{number}", check, target, when - timedelta(seconds=30), when,
                          status, error)


EXPECTED_TITLE = ("watchdogd weekly digest 2026-11-30 to 2026-12-07: 5 opened, 3 resolved, "
                  "4 actions")

EXPECTED_BODY = """\
Window: 2026-11-30T08:00Z to 2026-12-07T08:00Z (dates in UTC).

Findings: 5 opened, 3 resolved, 6 open now
------------------------------------------
- certs/cert-expiring: 1 opened (1 critical), 0 resolved
- orphans/orphan-volume: 2 opened (2 warning), 1 resolved (1 warning)
- orphans/released-pv: 1 opened (1 warning), 0 resolved
- sessions/stale-session: 1 opened (1 critical), 2 resolved (2 critical)

Actions: 4
----------
- delete-orphan-volume: 1 done
- quarantine: 1 done, 1 failed
- stop-server: 1 done

Slowest to resolve, and oldest still open
-----------------------------------------
- 14d 0h: [warning] orphan-volume vol-3 (orphans/cloud), resolved 2026-12-05
- 7d 0h: [critical] stale-session bob (sessions/main), resolved 2026-12-06
- open for 20d 0h: [warning] credential-expiring ci-cred\\x1b[31m (volumes/cloud), since \
2026-11-17
- open for 10d 0h: [warning] cert-expiring old.example.org (certs/files), since 2026-11-27

Checks that failed
------------------
- orphans/cloud: 2 of 3 pass(es) failed; last at 2026-12-06 08:00: keystone said \
<b>\\x1b[31mno\\x00

Expiring in the next 30 days
----------------------------
- 2026-12-12 (in 5d 0h): certificate hub.example.org (certs/files)
- 2026-12-19 (in 12d 0h): credential ci-cred\\x1b[31m (volumes/cloud)

Orphan storage
--------------
- reclaimed: 1 volume(s) deleted, 20 GiB
- waiting: 2 orphan volume(s), 15 GiB (1 quarantined, 10 GiB; 1 not quarantined, 5 GiB)
- waiting: 1 released-pv finding(s)

Details: watchdogd findings --all, watchdogd actions."""


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path}/state.db")
    fill(store)
    return store


def test_every_section_of_a_week(store: Store) -> None:
    digest = make_digest(store, UNTIL, top=2)
    assert digest.title == EXPECTED_TITLE
    assert digest.body == EXPECTED_BODY
    assert (digest.week, digest.opened, digest.resolved, digest.actions) == ("2026-W50", 5, 3, 4)
    # Masked by the store, and nothing of a before-image but its size is shown.
    assert "s3cr3t" not in digest.body
    assert "\x1b" not in digest.body + digest.title and "\x00" not in digest.body


def test_an_empty_week_says_so(tmp_path: Path) -> None:
    digest = build_digest([], [], [], SINCE, UNTIL, tz=ZoneInfo("Europe/Berlin"))
    assert digest.title == ("watchdogd weekly digest 2026-11-30 to 2026-12-07: 0 opened, "
                            "0 resolved, 0 actions")
    assert "dates in Europe/Berlin" in digest.body
    for line in ("No finding was opened or resolved.", "No action was taken.",
                 "Nothing to list.", "Every pass completed.",
                 "No certificate or credential expires in the next 30 days.",
                 "- reclaimed: 0 volume(s) deleted, 0 GiB"):
        assert line in digest.body.splitlines()


def test_a_shorter_window_leaves_out_what_came_before(store: Store) -> None:
    digest = make_digest(store, UNTIL, since=UNTIL - 2 * DAY - 2 * HOUR, top=2)
    # hub.example.org opened, vol-3 and bob resolved, the delete-orphan-volume only.
    assert digest.title.endswith(": 1 opened, 2 resolved, 1 action")
    assert "- orphans/cloud: 1 of 1 pass(es) failed" in digest.body


def test_the_week_and_the_schedule_in_the_digest_zone() -> None:
    # Sunday 23:30 UTC is already Monday in Berlin: the next ISO week there.
    sunday_night = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    assert week_of(sunday_night) == "2026-W49"
    assert week_of(sunday_night, ZoneInfo("Europe/Berlin")) == "2026-W50"
    assert parse_weekly("Mon 08:00") == ("mon", 8, 0)
    assert not due(datetime(2026, 12, 7, 6, 59, tzinfo=UTC), "mon 08:00", "Europe/Berlin")
    assert due(datetime(2026, 12, 7, 7, 0, tzinfo=UTC), "mon 08:00", "Europe/Berlin")
    assert due(datetime(2026, 12, 13, 22, 0, tzinfo=UTC), "mon 08:00", "UTC")
    assert not due(datetime(2026, 12, 10, 12, 0, tzinfo=UTC), "fri 08:00", "UTC")


@pytest.mark.parametrize(("field", "value"), [("schedule", "monday 8am"),
                                              ("schedule", "mon 24:00"),
                                              ("timezone", "Mars/Olympus")])
def test_bad_digest_settings_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        DigestConfig(**{field: value})


def notifier(outcome: Outcome) -> tuple[Notifier, Scripted]:
    destination = Scripted({"digest/2026-W50": outcome})
    return Notifier(NotifyConfig(), [destination]), destination


def test_sent_once_a_week_and_retried_until_delivered(store: Store) -> None:
    failing, destination = notifier(Outcome.FAILED)
    digest = make_digest(store, UNTIL)
    queued, when = send_digest(store, failing, digest, UNTIL)
    assert (queued, when) == (True, UNTIL)
    assert destination.sent == []
    assert [r["attempts"] for r in store.outbox() if r["event"] == "digest"] == [1]
    # A restart later in the week builds it again: nothing new is queued, the
    # undelivered one is retried when due.
    working, again = notifier(Outcome.DELIVERED)
    later = UNTIL + 2 * HOUR
    queued, when = send_digest(store, working, make_digest(store, later), later)
    assert (queued, when) == (False, UNTIL)
    assert again.sent == [("digest/2026-W50", digest.title)]
    rows = [r for r in store.outbox() if r["event"] == "digest"]
    assert len(rows) == 1 and rows[0]["delivered_at"] == later
    assert rows[0]["body"] == digest.body
    # The next week is a new digest.
    week = UNTIL + 7 * DAY
    queued, _ = send_digest(store, working, make_digest(store, week), week)
    assert queued


def _claim(url: str, start: multiprocessing.synchronize.Event,
           results: multiprocessing.Queue[bool]) -> None:
    replica = Store(url)
    start.wait(10)
    digest = make_digest(replica, UNTIL)
    results.put(replica.claim_once(f"digest/{digest.week}", [
        {"finding_key": f"digest/{digest.week}", "event": "digest",
         "severity": Severity.INFO, "title": digest.title, "body": digest.body,
         "destination": "d1"}], UNTIL))


def test_two_processes_at_once_queue_it_once(store: Store, tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    url = f"sqlite:///{tmp_path}/state.db"
    replicas = [context.Process(target=_claim, args=(url, start, results)) for _ in range(3)]
    for replica in replicas:
        replica.start()
    start.set()
    outcomes = sorted(results.get(timeout=60) for _ in replicas)
    for replica in replicas:
        replica.join(30)
    assert outcomes == [False, False, True]
    assert [r["event"] for r in store.outbox()].count("digest") == 1


class FakeEngine:
    """What the daemon's digest job uses of an engine."""

    def __init__(self, store: Store, now: datetime, acting: bool = True) -> None:
        self.store, self.now, self.is_acting, self.notifier = store, now, acting, None

    def acting(self) -> bool:
        return self.is_acting

    def clock(self) -> datetime:
        return self.now


def daemon(tmp_path: Path, now: datetime, *, acting: bool = True,
           **digest: object) -> tuple[Daemon, Scripted]:
    config = Config(digest=DigestConfig(enabled=True, urls_file="x",
                                        **digest))  # type: ignore[arg-type]
    sender, destination = notifier(Outcome.DELIVERED)
    engine = FakeEngine(Store(f"sqlite:///{tmp_path}/state.db"), now, acting)
    return Daemon(config, engine, digest=sender), destination  # type: ignore[arg-type]


def test_the_daemon_job_sends_from_the_acting_replica_once(store: Store,
                                                           tmp_path: Path) -> None:
    standby, standby_sent = daemon(tmp_path, UNTIL, acting=False)
    standby._send_digest()
    early, early_sent = daemon(tmp_path, UNTIL - HOUR)  # Monday 07:00: before its time
    early._send_digest()
    assert standby_sent.sent == early_sent.sent == [] and store.outbox() == []
    first, first_sent = daemon(tmp_path, UNTIL)
    second, second_sent = daemon(tmp_path, UNTIL + HOUR)  # another replica, or a restart
    first._send_digest()
    second._send_digest()
    assert [key for key, _ in first_sent.sent + second_sent.sent] == ["digest/2026-W50"]
    assert first_sent.sent[0][1] == EXPECTED_TITLE


def test_the_daemon_schedules_the_digest_in_its_zone(tmp_path: Path) -> None:
    scheduled, _ = daemon(tmp_path, UNTIL, schedule="fri 17:30", timezone="Europe/Berlin")
    scheduled._schedule_digest()
    job = scheduled.scheduler.get_job("digest")
    assert job is not None
    assert str(job.trigger) == "cron[day_of_week='fri', hour='17', minute='30']"
    assert str(job.trigger.timezone) == "Europe/Berlin"
