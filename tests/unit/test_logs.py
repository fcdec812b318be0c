"""Log lines: JSON when not on a TTY (libraries and warnings included), readable on a TTY,
and secrets masked even when a caller slips."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from watchdogd import logs


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_watchdogd", False):
            root.removeHandler(handler)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    logs.configure(stream=out)
    structlog.get_logger("watchdogd.engine").info("action started", action="stop-server",
                                                  target="main")
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed", "x")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("influxdb is deprecated", DeprecationWarning, stacklevel=1)
    records = lines(out)
    assert records[0]["event"] == "action started"
    assert records[0]["target"] == "main" and records[0]["level"] == "info"
    assert "timestamp" in records[0]
    assert records[1]["event"] == "Run time of job x was missed"
    assert records[1]["logger"] == "apscheduler.scheduler"
    assert records[1]["level"] == "warning"
    assert "influxdb is deprecated" in str(records[2]["event"])


def test_readable_lines_on_a_tty() -> None:
    out = Tty()
    logs.configure(stream=out)
    structlog.get_logger().info("pass finished", check="sessions", findings=2)
    text = out.getvalue()
    assert "pass finished" in text and "check=sessions" in text
    with pytest.raises(ValueError):
        json.loads(text.splitlines()[0])


def test_secrets_are_masked() -> None:
    out = io.StringIO()
    logs.configure(stream=out)
    log = structlog.get_logger()
    log.warning("source error", source="hubdb", target="main",
                error="cannot connect to postgresql://hub:hunter2@db:5432/jupyterhub",
                api_token="abc123", headers={"Authorization": "token abc123", "Accept": "x"})
    logging.getLogger("urllib3").warning("retrying https://u:hunter2@host/x")
    text = out.getvalue()
    assert "hunter2" not in text and "abc123" not in text
    first = lines(out)[0]
    assert first["error"] == "cannot connect to postgresql://hub:***@db:5432/jupyterhub"
    assert first["api_token"] == "***"
    assert first["headers"] == {"Authorization": "***", "Accept": "x"}
    assert first["target"] == "main"


def test_exceptions_render_in_json() -> None:
    out = io.StringIO()
    logs.configure(stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("pass failed", check="sessions")
    [record] = lines(out)
    assert "RuntimeError: boom" in str(record["exception"])


def test_configure_twice_keeps_one_handler() -> None:
    logs.configure(stream=io.StringIO())
    logs.configure(stream=io.StringIO())
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_watchdogd", False)]
    assert len(ours) == 1
