"""Real peers shared by the integration tests, started once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.peers.postgres import RealPostgres, postgres_available


def require_or_skip(reason: str | None) -> None:
    """Skip for a missing peer, unless the run demands every peer (CI does)."""
    if reason is None:
        return
    if os.environ.get("WATCHDOGD_REQUIRE_PEERS"):
        pytest.fail(f"required peer missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[RealPostgres]:
    """A real PostgreSQL server on a free port."""
    require_or_skip(postgres_available())
    with RealPostgres() as server:
        yield server
