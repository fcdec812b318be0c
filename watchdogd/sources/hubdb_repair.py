"""The hub database, read-write: clearing one stuck session, and putting it back.

Only ``watchdogd repair-session`` and ``watchdogd undo`` use this module, never the
daemon (whose hub database source, :mod:`watchdogd.sources.hubdb`, opens the database
read only). The hub caches its database in memory and writes it back, so the commands
refuse while the hub runs; this module only does the SQL, each change in one transaction
that re-reads the rows it changes first (``FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite) and rolls back everything when anything is not as expected.

Rows are read and written as the database driver gives them (no SQLAlchemy types), so
that a restored row is the archived row byte for byte: SQLite's datetime text stays that
text, PostgreSQL's timestamps stay naive ``datetime`` objects. :func:`archive_row` turns
a row into JSON-safe data for the audit log and :func:`restore_row` back.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from watchdogd.config import HubConfig
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sources.base import count_request
from watchdogd.sources.hubdb import KNOWN_SCHEMAS, _cause
from watchdogd.urls import sqlalchemy_url

__all__ = ["SESSION_STATE_KEYS", "HubDbWriter", "Row", "SessionRows", "archive_row",
           "restore_row"]

#: Keys of ``spawners.state`` that only mean something while the server runs: the pid of
#: a local process (LocalProcessSpawner, and spawners built on it). KubeSpawner keeps its
#: keys (``pod_name``, ``namespace``, ``pvc_name``...) after a stop, and ``pvc_name`` must
#: survive or the user's next server gets another volume; they are left as they are.
SESSION_STATE_KEYS = ("pid",)

#: The columns of ``spawners`` that the repair changes (and the undo puts back).
SPAWNER_COLUMNS = ("server_id", "started", "state")


@dataclass(frozen=True)
class Row:
    """One database row as the driver gives it: column names and raw values, in order."""

    table: str
    columns: tuple[str, ...]
    values: tuple[Any, ...]

    def get(self, column: str) -> Any:
        """The value of ``column``."""
        return self.values[self.columns.index(column)]

    def with_values(self, changes: Mapping[str, Any]) -> Row:
        """This row with some columns changed."""
        return replace(self, values=tuple(changes.get(c, v)
                                          for c, v in zip(self.columns, self.values,
                                                          strict=True)))


@dataclass(frozen=True)
class SessionRows:
    """What one user's server is in the hub database: its spawner row and server row."""

    schema: str | None
    user_id: int
    spawner: Row
    #: the ``servers`` row the spawner points at; None when it points nowhere
    server: Row | None


def archive_row(row: Row) -> dict[str, Any]:
    """``row`` as JSON-safe data for the audit log, every value restorable exactly.

    Columns and values are two lists, not one object: the audit log masks the values of
    keys that name a credential (``servers.cookie_name``), and an undo needs them all.
    """
    return {"table": row.table, "columns": list(row.columns),
            "values": [_archive_value(v) for v in row.values]}


def restore_row(data: Mapping[str, Any]) -> Row:
    """The row :func:`archive_row` archived; ValueError when the archive is malformed."""
    try:
        table, columns, values = data["table"], data["columns"], data["values"]
    except (KeyError, TypeError):
        raise ValueError("not an archived row") from None
    if not (isinstance(table, str) and isinstance(columns, list) and isinstance(values, list)
            and len(columns) == len(values) and all(isinstance(c, str) for c in columns)):
        raise ValueError("not an archived row")
    return Row(table, tuple(columns), tuple(_restore_value(v) for v in values))


def _archive_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, dict | list):  # a json/jsonb column: kept as its text
        return {"$json": json.dumps(value, sort_keys=False)}
    raise ValueError(f"a value of type {type(value).__name__} cannot be archived exactly")


def _restore_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError("not an archived value")
    [(marker, text)] = value.items()
    if not isinstance(text, str):
        raise ValueError("not an archived value")
    if marker == "$base64":
        return base64.b64decode(text, validate=True)
    if marker == "$datetime":
        return datetime.fromisoformat(text)
    if marker == "$date":
        return date.fromisoformat(text)
    if marker == "$json":
        return json.loads(text)
    raise ValueError(f"unknown archive marker {marker!r}")


