"""Outbox delivery rules without a pass: per-finding order, set-aside, backoff, schema 3."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from tests.safety.receiver import Receiver
from watchdogd import store as store_module
from watchdogd.config import NotifyConfig
from watchdogd.model import Severity
from watchdogd.notify import (
    MAX_ATTEMPTS,
    MAX_BACKOFF,
    Destination,
    Notifier,
    Outcome,
    classify,
    finding_tag,
    load_destinations,
)
from watchdogd.store import SCHEMA_VERSION, Store
from watchdogd.text import safe_text

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


class Scripted(Destination):
    """A destination whose outcome per finding is chosen by the test (no network)."""

    def __init__(self, outcomes: dict[str, Outcome | Exception]) -> None:
        self.id, self.label, self.min_severity, self.timeout = "d1", "test#d1", Severity.INFO, 1
        self.is_ntfy = self.is_pushover = False
        self.outcomes = outcomes
        self.sent: list[tuple[str, str]] = []

    def send(self, title: str, body: str, severity: Severity,
             finding_key: str = "", params: Mapping[str, str] | None = None,
             ) -> tuple[Outcome, str]:
        outcome = self.outcomes.get(finding_key, Outcome.DELIVERED)
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is Outcome.DELIVERED:
            self.sent.append((finding_key, title))
        return outcome, "" if outcome is Outcome.DELIVERED else f"{outcome.value} (test)"


def rows(*items: tuple[str, str]) -> list[dict[str, object]]:
    return [{"finding_key": key, "event": event, "severity": Severity.CRITICAL,
             "title": f"{key} {event}", "body": "b", "destination": "d1"}
            for key, event in items]


def test_a_raising_destination_is_set_aside_after_max_attempts_and_blocks_only_itself(
        tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    secret_error = RuntimeError("token=hunter2 leaked in a plugin message")
    destination = Scripted({"a": secret_error})
    notifier = Notifier(NotifyConfig(retry_after=timedelta(minutes=1)), [destination])
    store.enqueue(rows(("a", "new"), ("b", "new"), ("a", "resolved"), ("b", "resolved")), T0)
    now = T0
    notifier.deliver(store, now)
    # b's notices go out at once; a's "resolved" waits behind a's failed "new".
    assert destination.sent == [("b", "b new"), ("b", "b resolved")]
    for _ in range(MAX_ATTEMPTS + 2):
        now += MAX_BACKOFF
        notifier.deliver(store, now)
    by_event = {(r["finding_key"], r["event"]): r for r in store.outbox()}
    first = by_event[("a", "new")]
    assert first["attempts"] == MAX_ATTEMPTS
    assert first["set_aside_at"] is not None
    assert first["last_error"] == "failed (RuntimeError)"
    assert "hunter2" not in str(store.outbox())
    # Set aside, it no longer holds back a's next notice (which fails the same way).
    assert by_event[("a", "resolved")]["attempts"] >= 1
    assert store.outbox_counts()["delivered"] == 2


def test_backoff_doubles_up_to_the_cap_and_a_timeout_waits_the_cap(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    destination = Scripted({"a": Outcome.FAILED, "t": Outcome.UNCERTAIN})
    notifier = Notifier(NotifyConfig(retry_after=timedelta(minutes=1)), [destination])
    store.enqueue(rows(("a", "new"), ("t", "new")), T0)
    waits = []
    now = T0
    for _ in range(8):
        notifier.deliver(store, now)
        row = next(r for r in store.outbox() if r["finding_key"] == "a")
        waits.append(row["next_attempt_at"] - now)
        now = row["next_attempt_at"]
    assert waits == [timedelta(minutes=m) for m in (1, 2, 4, 8, 16, 32, 60, 60)]
    timed_out = next(r for r in store.outbox() if r["finding_key"] == "t")
    # Rounds ran at +0, 1, 3, 7, 15, 31, 63, 123 minutes; a timed-out notice waits a full
    # MAX_BACKOFF after each try, so it went out at +0, +63 and +123 only.
    assert timed_out["attempts"] == 3
    assert timed_out["set_aside_at"] is None


def test_pending_notices_hold_back_only_the_waiting_finding(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.enqueue(rows(("a", "new"), ("b", "new"), ("a", "resolved")), T0)
    first = store.pending_notices("d1", T0)[0]
    store.mark_failed(first.id, "down", T0 + timedelta(minutes=5))
    pending = store.pending_notices("d1", T0 + timedelta(minutes=1))
    assert [(n.finding_key, n.event) for n in pending] == [("b", "new")]
    store.mark_failed(first.id, "refused", T0, set_aside_at=T0 + timedelta(minutes=1))
    pending = store.pending_notices("d1", T0 + timedelta(minutes=1))
    assert [(n.finding_key, n.event) for n in pending] == [("b", "new"), ("a", "resolved")]


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_are_queued(
        tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    batch = rows(("a", "new"), ("b", "new"))
    batch[0]["title"] = None  # NOT NULL: this one row cannot be stored as it is
    assert store.enqueue(batch, T0) == 1
    bad, good = store.outbox()
    assert bad["set_aside_at"] == T0 and bad["last_error"].startswith("could not be stored")
    assert good["set_aside_at"] is None and good["title"] == "b new"
    assert [n.finding_key for n in store.pending_notices("d1", T0)] == ["b"]


def test_classify_reads_apprise_log_lines() -> None:
    assert classify(["Failed to send JSON POST notification: Bad Request, error=400."])[0] \
        is Outcome.REFUSED
    assert classify(["Failed to send ntfy notification: error=429."])[0] is Outcome.FAILED
    # A revoked token or a deleted webhook can be fixed by the operator: keep trying.
    assert classify(["error=401."]) == (Outcome.FAILED, "failed (HTTP 401)")
    assert classify(["error=404."])[0] is Outcome.FAILED
    assert classify(["error=413."]) == (Outcome.REFUSED, "refused (HTTP 413)")
    assert classify(["error=503."]) == (Outcome.FAILED, "failed (HTTP 503)")
    assert classify(["A Connection error occurred", "Socket Exception: "
                     "HTTPConnectionPool(host='h', port=1): Read timed out. (read timeout=1)"]
                    )[0] is Outcome.UNCERTAIN
    assert classify(["Socket Exception: ... Connection refused"])[0] is Outcome.FAILED
    assert classify(["Connection to h timed out. (connect timeout=1)"])[0] is Outcome.FAILED
    assert classify([]) == (Outcome.FAILED, "failed (apprise gave no reason)")


def test_ntfy_notices_carry_a_stable_tag_per_finding(tmp_path: Path) -> None:
    """A private ntfy server stand-in: apprise posts ntfy's JSON publish body to it."""
    with Receiver() as rx:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"ntfy://127.0.0.1:{rx.port}/alerts?tags=watchdogd\n")
        [destination] = load_destinations(NotifyConfig(urls_file=str(urls)))
        assert destination.is_ntfy
        key = "sessions/main/stale-session/alice"
        for title in ("new", "still open"):
            outcome, _ = destination.send(title, "body", Severity.CRITICAL, key)
            assert outcome is Outcome.DELIVERED
        destination.send("other", "body", Severity.CRITICAL, "sessions/main/stale-session/bob")
        # ntfy takes tags from the X-Tags header of a publish.
        tags = [h.get("X-Tags") for h in rx.headers]
        assert tags[0] == tags[1] == f"watchdogd,{finding_tag(key)}", rx.headers
        assert tags[2] == f"watchdogd,{finding_tag('sessions/main/stale-session/bob')}"
        assert all(m["topic"] == "alerts" for m in rx.messages)


