"""The state store on a real PostgreSQL server."""

from __future__ import annotations

import pytest

from tests import store_cases
from tests.peers.postgres import RealPostgres
from watchdogd.store import Store

pytestmark = pytest.mark.integration


def test_store_on_postgresql(postgres: RealPostgres) -> None:
    store = Store(postgres.create_database("wd_store"))
    store_cases.lifecycle(store)
    store_cases.audit_and_outbox(store)
    store_cases.marks(store)
    store.close()


def test_upgrade_from_schema_1_on_postgresql(postgres: RealPostgres) -> None:
    store_cases.upgrade_from_version_1(postgres.create_database("wd_upgrade"))
