"""The hub database, read only: which servers the hub believes are running.

"Running" is ``spawners.server_id IS NOT NULL``: the hub sets it before a start
and clears it, with ``started`` and the ``servers`` row, on stop. Pending states
are never stored (only the REST API shows them). The spawner's JSON ``state``
tells where the pod is (KubeSpawner keeps ``pod_name`` and ``namespace``, even
after a stop). Works on JupyterHub 5.x and 6.x schemas, SQLite and PostgreSQL.

watchdogd never writes here: the hub is the only writer of its database.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from watchdogd.config import HubConfig
from watchdogd.model import SourceError
from watchdogd.sources.base import count_request
from watchdogd.times import iso
from watchdogd.urls import sqlalchemy_url

__all__ = ["KNOWN_SCHEMAS", "HubDbSource"]

#: alembic revisions we have read the schema of; others are read, but reported.
KNOWN_SCHEMAS = {"4621fec11365": "5.x", "f460b0348206": "6.x"}

_meta = sa.MetaData()
users = sa.Table("users", _meta, sa.Column("id", sa.Integer), sa.Column("name", sa.Unicode))
spawners = sa.Table(
    "spawners", _meta,
    sa.Column("id", sa.Integer), sa.Column("user_id", sa.Integer),
    sa.Column("server_id", sa.Integer), sa.Column("state", sa.Text),
    sa.Column("name", sa.Unicode), sa.Column("started", sa.DateTime),
    sa.Column("last_activity", sa.DateTime),
)
servers = sa.Table(
    "servers", _meta,
    sa.Column("id", sa.Integer), sa.Column("proto", sa.Unicode), sa.Column("ip", sa.Unicode),
    sa.Column("port", sa.Integer), sa.Column("base_url", sa.Unicode),
)
alembic_version = sa.Table("alembic_version", _meta, sa.Column("version_num", sa.Unicode))


class HubDbSource:
    """Read-only view of one hub's database."""

    def __init__(self, target: str, config: HubConfig) -> None:
        if config.db_url is None:
            raise ValueError(f"hubs.{target}: db_url_file is not set")
        self.target = target
        self.timeout = config.timeout.total_seconds()
        self.engine = _readonly_engine(config.db_url.get_secret_value(), self.timeout)

    def sessions(self) -> dict[str, Any]:
        """Users and running spawners, read in one read-only transaction."""
        count_request()
        try:
            with self.engine.connect() as raw:
                # One snapshot for all three queries; the session is read only too.
                conn = (raw.execution_options(isolation_level="REPEATABLE READ")
                        if raw.dialect.name == "postgresql" else raw)
                with conn.begin():
                    schema = conn.execute(sa.select(alembic_version.c.version_num)).scalar()
                    names = [row[0] for row in conn.execute(sa.select(users.c.name))]
                    rows = conn.execute(
                        sa.select(
                            users.c.name.label("user"), spawners.c.name.label("server_name"),
                            spawners.c.server_id, spawners.c.state, spawners.c.started,
                            spawners.c.last_activity, servers.c.proto, servers.c.ip,
                            servers.c.port, servers.c.base_url,
                        )
                        .select_from(spawners.join(users, users.c.id == spawners.c.user_id)
                                     .outerjoin(servers, servers.c.id == spawners.c.server_id))
                        .where(spawners.c.server_id.is_not(None))
                    ).all()
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError("hubdb", self.target, _cause(exc)) from None
        running = [_running(row) for row in rows]
        return {
            "schema": schema,
            "schema_known": schema in KNOWN_SCHEMAS,
            "users": names,
            "running": running,
        }

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()


def _running(row: Any) -> dict[str, Any]:
    try:
        state = json.loads(row.state) if row.state else {}
    except ValueError:
        state = {}
    if not isinstance(state, dict):
        state = {}
    url = None
    if row.ip is not None and row.port is not None:
        url = f"{row.proto or 'http'}://{row.ip}:{row.port}"
    return {
        "user": row.user,
        "server_name": row.server_name or "",
        "server_id": row.server_id,
        "state": state,
        "started": _iso(row.started),
        "last_activity": _iso(row.last_activity),
        "url": url,
        "base_url": row.base_url,
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # the hub stores naive UTC
        value = value.replace(tzinfo=UTC)
    return iso(value)


def _readonly_engine(url: str, timeout: float) -> sa.Engine:
    try:
        # An unescaped "@" in the password must not make part of it the host name.
        parsed = sqlalchemy_url(url)
    except ValueError:
        raise ValueError("the hub db_url is not a valid SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database or ""

        def connect() -> sqlite3.Connection:
            # mode=ro: even a bug here cannot write the hub's file.
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout,
                                   check_same_thread=False)

        return sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        ms = int(timeout * 1000)
        return sa.create_engine(
            parsed,
            connect_args={
                "connect_timeout": max(1, int(timeout)),
                "options": f"-c statement_timeout={ms} -c default_transaction_read_only=on",
            },
            pool_pre_ping=True,
        )
    return sa.create_engine(parsed, pool_pre_ping=True)


def _cause(exc: sa.exc.SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "no such table" in first or ("does not exist" in first and "relation" in first):
        return f"not a JupyterHub database ({first})"
    return first[:300]
