"""The state store: findings and their lifecycle, the action audit log, the outbox.

SQLite by default, any SQLAlchemy URL otherwise (PostgreSQL is tested). The
schema carries a version in ``meta``; :data:`MIGRATIONS` brings an older file
forward step by step, and a file newer than this code is refused rather than
guessed at.

Every write that belongs to one decision happens in one transaction, so a crash
leaves either the old or the new state, never half of a pass.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from watchdogd.model import Action, ClaimRecord, Finding, Resolved, Severity, Silence, Tracked
from watchdogd.text import safe_text, store_key, unstore_key, without_secrets
from watchdogd.urls import sqlalchemy_url

__all__ = ["SCHEMA_VERSION", "ActionRecord", "LinkUsed", "LockHold", "Notice", "Store",
           "StoreError", "Tracked"]

SCHEMA_VERSION = 6

#: The PostgreSQL advisory lock of the pass (advisory locks are scoped to one database).
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"watchdogd pass lock").digest()[:8], "big",
                              signed=True)


class LinkUsed(Exception):
    """An acknowledge link whose nonce was honoured before (a replay)."""


#: the check name under which :meth:`Store.claim_once` keeps its marks (no check has it)
ONCE = "once"


class StoreError(Exception):
    """The state store cannot be used (locked, corrupt, unreachable, too new)."""


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()

meta_table = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

findings_table = sa.Table(
    "findings", metadata,
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("check_name", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(700), nullable=False),
    sa.Column("severity", sa.Integer, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("sightings", sa.Integer, nullable=False),
    sa.Column("resolved_at", UTCDateTime),
    sa.Column("notified_severity", sa.Integer),
    sa.Column("notified_at", UTCDateTime),
    sa.Index("ix_findings_check_target", "check_name", "target", "status"),
)

actions_table = sa.Table(
    "actions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pass_id", sa.String(64), nullable=False),
    sa.Column("finding_key", sa.String(1024), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("call", sa.String(64), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("before", sa.Text, nullable=False),
    sa.Column("destructive", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Index("ix_actions_started", "started_at"),
)

outbox_table = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("finding_key", sa.String(1024), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("severity", sa.Integer, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("destination", sa.String(64), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    # Added in schema 3: a notice given up on (refused, or failing too long). It stays
    # in the table with its error and no longer holds back the notices after it.
    sa.Column("set_aside_at", UTCDateTime),
    sa.Index("ix_outbox_pending", "destination", "delivered_at", "id"),
)

# Added in schema 2: memory of conditions between passes, and the pass log.
marks_table = sa.Table(
    "marks", metadata,
    sa.Column("check_name", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(255), primary_key=True),
    sa.Column("mark", sa.String(1024), primary_key=True),
    sa.Column("since", UTCDateTime, nullable=False),
)

passes_table = sa.Table(
    "passes", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("check_name", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Index("ix_passes_finished", "finished_at"),
)

# Added in schema 4: the operator's silences and acknowledgements.
silences_table = sa.Table(
    "silences", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("check_name", sa.String(64)),
    sa.Column("target", sa.String(255)),
    sa.Column("kind", sa.String(64)),
    sa.Column("subject", sa.String(700)),
    sa.Column("allow_actions", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("expired_at", UTCDateTime),
    sa.Column("expired_by", sa.String(255)),
)

acks_table = sa.Table(
    "acks", metadata,
    sa.Column("finding_key", sa.String(1024), primary_key=True),
    # the severity acknowledged: an escalation past it ends the acknowledgement
    sa.Column("severity", sa.Integer, nullable=False),
    sa.Column("acked_by", sa.String(255), nullable=False),
    sa.Column("acked_at", UTCDateTime, nullable=False),
)

# Added in schema 5: the map of users' disks (claim -> PV -> Cinder volume), with its
# history: one row per claim and version, valid from one pass until a pass saw it change.
disks_table = sa.Table(
    "disks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("check_name", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("cluster", sa.String(255), nullable=False),
    sa.Column("namespace", sa.String(255), nullable=False),
    sa.Column("claim", sa.String(255), nullable=False),
    #: the line as the pass saw it (user, PV, volume id, size, reclaim policy and what the
    #: manifests need), exact names in JSON; the key columns above are escaped names
    sa.Column("manifest", sa.Text, nullable=False),
    #: sha256 of the row's content: an unchanged claim is compared, never rewritten
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("valid_from", UTCDateTime, nullable=False),
    sa.Column("valid_to", UTCDateTime),
    sa.Index("ix_disks_current", "check_name", "target", "valid_to"),
    sa.Index("ix_disks_from", "valid_from"),
)

# Added in schema 6: the nonces of acknowledge links already honoured (single use). A nonce
# is kept until its link expires; an expired link is refused without looking here.
ack_links_table = sa.Table(
    "ack_links", metadata,
    sa.Column("nonce", sa.String(32), primary_key=True),
    sa.Column("finding_key", sa.String(1024), nullable=False),
    sa.Column("used_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

_V1_TABLES = (meta_table, findings_table, actions_table, outbox_table)
_V2_TABLES = (marks_table, passes_table)


def _migrate_to_1(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(_V1_TABLES))


def _migrate_to_2(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(_V2_TABLES))


#: The outbox's text columns and the length a set-aside copy is cut to.
_OUTBOX_TEXT = {"finding_key": 1000, "event": 16, "title": 2000, "body": 20000,
                "destination": 64}


def _migrate_to_3(conn: Connection) -> None:
    # Step 1 creates the outbox from today's table definition, so a new database
    # already has the column; only an older file needs it added.
    if "set_aside_at" in {c["name"] for c in sa.inspect(conn).get_columns("outbox")}:
        return
    column_type = outbox_table.c.set_aside_at.type.compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE outbox ADD COLUMN set_aside_at {column_type}"))


def _migrate_to_4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[silences_table, acks_table])


def _migrate_to_5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[disks_table])


def _migrate_to_6(conn: Connection) -> None:
    metadata.create_all(conn, tables=[ack_links_table])


#: Step ``n`` brings a schema from version ``n - 1`` to ``n``.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4,
    5: _migrate_to_5, 6: _migrate_to_6}


@dataclass
class ActionRecord:
    """One row of the audit log."""

    id: int
    pass_id: str
    finding_key: str
    name: str
    target: str
    params: dict[str, Any]
    before: dict[str, Any]
    destructive: bool
    status: str
    detail: str | None
    started_at: datetime
    finished_at: datetime | None


@dataclass
class Notice:
    """One message for one destination, waiting in the outbox."""

    id: int
    finding_key: str
    event: str
    severity: Severity
    title: str
    body: str
    destination: str
    attempts: int


@dataclass(frozen=True)
class LockHold:
    """The outcome of asking for the pass lock."""

    held: bool
    #: this entry took the lock: no other pass of this process is running, so any
    #: ``started`` action in the audit log was interrupted by a crash
    fresh: bool = False
    #: why not held
    reason: str | None = None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _connect_args(url: sa.URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        return {"timeout": 10}
    if url.get_backend_name() == "postgresql":
        return {"connect_timeout": 10}
    return {}


class Store:
    """Findings, audit log and outbox over one SQLAlchemy engine."""

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        try:
            parsed = sqlalchemy_url(url)
        except ValueError:
            raise StoreError("state.url: not a valid database URL") from None
        self._safe_url = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self._backend = parsed.get_backend_name()
        self._lock_path: Path | None = None
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            database = Path(parsed.database).expanduser()
            self._lock_path = database.with_name(database.name + ".lock")
            if not database.parent.is_dir():
                raise StoreError(f"state database directory {database.parent} does not exist")
            # The audit log and findings name users and volumes: private from the start
            # (SQLite gives its -wal and -shm files the database file's mode).
            with suppress(FileExistsError):
                os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.engine: Engine = sa.create_engine(
            parsed, connect_args=_connect_args(parsed), pool_pre_ping=True
        )
        if parsed.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        # The pass lock: one per process, shared by the passes of its threads.
        self._lock_mutex = threading.Lock()
        self._lock_count = 0
        self._lock_handle: Any = None
        if upgrade:
            self.upgrade()

    # -- the pass lock ------------------------------------------------------

    @contextmanager
    def pass_lock(self) -> Iterator[LockHold]:
        """Hold the store's one actor lock for a pass, if no other process holds it.

        PostgreSQL: a session advisory lock on a connection kept for the pass. SQLite:
        an exclusive ``flock`` on ``<file>.lock`` (SQLite's own locks last one
        transaction, not a pass). The passes of one daemon's threads share one hold;
        the lock is released when the last of them ends, so a manual ``watchdogd check``
        can act between a daemon's passes but never during one.
        """
        with self._lock_mutex:
            if self._lock_count:
                self._lock_count += 1
                hold = LockHold(True, fresh=False)
            else:
                handle = self._take_lock()
                if handle is None:
                    hold = LockHold(False, reason=(
                        f"another watchdogd holds the lock of {self._safe_url}; this one "
                        "detects and reports but does not act"))
                else:
                    self._lock_handle, self._lock_count = handle, 1
                    hold = LockHold(True, fresh=True)
        try:
            yield hold
        finally:
            if hold.held:
                with self._lock_mutex:
                    self._lock_count -= 1
                    if not self._lock_count:
                        handle, self._lock_handle = self._lock_handle, None
                        self._drop_lock(handle)

    def lock_held(self) -> bool:
        """Whether this process still holds the pass lock (asked right before each action).

        A PostgreSQL session lock goes with its connection: a server restart or a
        dropped connection in the middle of a pass must stop the pass's actions.
        """
        with self._lock_mutex:
            if not self._lock_count:
                return False
            if self._backend != "postgresql":
                return True
            try:
                count = self._lock_handle.execute(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid() AND granted")).scalar_one()
                self._lock_handle.commit()
            except sa.exc.SQLAlchemyError:
                return False
            return bool(count)

    def _take_lock(self) -> Any:
        if self._backend == "postgresql":
            try:
                conn = self.engine.connect()
            except sa.exc.DBAPIError as exc:
                raise StoreError(f"state database {self._safe_url}: {_short(exc)}") from None
            try:
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"),
                                   {"key": ADVISORY_KEY}).scalar_one()
                conn.commit()
            except sa.exc.DBAPIError as exc:
                conn.close()
                raise StoreError(f"state database {self._safe_url}: {_short(exc)}") from None
            if not got:
                conn.close()
                return None
            return conn
        if self._lock_path is None:  # in-memory or another backend: one process only
            return True
        fd = self._open_lock_file()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"state lock {self._lock_path}: {exc.strerror}") from None
        return fd

    def _open_lock_file(self) -> int:
        assert self._lock_path is not None
        try:
            return os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"state lock {self._lock_path}: {exc.strerror}") from None

    def _drop_lock(self, handle: Any) -> None:
        if isinstance(handle, Connection):
            try:
                handle.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                handle.commit()
            except sa.exc.SQLAlchemyError:
                handle.invalidate()  # the session, and with it the lock, is gone anyway
            with suppress(sa.exc.SQLAlchemyError):
                handle.close()
        elif isinstance(handle, int) and not isinstance(handle, bool):
            os.close(handle)  # closing the descriptor releases the flock

    # -- schema -------------------------------------------------------------

    def schema_version(self) -> int:
        """The version recorded in the file, 0 for an empty database."""
        with self._begin() as conn:
            return self._version(conn)

    def _version(self, conn: Connection) -> int:
        if not sa.inspect(conn).has_table("meta"):
            if sa.inspect(conn).get_table_names():
                raise StoreError(f"{self._safe_url} holds tables but no watchdogd schema version")
            return 0
        row = conn.execute(
            sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
        ).first()
        return int(row[0]) if row else 0

    def upgrade(self) -> None:
        """Apply every migration the database has not seen yet, each in one transaction.

        Two processes starting on a new file at once (a manual run beside the CronJob)
        must not both create the tables: each step runs under a lock (a transaction-scoped
        advisory lock on PostgreSQL, the lock file on SQLite) and checks the version again.
        """
        try:
            with self._begin() as conn:
                version = self._version(conn)
        except StoreError:
            # pysqlite commits CREATE TABLE at once, so another process creating the schema
            # right now shows tables before its version row: look again once it is done.
            # Under the lock, tables without a version are a real problem, and raise.
            with self._upgrade_lock(), self._begin() as conn:
                version = self._version(conn)
        self._check_version(version)
        if version == SCHEMA_VERSION:
            return
        with self._upgrade_lock():
            for step in range(version + 1, SCHEMA_VERSION + 1):
                with self._begin() as conn:
                    if self._backend == "postgresql":
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                     {"key": ADVISORY_KEY + 1})
                    current = self._version(conn)
                    self._check_version(current)
                    if current >= step:
                        continue  # another process did this step meanwhile
                    self._migrate(conn, step)

    @staticmethod
    def _check_version(version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database schema version {version} is newer than this watchdogd "
                f"understands ({SCHEMA_VERSION}); upgrade watchdogd or point state.url elsewhere"
            )

    @contextmanager
    def _upgrade_lock(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        fd = self._open_lock_file()
        try:
            # Blocking: a pass of another process ends within its pass timeout.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _migrate(conn: Connection, step: int) -> None:
        MIGRATIONS[step](conn)
        conn.execute(sa.delete(meta_table).where(meta_table.c.key == "schema_version"))
        conn.execute(sa.insert(meta_table).values(key="schema_version", value=str(step)))

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise StoreError(f"state database {self._safe_url}: {_short(exc)}") from None
        except sa.exc.DatabaseError as exc:
            raise StoreError(f"state database {self._safe_url}: {_short(exc)}") from None

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()

    # -- findings -----------------------------------------------------------

    def track(
        self,
        check: str,
        target: str,
        findings: Sequence[Finding],
        now: datetime,
        *,
        announce_after: int,
        repeat_after: timedelta,
        resolve: bool = True,
        resolve_kinds: Collection[str] = (),
        write: bool = True,
        muted: Collection[str] = (),
        acked: Mapping[str, int] | None = None,
    ) -> tuple[list[Tracked], list[Resolved]]:
        """Match this pass's findings with the open ones; resolve the ones that vanished.

        Only call this for a complete pass, or with ``resolve=False`` for a partial
        one: an incomplete pass proves nothing about what vanished. A finding is
        announced once it has been seen ``announce_after`` passes in a row, so a
        one-pass blip never pages anyone. With ``write=False`` (a pass that does not act:
        a standby replica, a second process) the answer is computed and nothing is
        written: only the actor counts sightings and announces.

        ``muted`` (finding keys under a silence) get no event and keep what was announced
        of them, so the silence's end announces a finding that is still open (``new``,
        or a reminder when one is due). ``acked`` (stored key -> the severity
        acknowledged) get no reminders; an escalation past that severity still pages.
        ``resolve_kinds`` are resolved when not seen even with ``resolve=False``: what a
        partial pass disproves (the target did complete, so it is no longer
        ``check-failing``).
        """
        acked = acked or {}
        tracked: list[Tracked] = []
        resolved: list[Resolved] = []
        # One executemany per statement kind: a pass with thousands of findings (failed
        # pods, TLS secrets) must not compile thousands of statements.
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        with self._begin() as conn:
            rows = {
                row.key: row
                for row in conn.execute(
                    sa.select(findings_table).where(
                        findings_table.c.check_name == check,
                        findings_table.c.target == target,
                    )
                )
            }
            seen = set()
            for finding in findings:
                # Names from the outside world: stored without NUL or control characters.
                key = store_key(finding.key)
                seen.add(key)
                row = rows.get(key)
                values: dict[str, Any] = {
                    "severity": int(finding.severity),
                    "message": safe_text(finding.message),
                    "evidence": _json(without_secrets(finding.evidence)),
                    "last_seen": now,
                    "status": "open",
                    "resolved_at": None,
                }
                if row is None or row.status != "open":
                    first_seen, sightings = now, 1
                    notified_severity, notified_at = None, None
                else:
                    first_seen, sightings = row.first_seen, row.sightings + 1
                    notified_severity, notified_at = row.notified_severity, row.notified_at
                values.update(first_seen=first_seen, sightings=sightings)
                event = None
                if sightings >= announce_after:
                    if notified_at is None:
                        event = "new"
                    elif int(finding.severity) > (notified_severity or 0):
                        event = "escalated"
                    elif now - notified_at >= repeat_after:
                        event = "reminder"
                acked_reminder = (event == "reminder" and key in acked
                                  and int(finding.severity) <= acked[key])
                if finding.key in muted or acked_reminder:
                    event = None
                if event:
                    notified_severity, notified_at = int(finding.severity), now
                values.update(notified_severity=notified_severity, notified_at=notified_at)
                if row is None:
                    inserts.append({"key": key, "check_name": check, "target": target,
                                    "kind": finding.kind,
                                    "subject": safe_text(finding.subject, 700), **values})
                else:
                    updates.append({"b_key": key, **values})
                tracked.append(Tracked(finding, first_seen, sightings, event))
            if not write:
                inserts, updates = [], []
            if inserts:
                _each_or_set_aside(conn, sa.insert(findings_table), inserts, "finding", "key")
            if updates:
                _each_or_set_aside(conn, sa.update(findings_table).where(
                    findings_table.c.key == sa.bindparam("b_key")), updates, "finding", "b_key")
            gone: list[str] = []
            for key, row in rows.items():
                if (not resolve and row.kind not in resolve_kinds) or key in seen \
                        or row.status != "open":
                    continue
                gone.append(key)
                resolved.append(Resolved(
                    key, check, target, row.kind, row.subject, Severity(row.severity),
                    row.message, row.notified_at is not None,
                ))
            for start in range(0, len(gone) if write else 0, 500):
                conn.execute(sa.update(findings_table)
                             .where(findings_table.c.key.in_(gone[start:start + 500]))
                             .values(status="resolved", resolved_at=now))
        return tracked, resolved

    def reset_sightings(self, keys: Iterable[str], now: datetime | None = None) -> None:
        """Make these findings prove themselves again before any action.

        After a crash, and after every action: a server the user restarted must be
        seen missing ``confirm_after`` times again (and for ``min_age`` again, when
        ``now`` is given) before it can be stopped again.
        """
        keys = [store_key(k) for k in keys]
        if not keys:
            return
        values: dict[str, Any] = {"sightings": 0}
        if now is not None:
            values["first_seen"] = now
        with self._begin() as conn:
            conn.execute(sa.update(findings_table).where(findings_table.c.key.in_(keys))
                         .values(**values))

    def findings(self, *, status: str | None = "open") -> list[dict[str, Any]]:
        """Findings as plain dicts, newest first (for ``watchdogd findings``)."""
        query = sa.select(findings_table).order_by(findings_table.c.last_seen.desc())
        if status:
            query = query.where(findings_table.c.status == status)
        with self._begin() as conn:
            return [
                {
                    "key": r.key, "check": r.check_name, "target": r.target, "kind": r.kind,
                    "subject": r.subject, "severity": Severity(r.severity).label,
                    "message": r.message, "evidence": json.loads(r.evidence),
                    "status": r.status, "first_seen": r.first_seen, "last_seen": r.last_seen,
                    "sightings": r.sightings, "resolved_at": r.resolved_at,
                }
                for r in conn.execute(query)
            ]

    # -- marks ----------------------------------------------------------------

    def marks(self, check: str, target: str) -> dict[str, datetime]:
        """When each remembered condition of this check target was first seen."""
        with self._begin() as conn:
            return {
                unstore_key(r.mark): r.since
                for r in conn.execute(sa.select(marks_table).where(
                    marks_table.c.check_name == check, marks_table.c.target == target))
            }

    def set_marks(self, check: str, target: str, marks: Iterable[str], now: datetime) -> None:
        """Keep the marks still present (with their first time), add new ones, drop the rest."""
        wanted = {store_key(m) for m in marks}
        with self._begin() as conn:
            old = {
                r.mark for r in conn.execute(sa.select(marks_table.c.mark).where(
                    marks_table.c.check_name == check, marks_table.c.target == target))
            }
            gone = old - wanted
            if gone:
                conn.execute(sa.delete(marks_table).where(
                    marks_table.c.check_name == check, marks_table.c.target == target,
                    marks_table.c.mark.in_(gone)))
            new = wanted - old
            if new:
                conn.execute(sa.insert(marks_table), [
                    {"check_name": check, "target": target, "mark": m, "since": now} for m in new
                ])

    # -- actions (audit log) --------------------------------------------------

    def begin_action(
        self, pass_id: str, finding: Finding, action: Action, now: datetime
    ) -> int:
        """Write the intent, with the before-image, before anything is changed."""
        with self._begin() as conn:
            result = conn.execute(sa.insert(actions_table).values(
                pass_id=pass_id, finding_key=store_key(finding.key), name=action.name,
                source=action.source, target=safe_text(action.target), call=action.call,
                params=_json(dict(action.params)),
                before=_json(without_secrets(dict(action.before))),
                destructive=action.destructive, status="started", detail=None, started_at=now,
            ))
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def finish_action(self, action_id: int, status: str, detail: str, now: datetime) -> None:
        """Write the result of an action whose intent is already in the log."""
        with self._begin() as conn:
            conn.execute(sa.update(actions_table).where(actions_table.c.id == action_id)
                         .values(status=status, detail=safe_text(detail), finished_at=now))

    def actions_since(self, since: datetime, *, destructive_only: bool = True) -> int:
        """How many actions were attempted since ``since`` (for the hourly budget)."""
        query = sa.select(sa.func.count()).select_from(actions_table).where(
            actions_table.c.started_at >= since)
        if destructive_only:
            query = query.where(actions_table.c.destructive.is_(True))
        with self._begin() as conn:
            return int(conn.execute(query).scalar_one())

    def done_actions_by_finding(self, since: datetime) -> dict[str, int]:
        """How many actions were done per finding key (as stored: :func:`store_key`) since
        ``since``.

        Interrupted actions do not count: a crash before the request leaves the problem in
        place, and counting it would hold a repair that never happened.
        """
        query = (sa.select(actions_table.c.finding_key, sa.func.count())
                 .where(actions_table.c.started_at >= since,
                        actions_table.c.status == "done")
                 .group_by(actions_table.c.finding_key))
        with self._begin() as conn:
            return {str(key): int(count) for key, count in conn.execute(query)}

    def last_done_by_finding(self, keys: Iterable[str]) -> dict[str, datetime]:
        """When an action was last done for each of these finding keys (as given), if ever."""
        stored = {store_key(k): k for k in keys}
        if not stored:
            return {}
        query = (sa.select(actions_table.c.finding_key, sa.func.max(actions_table.c.started_at))
                 .where(actions_table.c.finding_key.in_(list(stored)),
                        actions_table.c.status == "done")
                 .group_by(actions_table.c.finding_key))
        with self._begin() as conn:
            return {stored[str(key)]: when for key, when in conn.execute(query)}

    def actions_between(self, since: datetime, until: datetime) -> list[ActionRecord]:
        """The actions started in ``[since, until)``, oldest first (for the weekly digest)."""
        query = (sa.select(actions_table)
                 .where(actions_table.c.started_at >= since, actions_table.c.started_at < until)
                 .order_by(actions_table.c.id))
        with self._begin() as conn:
            return [_action_record(r) for r in conn.execute(query)]

    def interrupted_actions(self) -> list[ActionRecord]:
        """Actions whose intent was written but whose result never was: a crash in between."""
        return self.actions(status="started")

    def actions(self, *, status: str | None = None, limit: int = 200,
                name: str | None = None) -> list[ActionRecord]:
        """The audit log, newest first (only actions called ``name``, when given)."""
        query = sa.select(actions_table).order_by(actions_table.c.id.desc()).limit(limit)
        if status:
            query = query.where(actions_table.c.status == status)
        if name:
            query = query.where(actions_table.c.name == name)
        with self._begin() as conn:
            return [_action_record(r) for r in conn.execute(query)]

    def action(self, action_id: int) -> ActionRecord | None:
        """One row of the audit log by id; None when there is none."""
        query = sa.select(actions_table).where(actions_table.c.id == action_id)
        with self._begin() as conn:
            row = conn.execute(query).first()
        return _action_record(row) if row is not None else None

    # -- outbox -----------------------------------------------------------------

    def enqueue(self, rows: Sequence[dict[str, Any]], now: datetime) -> int:
        """Queue notices (one row per destination); delivery happens elsewhere.

        One bad row never costs the others: when the batch cannot be stored, each row
        is stored alone; a row the database refuses (a NUL PostgreSQL cannot hold, a key
        too long for its column) is stored again with its text escaped and cut, set
        aside with the database's error, so it is visible in :meth:`outbox` instead of
        lost or blocking. Returns how many rows had to be set aside.
        """
        if not rows:
            return 0
        values = [self._outbox_values(row, now) for row in rows]
        try:
            with self._begin() as conn:
                conn.execute(sa.insert(outbox_table), values)
            return 0
        except StoreError:
            pass
        set_aside = 0
        for value in values:
            try:
                with self._begin() as conn:
                    conn.execute(sa.insert(outbox_table), [value])
                continue
            except StoreError as exc:
                error = f"could not be stored: {safe_text(str(exc), 300)}"
            # If even the escaped row cannot be stored the database itself is the
            # problem: that StoreError goes to the caller like any other.
            with self._begin() as conn:
                conn.execute(sa.insert(outbox_table), [{
                    **value,
                    **{name: safe_text(str(value.get(name) or ""), limit)
                       for name, limit in _OUTBOX_TEXT.items()},
                    "last_error": error, "set_aside_at": now}])
            set_aside += 1
        return set_aside

    @staticmethod
    def _outbox_values(row: dict[str, Any], now: datetime) -> dict[str, Any]:
        return {**row, "severity": int(row["severity"]), "created_at": now,
                "finding_key": store_key(str(row["finding_key"])),
                "title": _safe_lines(row.get("title")),
                "body": _safe_lines(row.get("body")),
                "attempts": 0, "next_attempt_at": now}

    def claim_once(self, mark: str, rows: Sequence[dict[str, Any]], now: datetime) -> bool:
        """Queue ``rows`` only if ``mark`` was never claimed before; whether this call did.

        The mark (a row of ``marks`` under the reserved check name ``once``) and the notices
        are written in one transaction, and the mark's primary key lets only one writer
        in: two replicas, or a restart, never queue the same weekly digest twice.
        """
        with self._begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(marks_table).values(
                        check_name=ONCE, target="", mark=store_key(mark), since=now))
            except sa.exc.IntegrityError:
                return False  # claimed before, by this process or another
            if rows:
                conn.execute(sa.insert(outbox_table),
                             [self._outbox_values(row, now) for row in rows])
        return True

    def claimed_at(self, mark: str) -> datetime | None:
        """When ``mark`` was claimed by :meth:`claim_once`, if it was."""
        with self._begin() as conn:
            return conn.execute(sa.select(marks_table.c.since).where(
                marks_table.c.check_name == ONCE, marks_table.c.target == "",
                marks_table.c.mark == store_key(mark))).scalar_one_or_none()

    def pending_notices(self, destination: str, now: datetime, limit: int = 100) -> list[Notice]:
        """The notices of one destination due now, in the order they were queued.

        Order is kept per finding: a notice waiting for its retry time holds back the
        later notices of its own finding (so "resolved" never arrives before "new"),
        and nothing else. Set-aside notices hold back nothing.
        """
        query = (sa.select(outbox_table)
                 .where(outbox_table.c.destination == destination,
                        outbox_table.c.delivered_at.is_(None),
                        outbox_table.c.set_aside_at.is_(None))
                 .order_by(outbox_table.c.id))
        notices: list[Notice] = []
        waiting: set[str] = set()
        with self._begin() as conn:
            for r in conn.execute(query):
                if r.finding_key in waiting:
                    continue
                if r.next_attempt_at > now:
                    waiting.add(r.finding_key)
                    continue
                notices.append(Notice(r.id, r.finding_key, r.event, Severity(r.severity),
                                      r.title, r.body, r.destination, r.attempts))
                if len(notices) >= limit:
                    break
        return notices

    def destinations_with_pending(self) -> list[str]:
        """Destinations that still have notices to deliver (set-aside ones do not count)."""
        with self._begin() as conn:
            return [r[0] for r in conn.execute(
                sa.select(outbox_table.c.destination).distinct()
                .where(outbox_table.c.delivered_at.is_(None),
                       outbox_table.c.set_aside_at.is_(None)))]

    def mark_delivered(self, notice_id: int, now: datetime) -> None:
        """Record a successful delivery."""
        with self._begin() as conn:
            conn.execute(sa.update(outbox_table).where(outbox_table.c.id == notice_id)
                         .values(delivered_at=now, attempts=outbox_table.c.attempts + 1))

    def mark_failed(self, notice_id: int, error: str, retry_at: datetime, *,
                    set_aside_at: datetime | None = None) -> None:
        """Record a failed attempt: retried from ``retry_at``, or set aside for good."""
        with self._begin() as conn:
            conn.execute(sa.update(outbox_table).where(outbox_table.c.id == notice_id)
                         .values(attempts=outbox_table.c.attempts + 1,
                                 last_error=safe_text(error, 500),
                                 next_attempt_at=retry_at, set_aside_at=set_aside_at))

    def outbox(self) -> list[dict[str, Any]]:
        """Every queued notice (for tests and ``watchdogd findings --outbox``)."""
        with self._begin() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(outbox_table).order_by(outbox_table.c.id))]

    def outbox_counts(self) -> dict[str, int]:
        """How many notices are queued, delivered and set aside."""
        state = sa.case((outbox_table.c.delivered_at.is_not(None), "delivered"),
                        (outbox_table.c.set_aside_at.is_not(None), "set_aside"),
                        else_="queued")
        counts = {"queued": 0, "delivered": 0, "set_aside": 0}
        with self._begin() as conn:
            for name, count in conn.execute(
                    sa.select(state, sa.func.count()).group_by(state)):
                counts[name] = count
        return counts

    # -- the map of users' disks ---------------------------------------------------

    def record_disks(self, check: str, target: str, records: Sequence[ClaimRecord],
                     now: datetime) -> tuple[int, int]:
        """Keep this complete pass's map of ``target`` as its new version, if it changed.

        Each claim's current row is compared with what the pass saw (by a digest of its
        content): an unchanged claim costs nothing, a changed one ends its row at ``now``
        and starts a new one, a claim no longer seen ends its row. Call it only with the
        map of a complete pass: a claim missing from a partial map would read as deleted.
        Returns (rows started, rows ended).
        """
        unique: dict[tuple[str, str, str], ClaimRecord] = {}
        for record in records:
            # two PVs naming one claim: the first (by PV name) is kept
            unique.setdefault((record.cluster, record.namespace, record.claim), record)
        lines = list(unique.values())
        # The whole map's digest first: an unchanged pass (the usual one) is one encode, one
        # hash and one read, however many claims there are. Encoded a chunk at a time, as
        # everything below: the map of a big cloud is never held twice in memory.
        hasher = hashlib.sha256()
        for start in range(0, len(lines), _CHUNK):
            hasher.update(_canonical([_disk_dict(r) for r in lines[start:start + _CHUNK]])
                          .encode())
        whole = hasher.hexdigest()
        meta_key = "disks:" + hashlib.sha256(f"{check}/{target}".encode()).hexdigest()[:40]
        started: list[dict[str, Any]] = []
        ended: list[int] = []
        inserted = 0
        with self._begin() as conn:
            last = conn.execute(sa.select(meta_table.c.value).where(
                meta_table.c.key == meta_key)).scalar_one_or_none()
            if last == whole:
                return 0, 0
            current = {
                (r.cluster, r.namespace, r.claim): (r.id, r.digest)
                for r in conn.execute(sa.select(
                    disks_table.c.id, disks_table.c.cluster, disks_table.c.namespace,
                    disks_table.c.claim, disks_table.c.digest).where(
                    disks_table.c.check_name == check, disks_table.c.target == target,
                    disks_table.c.valid_to.is_(None)))
            }
            seen: set[tuple[str, str, str]] = set()
            for record in lines:
                key = (_col(record.cluster), _col(record.namespace), _col(record.claim))
                if key in seen:
                    continue  # two names that escape alike: the first is kept
                seen.add(key)
                body = _canonical(_disk_dict(record))
                digest = hashlib.sha256(body.encode()).hexdigest()
                row = current.get(key)
                if row is not None and row[1] == digest:
                    continue
                if row is not None:
                    ended.append(row[0])
                started.append({"check_name": check, "target": target, "cluster": key[0],
                                "namespace": key[1], "claim": key[2], "manifest": body,
                                "digest": digest, "valid_from": now, "valid_to": None})
                if len(started) >= _CHUNK:
                    conn.execute(sa.insert(disks_table), started)
                    inserted, started = inserted + len(started), []
            if started:
                conn.execute(sa.insert(disks_table), started)
                inserted += len(started)
            ended += [row_id for key, (row_id, _) in current.items() if key not in seen]
            for start in range(0, len(ended), 500):
                conn.execute(sa.update(disks_table)
                             .where(disks_table.c.id.in_(ended[start:start + 500]))
                             .values(valid_to=now))
            conn.execute(sa.delete(meta_table).where(meta_table.c.key == meta_key))
            conn.execute(sa.insert(meta_table).values(key=meta_key, value=whole))
        return inserted, len(ended)

    def disks(self, at: datetime | None = None) -> list[dict[str, Any]]:
        """The map of users' disks as it is now, or as it was at ``at``, in claim order.

        Each entry is what the pass recorded (exact names, the manifest data) with the
        check target and the time the version began (and ended, if it has).
        """
        query = sa.select(disks_table.c.target, disks_table.c.manifest,
                          disks_table.c.valid_from, disks_table.c.valid_to)
        if at is None:
            query = query.where(disks_table.c.valid_to.is_(None))
        else:
            query = query.where(disks_table.c.valid_from <= at, sa.or_(
                disks_table.c.valid_to.is_(None), disks_table.c.valid_to > at))
        with self._begin() as conn:
            rows = [{**json.loads(r.manifest), "target": r.target, "valid_from": r.valid_from,
                     "valid_to": r.valid_to} for r in conn.execute(query)]
        rows.sort(key=lambda r: (str(r["target"]), str(r["cluster"]), str(r["namespace"]),
                                 str(r["claim"])))
        return rows

    def disks_recorded_since(self) -> datetime | None:
        """When the first map was recorded (an ``--at`` before it knows nothing)."""
        with self._begin() as conn:
            return conn.execute(sa.select(sa.func.min(disks_table.c.valid_from))
                                ).scalar_one_or_none()

    # -- passes -------------------------------------------------------------------

    def record_pass(self, pass_id: str, check: str, target: str, started: datetime,
                    finished: datetime, status: str, error: str | None) -> None:
        """Remember one pass of one check target (for health and the CronJob mode)."""
        with self._begin() as conn:
            conn.execute(sa.insert(passes_table).values(
                id=pass_id, check_name=check, target=target, started_at=started,
                finished_at=finished, status=status,
                error=None if error is None else safe_text(error)))
            conn.execute(sa.delete(passes_table).where(
                passes_table.c.finished_at < finished - timedelta(days=30)))

    def failing_since(self, check: str, target: str) -> tuple[int, datetime | None]:
        """The passes of this check target in ``error`` since its last completed one.

        Returns how many there were and when the first of them started (None when the
        last recorded pass completed). Read from the store, so that one ``watchdogd check``
        per interval (a CronJob, a timer) counts the passes of the processes before it.
        """
        completed = (sa.select(sa.func.max(passes_table.c.finished_at))
                     .where(passes_table.c.check_name == check,
                            passes_table.c.target == target,
                            passes_table.c.status != "error")
                     .scalar_subquery())
        query = (sa.select(sa.func.count(), sa.func.min(passes_table.c.started_at))
                 .where(passes_table.c.check_name == check, passes_table.c.target == target,
                        passes_table.c.status == "error",
                        sa.or_(completed.is_(None), passes_table.c.finished_at > completed)))
        with self._begin() as conn:
            count, first = conn.execute(query).one()
        return int(count), first

    def passes_between(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """The passes that finished in ``[since, until)``, oldest first (for the digest)."""
        query = (sa.select(passes_table)
                 .where(passes_table.c.finished_at >= since, passes_table.c.finished_at < until)
                 .order_by(passes_table.c.finished_at))
        with self._begin() as conn:
            return [{"id": r.id, "check": r.check_name, "target": r.target,
                     "started_at": r.started_at, "finished_at": r.finished_at,
                     "status": r.status, "error": r.error} for r in conn.execute(query)]

    def last_pass(self, check: str, target: str) -> datetime | None:
        """When the last pass of this check target finished, if any."""
        with self._begin() as conn:
            return conn.execute(sa.select(sa.func.max(passes_table.c.finished_at)).where(
                passes_table.c.check_name == check, passes_table.c.target == target)
            ).scalar_one_or_none()


    def last_successes(self) -> dict[tuple[str, str], datetime]:
        """(check, target) -> when its last completed (not ``error``) pass finished."""
        with self._begin() as conn:
            return {(check, target): finished for check, target, finished in conn.execute(
                sa.select(passes_table.c.check_name, passes_table.c.target,
                          sa.func.max(passes_table.c.finished_at))
                .where(passes_table.c.status != "error")
                .group_by(passes_table.c.check_name, passes_table.c.target))}


    # -- silences and acknowledgements ----------------------------------------------

    def add_silence(self, *, reason: str, created_by: str, now: datetime,
                    expires_at: datetime, check: str | None = None, target: str | None = None,
                    kind: str | None = None, subject: str | None = None,
                    allow_actions: bool = False) -> Silence:
        """Record a silence; returns it with its id."""
        values = {"check_name": check, "target": target, "kind": kind, "subject": subject,
                  "allow_actions": allow_actions, "reason": safe_text(reason),
                  "created_by": safe_text(created_by, 255), "created_at": now,
                  "expires_at": expires_at}
        with self._begin() as conn:
            new_id = conn.execute(sa.insert(silences_table).values(**values)).inserted_primary_key
        assert new_id is not None
        return self._silence(self._silence_row(int(new_id[0])))

    def silences(self, now: datetime, *, include_expired: bool = False) -> list[Silence]:
        """The silences in force at ``now`` (with ``include_expired``, every one), oldest first."""
        query = sa.select(silences_table).order_by(silences_table.c.id)
        if not include_expired:
            query = query.where(silences_table.c.expired_at.is_(None),
                                silences_table.c.expires_at > now)
        with self._begin() as conn:
            return [self._silence(row) for row in conn.execute(query)]

    def expire_silence(self, silence_id: int, by: str,
                       now: datetime) -> tuple[Silence | None, bool]:
        """End a silence now: (the silence or None if there is none, whether this ended it).

        Ending one that already ended (by hand or by time) changes nothing.
        """
        with self._begin() as conn:
            changed = conn.execute(sa.update(silences_table).where(
                silences_table.c.id == silence_id, silences_table.c.expired_at.is_(None),
                silences_table.c.expires_at > now).values(
                expired_at=now, expired_by=safe_text(by, 255))).rowcount
        row = self._silence_row(silence_id)
        return (None if row is None else self._silence(row)), bool(changed)

    def _silence_row(self, silence_id: int) -> Any:
        with self._begin() as conn:
            return conn.execute(sa.select(silences_table).where(
                silences_table.c.id == silence_id)).one_or_none()

    @staticmethod
    def _silence(row: Any) -> Silence:
        return Silence(id=row.id, reason=row.reason, created_by=row.created_by,
                       created_at=row.created_at, expires_at=row.expires_at,
                       check=row.check_name, target=row.target, kind=row.kind,
                       subject=row.subject, allow_actions=bool(row.allow_actions),
                       expired_at=row.expired_at, expired_by=row.expired_by)

    def ack(self, key: str, by: str, now: datetime) -> Severity:
        """Acknowledge the open finding stored under ``key``; returns its severity.

        Raises KeyError when no open finding has that key.
        """
        with self._begin() as conn:
            row = conn.execute(sa.select(findings_table.c.severity).where(
                findings_table.c.key == key, findings_table.c.status == "open")).one_or_none()
            if row is None:
                raise KeyError(key)
            conn.execute(sa.delete(acks_table).where(acks_table.c.finding_key == key))
            conn.execute(sa.insert(acks_table).values(
                finding_key=key, severity=row.severity, acked_by=safe_text(by, 255),
                acked_at=now))
        return Severity(row.severity)

    def use_ack_link(self, nonce: str, key: str, by: str, now: datetime,
                     expires: datetime) -> Severity:
        """Honour one acknowledge link: record its nonce and acknowledge ``key``, atomically.

        Raises :class:`LinkUsed` when the nonce was used before, KeyError when no open
        finding has that key (resolved since the link was sent); in both cases nothing is
        written. Nonces of links that have expired are forgotten here.
        """
        with self._begin() as conn:
            conn.execute(sa.delete(ack_links_table).where(ack_links_table.c.expires_at < now))
            try:
                # The primary key makes the use single even between two replicas at once.
                with conn.begin_nested():
                    conn.execute(sa.insert(ack_links_table).values(
                        nonce=nonce, finding_key=key, used_at=now, expires_at=expires))
            except sa.exc.IntegrityError:
                raise LinkUsed(nonce) from None
            row = conn.execute(sa.select(findings_table.c.severity).where(
                findings_table.c.key == key, findings_table.c.status == "open")).one_or_none()
            if row is None:
                raise KeyError(key)  # rolls the nonce back: the link was not used
            conn.execute(sa.delete(acks_table).where(acks_table.c.finding_key == key))
            conn.execute(sa.insert(acks_table).values(
                finding_key=key, severity=row.severity, acked_by=safe_text(by, 255),
                acked_at=now))
        return Severity(row.severity)

    def acks(self) -> dict[str, int]:
        """Stored finding key -> the severity acknowledged."""
        with self._begin() as conn:
            return {row.finding_key: row.severity
                    for row in conn.execute(sa.select(acks_table))}

    def clear_acks(self, keys: Iterable[str]) -> None:
        """End the acknowledgements of these stored keys (resolved, or escalated past them)."""
        wanted = list(keys)
        with self._begin() as conn:
            for start in range(0, len(wanted), 500):
                conn.execute(sa.delete(acks_table).where(
                    acks_table.c.finding_key.in_(wanted[start:start + 500])))


def _action_record(r: Any) -> ActionRecord:
    return ActionRecord(r.id, r.pass_id, unstore_key(r.finding_key), r.name, r.target,
                        json.loads(r.params), json.loads(r.before), bool(r.destructive),
                        r.status, r.detail, r.started_at, r.finished_at)


def _col(value: str, limit: int = 255) -> str:
    """A name for a map column (shown and searched); the exact one is in the JSON."""
    if len(value) <= limit and value.isascii() and value.isprintable():
        return value  # a Kubernetes name: nothing to escape (the common case, made cheap)
    return safe_text(value, limit)


def _disk_dict(record: ClaimRecord) -> dict[str, Any]:
    """One claim of the map as stored, with exact names (JSON escapes control characters).

    The check masked what could hold a credential (the CSI volume attributes); running
    :func:`without_secrets` over every manifest again cost most of an unchanged pass.
    """
    # The check leaves empty parts of the manifest out already: no copy of it here (the map
    # of a big cloud is encoded every pass, and every object made then is the GC's work).
    return {"cluster": record.cluster, "namespace": record.namespace, "claim": record.claim,
            "pv": record.pv, "volume_id": record.volume_id, "user": record.user,
            "user_source": record.user_source, "size": record.size,
            "reclaim_policy": record.reclaim_policy, "manifest": record.manifest}


#: claims encoded, compared and written at a time by :meth:`Store.record_disks`
_CHUNK = 1000

#: one encoder for every row: ``json.dumps`` with options builds a new one per call, which
#: was most of the cost of writing 21,000 rows
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


def _safe_lines(value: Any) -> Any:
    """Text with each of its lines made safe (None, for the database to refuse, stays)."""
    if value is None:
        return None
    return "\n".join(safe_text(line) for line in str(value).split("\n"))


def _each_or_set_aside(conn: Connection, statement: Any, rows: list[dict[str, Any]],
                       what: str, key: str) -> None:
    """Write ``rows`` in one go; if the database refuses the batch, row by row.

    A row the database still refuses (a value no text sanitising foresaw) is set aside
    with a log line: the rest of the pass is stored, and its notices go out.
    """
    try:
        with conn.begin_nested():
            conn.execute(statement, rows)
        return
    except sa.exc.DBAPIError:
        pass
    for row in rows:
        try:
            with conn.begin_nested():
                conn.execute(statement, [row])
        except sa.exc.DBAPIError as exc:
            import structlog  # noqa: PLC0415

            structlog.get_logger("watchdogd.store").error(
                f"{what} set aside: the state database refused it",
                key=safe_text(row.get(key), 200), error=_short(exc))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets `watchdogd findings` read while the daemon writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _short(exc: sa.exc.DBAPIError | sa.exc.OperationalError) -> str:
    """The driver's message without the SQL statement and parameters SQLAlchemy appends."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__