class HubDbWriter:
    """Read-write access to one hub's database, for the operator commands only."""

    def __init__(self, target: str, config: HubConfig) -> None:
        if config.db_url is None:
            raise ValueError(f"hubs.{target}.db_url_file: not set")
        self.target = target
        self.timeout = config.timeout.total_seconds()
        self.engine = _writable_engine(config.db_url.get_secret_value(), self.timeout)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def read_session(self, user: str, server_name: str = "") -> SessionRows | None:
        """The spawner and server rows of ``user``'s server ``server_name`` ('' the default
        one); None when the user or that server does not exist."""
        with self._transaction() as conn:
            return self._read(conn, user, server_name, lock=False)

    def clear_session(self, expected: SessionRows, state: str | None) -> SessionRows:
        """Clear the session ``expected`` describes: the spawner's ``server_id`` and
        ``started`` become NULL and its ``state`` becomes ``state``; the ``servers`` row is
        deleted. One transaction, refused (PreconditionFailed) unless both rows are still
        exactly ``expected``. Returns the rows as they are after the change."""
        with self._transaction() as conn:
            now = self._read(conn, _user_name(conn, expected.user_id), _spawner_name(expected),
                             lock=True)
            if now != expected:
                raise PreconditionFailed("the session's rows changed since they were shown; "
                                         "nothing was written")
            spawners = _table(conn, "spawners")
            changed = _execute(conn, sa.update(spawners)
                               .where(spawners.c.id == expected.spawner.get("id"))
                               .values(server_id=None, started=None, state=state))
            if changed != 1:
                raise PreconditionFailed(f"updated {changed} spawner rows, not 1; rolled back")
            if expected.server is not None:
                servers = _table(conn, "servers")
                gone = _execute(conn, sa.delete(servers)
                                .where(servers.c.id == expected.server.get("id")))
                if gone != 1:
                    raise PreconditionFailed(f"deleted {gone} server rows, not 1; rolled back")
            after = self._read(conn, _user_name(conn, expected.user_id),
                               _spawner_name(expected), lock=False)
            assert after is not None
            return after

    def restore_session(self, before: SessionRows, after: SessionRows) -> None:
        """Put back the rows :meth:`clear_session` changed: the ``servers`` row with its
        own id and the spawner's columns. One transaction, refused (PreconditionFailed)
        unless the spawner's changed columns are still what the repair left and no
        ``servers`` row has taken that id."""
        with self._transaction() as conn:
            now = self._read(conn, _user_name(conn, before.user_id), _spawner_name(before),
                             lock=True)
            if now is None or now.spawner.get("id") != before.spawner.get("id"):
                raise PreconditionFailed("the user's server is no longer in the hub database")
            if now.spawner == before.spawner and now.server == before.server:
                return  # already restored (an undo run twice, or interrupted after commit)
            for column in SPAWNER_COLUMNS:
                if now.spawner.get(column) != after.spawner.get(column):
                    raise PreconditionFailed(
                        f"spawners.{column} changed since the repair (the hub ran, or the "
                        "user started a server): restoring would overwrite it")
            if before.server is not None:
                servers = _table(conn, "servers")
                if _rows(conn, servers, servers.c.id == before.server.get("id")):
                    raise PreconditionFailed(
                        f"servers.id {before.server.get('id')} is used by another row now")
                missing = set(before.server.columns) - set(servers.c.keys())
                if missing:
                    raise PreconditionFailed(f"the servers table has no column {min(missing)} "
                                             "any more (a schema upgrade since the repair?)")
                _execute(conn, sa.insert(servers).values(dict(zip(
                    before.server.columns, before.server.values, strict=True))))
            spawners = _table(conn, "spawners")
            changed = _execute(conn, sa.update(spawners)
                               .where(spawners.c.id == before.spawner.get("id"))
                               .values({c: before.spawner.get(c) for c in SPAWNER_COLUMNS}))
            if changed != 1:
                raise PreconditionFailed(f"updated {changed} spawner rows, not 1; rolled back")

    def _read(self, conn: sa.Connection, user: str, server_name: str, *,
              lock: bool) -> SessionRows | None:
        count_request()
        version = _table(conn, "alembic_version")
        schema = conn.execute(sa.select(version.c.version_num)).scalar()
        users = _table(conn, "users")
        user_id = conn.execute(sa.select(users.c.id).where(users.c.name == user)).scalar()
        if user_id is None:
            return None
        spawners = _table(conn, "spawners")
        # The default server's spawner is named '' (hubs before 1.0: NULL).
        named = spawners.c.name == server_name
        if not server_name:
            named = sa.or_(named, spawners.c.name.is_(None))
        found = _rows(conn, spawners, sa.and_(spawners.c.user_id == user_id, named), lock=lock)
        if not found:
            return None
        if len(found) > 1:
            raise PreconditionFailed(f"{len(found)} spawner rows for one server: not a "
                                     "state this command knows how to repair")
        [spawner] = found
        server = None
        server_id = spawner.get("server_id")
        if server_id is not None:
            servers = _table(conn, "servers")
            rows = _rows(conn, servers, servers.c.id == server_id, lock=lock)
            server = rows[0] if rows else None
        return SessionRows(schema, int(user_id), spawner, server)

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError("hubdb", self.target, _cause(exc)) from None

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()


