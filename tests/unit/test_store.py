"""The state store on SQLite: lifecycle, audit, outbox, schema versions, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import store_cases
from watchdogd.store import Store, StoreError


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path}/state.db")


def test_finding_lifecycle(store: Store) -> None:
    store_cases.lifecycle(store)


def test_audit_log_and_outbox(store: Store) -> None:
    store_cases.audit_and_outbox(store)


def test_marks_keep_their_first_time(store: Store) -> None:
    store_cases.marks(store)


def test_upgrade_from_schema_1(tmp_path: Path) -> None:
    store_cases.upgrade_from_version_1(f"sqlite:///{tmp_path}/old.db")


def test_disk_map_keeps_its_history(store: Store) -> None:
    store_cases.disk_map_history(store)


def test_upgrade_from_schema_4_adds_the_disk_map(tmp_path: Path) -> None:
    store_cases.upgrade_from_version_4(f"sqlite:///{tmp_path}/v4.db")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(url)


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/other.db"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER)"))
    with pytest.raises(StoreError, match="no watchdogd schema version"):
        Store(url)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(StoreError, match="state database"):
        Store(f"sqlite:///{path}")


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"sqlite:///{tmp_path}/nope/state.db")
