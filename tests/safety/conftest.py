"""The safety suite's fixtures and its end-of-run summary (see :mod:`tests.safety.stats`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tests.integration.conftest import require_or_skip
from tests.peers.postgres import RealPostgres, postgres_available
from tests.safety.stats import STATS


@pytest.fixture(autouse=True)
def quiet_structlog() -> Iterator[None]:
    """Warnings only: a hundred passes of info lines slow the suite and say nothing new."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.fixture(scope="session")
def postgres() -> Iterator[RealPostgres]:
    """A real PostgreSQL server on a free port, for the state store's stress tests."""
    require_or_skip(postgres_available())
    with RealPostgres() as server:
        yield server


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the safety suite generated, injected and survived."""
    counts = STATS.snapshot()
    if not any(counts.values()):
        return
    terminalreporter.section("watchdogd safety summary")
    terminalreporter.write_line(STATS.render())
    target = os.environ.get("SAFETY_SUMMARY")
    if target:
        STATS.write(target)