def schema_known(schema: str | None) -> bool:
    """Whether ``schema`` is an alembic revision whose tables this module has read."""
    return schema in KNOWN_SCHEMAS


def _spawner_name(rows: SessionRows) -> str:
    return str(rows.spawner.get("name") or "")


def _user_name(conn: sa.Connection, user_id: int) -> str:
    users = _table(conn, "users")
    name = conn.execute(sa.select(users.c.name).where(users.c.id == user_id)).scalar()
    if name is None:
        raise PreconditionFailed("the user is no longer in the hub database")
    return str(name)


def _table(conn: sa.Connection, name: str) -> sa.TableClause:
    """``name`` with every column it has now, untyped: values pass as the driver gives
    and takes them (no SQLAlchemy type conversion), which keeps them exact."""
    columns = [str(c["name"]) for c in sa.inspect(conn).get_columns(name)]
    if not columns:
        raise PreconditionFailed(f"the hub database has no table {name}")
    return sa.table(name, *(sa.column(c) for c in columns))


def _rows(conn: sa.Connection, table: sa.TableClause, where: sa.ColumnElement[bool], *,
          lock: bool = False) -> list[Row]:
    query = sa.select(*table.c).where(where).order_by(table.c.id)
    if lock:
        query = query.with_for_update()  # PostgreSQL; SQLite holds BEGIN IMMEDIATE's lock
    result = conn.execute(query)
    columns = tuple(str(c.name) for c in table.c)
    return [Row(table.name, columns, tuple(r)) for r in result]


def _execute(conn: sa.Connection, statement: sa.Executable) -> int:
    count_request()
    return int(getattr(conn.execute(statement), "rowcount", -1))


def _writable_engine(url: str, timeout: float) -> sa.Engine:
    try:
        parsed = sqlalchemy_url(url)
    except ValueError:
        raise ValueError("the hub db_url is not a valid SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database or ""
        if not path or path == ":memory:" or not Path(path).is_file():
            raise ValueError("the hub db_url names no existing SQLite file")

        def connect() -> sqlite3.Connection:
            # mode=rw: never create a new, empty database for a mistyped path.
            # isolation_level=None: the "begin" hook below issues BEGIN IMMEDIATE itself,
            # so the write lock is taken before the rows are re-read, not at the first write.
            conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys=ON")  # as the hub's own engine does
            return conn

        engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        ms = int(timeout * 1000)
        return sa.create_engine(
            parsed, poolclass=sa.pool.NullPool,
            connect_args={"connect_timeout": max(1, int(timeout)),
                          "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"})
    raise ValueError(f"the hub db_url's database ({backend}) is not SQLite or PostgreSQL")
