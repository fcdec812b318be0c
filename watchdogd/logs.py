"""Logging: structlog, JSON lines for machines, readable lines for people.

Every log line goes to stderr so that ``watchdogd check --json`` keeps stdout
for the report. Secrets never reach a logger: sources hold them, and errors
name the credential ("the API token of hub main"), never its value.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure"]


def configure(*, json_lines: bool | None = None, level: str = "INFO") -> None:
    """Set up structlog and the standard library's logging once per process."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # urllib3 and kubernetes log full URLs with query strings at debug level.
    for noisy in ("urllib3", "kubernetes", "keystoneauth", "openstack", "stevedore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
