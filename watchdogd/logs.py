"""Logging: structlog, JSON lines for machines, readable lines for people.

Every log line goes to stderr so that ``watchdogd check --json`` keeps stdout
for the report. On a TTY the lines are readable; anywhere else (systemd's
journal, a container runtime, a CronJob's log) each line is one JSON object, and
that holds for the libraries' own messages too: the standard library's logging
(APScheduler, urllib3, openstacksdk) and Python warnings are rendered by the same
processors, so a log collector never meets a line it cannot parse.

Secrets never reach a logger on purpose: sources hold them, and errors name the
credential ("the API token of hub main"), never its value. As a second line of
defence, :func:`redact` masks values under secret-looking keys and the password
of any ``scheme://user:password@host`` URL before a line is rendered.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

from watchdogd.text import MASK, names_a_secret, safe_text

# structlog.dev imports rich whenever rich is installed (only the test extras bring it):
# over a tenth of a one-shot run's start-up, for tracebacks only a person at a terminal
# reads. structlog is imported with rich hidden, and a console renderer brings it back
# (see _console_renderer); the JSON lines never use it. A structlog or rich someone else
# imported first is left as it is.
_HIDE_RICH = "structlog" not in sys.modules and "rich" not in sys.modules
if _HIDE_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment] # `import rich` raises ImportError
try:
    import structlog
finally:
    if _HIDE_RICH:
        del sys.modules["rich"]

__all__ = ["configure", "redact"]

# Up to the authority's last "@": a password may hold an unescaped "@" of its own.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s]*@")
#: values that are several lines by design
_MULTILINE = frozenset({"traceback", "exception"})
_MASK = MASK


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        # Names from the outside world: no escape sequence or forged line reaches the log.
        return safe_text(_URL_PASSWORD.sub(lambda m: f"{m.group('head')}{_MASK}@", value))
    if isinstance(value, dict):
        return {k: (_MASK if isinstance(k, str) and names_a_secret(k) and v
                    else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
           ) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-looking keys and passwords in URLs."""
    for key, value in list(event_dict.items()):
        if names_a_secret(key) and value and key != "event":
            event_dict[key] = _MASK
        elif key in _MULTILINE and isinstance(value, str):
            event_dict[key] = "\n".join(_scrub(line) for line in value.split("\n"))
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def _console_renderer() -> structlog.dev.ConsoleRenderer:
    """structlog's console renderer as structlog builds it when it imports rich itself.

    structlog picks its exception formatter (rich's tracebacks when rich is installed)
    when ``structlog.dev`` is imported; that import hid rich, so a console brings the
    module back with rich visible before the renderer is built.
    """
    rich_hidden = getattr(structlog.dev, "rich", None) is None
    if rich_hidden and importlib.util.find_spec("rich") is not None:
        importlib.reload(structlog.dev)
    return structlog.dev.ConsoleRenderer(colors=False)


def configure(*, json_lines: bool | None = None, level: str = "INFO",
              stream: TextIO | None = None) -> None:
    """Set up structlog and the standard library's logging once per process."""
    out = sys.stderr if stream is None else stream
    if json_lines is None:
        json_lines = not out.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_lines
        else _console_renderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if json_lines:
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # The standard library's records (libraries, warnings) through the same processors.
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_watchdogd", False):
            root.removeHandler(old)
    handler._watchdogd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # Off and on again: captureWarnings(True) is a no-op when an earlier configure()
    # captured already, even if warnings.showwarning was swapped since (test runners do).
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    # urllib3 and kubernetes log full URLs with query strings at debug level.
    for noisy in ("urllib3", "kubernetes", "keystoneauth", "openstack", "stevedore",
                  "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