def test_safe_text_escapes_controls_and_keeps_unicode() -> None:
    assert safe_text("a\x1b[31mb\x00c\nd") == "a\\x1b[31mb\\x00c\\nd"
    assert safe_text("é 日本 🎉 \u202eevil") == "é 日本 🎉 \\u202eevil"
    assert safe_text("abc", 3) == "abc"
    for value, limit in (("abcdefgh", 5), ("ab\x1bcdef", 6), ("\x00" * 10, 7)):
        cut = safe_text(value, limit)
        assert len(cut) <= limit and cut.endswith("…"), cut
        assert not any(ord(c) < 0x20 for c in cut), cut


def upgrade_outbox_from_version_2(url: str) -> None:
    """A schema-2 outbox with a queued notice is brought to 3 and the notice is kept.

    Shared with the PostgreSQL test in ``tests/integration/test_notify.py``.
    """
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        # Steps 1 and 2 build today's tables; dropping the new column leaves the outbox
        # exactly as schema 2 had it.
        store_module.MIGRATIONS[1](conn)
        store_module.MIGRATIONS[2](conn)
        conn.execute(sa.text("ALTER TABLE outbox DROP COLUMN set_aside_at"))
        conn.execute(sa.insert(store_module.meta_table).values(key="schema_version", value="2"))
        conn.execute(sa.text(
            "INSERT INTO outbox (created_at, finding_key, event, severity, title, body, "
            "destination, attempts, next_attempt_at) VALUES (:at, 'k', 'new', 30, "
            "'queued before the upgrade', 'b', 'd1', 2, :at)"),
            {"at": T0.replace(tzinfo=None)})
    engine.dispose()
    store = Store(url)
    assert store.schema_version() == SCHEMA_VERSION >= 3
    [notice] = store.pending_notices("d1", T0)
    assert (notice.title, notice.attempts) == ("queued before the upgrade", 2)
    store.mark_failed(notice.id, "refused (HTTP 400)", T0, set_aside_at=T0)
    assert store.outbox_counts() == {"queued": 0, "delivered": 0, "set_aside": 1}
    assert store.outbox()[0]["set_aside_at"] == T0
    store.close()


def test_schema_2_outbox_is_upgraded_without_loss(tmp_path: Path) -> None:
    upgrade_outbox_from_version_2(f"sqlite:///{tmp_path}/old.db")
    # A new database gets the column from the table definition; the step is a no-op.
    fresh = Store(f"sqlite:///{tmp_path}/new.db")
    assert fresh.schema_version() == SCHEMA_VERSION
    fresh.enqueue(rows(("a", "new")), T0)
    assert fresh.outbox()[0]["set_aside_at"] is None
