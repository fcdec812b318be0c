"""The idle culler, watched: idle servers it should have stopped, and a culler that is not there.

Hubs rely on jupyterhub-idle-culler to stop servers nobody uses. When it dies, crash-loops, or
runs with a token that may not delete servers, idle servers run for days and nobody notices:
the hub itself never complains. This check judges the culler by its outcome, per hub:

* ``culler-overdue`` (warning): running servers whose ``last_activity`` (or ``started``, when
  they were never active) is older than the culler's timeout + its cull interval + a margin:
  a working culler would have stopped them. One finding per hub (subject: the hub), so a new
  idle user does not page again; the evidence has the count, the oldest, and the limits.
* ``culler-missing`` (warning): the hub is configured to have a culler
  (``hubs.X.culler_service``) and ``GET /hub/api/services`` lists no such service.

Report only: stopping idle servers is the culler's job, and watchdogd never does it.

Where the timeout comes from: ``hubs.X.culler_timeout`` when set (it wins); else the culler
service's command line as the Hub API shows it to a token with ``read:services`` (hub-managed
services only: z2jh runs ``python3 -m jupyterhub_idle_culler --timeout=3600 --cull-every=600``
as the service ``jupyterhub-idle-culler``; older charts called it ``cull-idle``); a command
that runs jupyterhub-idle-culler without ``--timeout`` has the culler's own default, 600 s.
``--cull-every`` (default: half the timeout, as the culler's) is added to the limit, and
``--cull-default-servers=false`` / ``--cull-named-servers=false`` exempt what the culler never
touches. A hub with no culler configured and none listed has nothing to judge; one whose culler
is listed but whose timeout cannot be known is an ``error`` naming the key to set.

Ages are on the hub's clock: ``last_activity`` and ``started`` are the hub's timestamps and
they are compared with the ``Date`` of the hub's answer, so a skewed watchdogd clock changes
nothing (without a ``Date``, watchdogd's clock stands in). The culler compares the same
timestamps with its own clock: a culler whose clock lags the hub's culls late, which is what
this check then reports. Servers pending a spawn or stop are not idle (the culler skips them
too), nor are servers not yet ready.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ConfigDict, Field

from watchdogd.checks.common import Detector
from watchdogd.config import CheckConfig, Duration, Inventory
from watchdogd.model import CheckTarget, Detection, ImplausibleData, Need, Severity, Snapshot
from watchdogd.ports import HubApi, call
from watchdogd.times import format_duration, iso, parse_time

NAME = "culler"
KINDS = ("culler-overdue", "culler-missing")

#: Service names the culler goes by when none is configured: z2jh 2.0 and later, z2jh before
#: 2.0 and JupyterHub's old example, and jupyterhub-idle-culler's own README.
KNOWN_NAMES = ("jupyterhub-idle-culler", "cull-idle", "idle-culler")
#: What a command line runs when it is the idle culler (the module, its script, the old one).
_CULLER_PROGRAMS = re.compile(r"jupyterhub[_-]idle[_-]culler|cull[_-]idle[_-]servers")
#: jupyterhub-idle-culler's ``--timeout`` default, in seconds (IdleCuller.timeout)
CULLER_DEFAULT_TIMEOUT = 600
_FALSE = {"false", "0", "no", "off"}
_TRUE = {"true", "1", "yes", "on"}


class Settings(CheckConfig):
    """``[checks.culler]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(minutes=10)
    #: on top of the culler's timeout and cull interval: the hub learns of activity late
    #: (the proxy's every ``last_activity_interval``, a server's own reports every 5 min)
    margin: Duration = timedelta(minutes=15)
    #: how many overdue servers the evidence names (the count is always complete)
    max_listed: int = Field(20, ge=1)


@dataclass(frozen=True)
class TargetSettings:
    """What detect() needs to know about one hub."""

    hub: str
    service: str | None
    timeout: timedelta | None
    check: Settings


@dataclass(frozen=True)
class Culler:
    """The culler as far as it can be known: its limits and what it culls."""

    service: str | None
    timeout: timedelta
    cull_every: timedelta
    #: where the timeout came from: ``config``, ``command`` or ``culler default``
    timeout_from: str
    cull_default_servers: bool = True
    cull_named_servers: bool = True


def services_need(hub: str) -> Need:
    """The hub's services (names; commands with ``read:services``)."""
    return Need.bind("services", call(HubApi.services, hub))


def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """One target per hub: its active servers (the sessions check's read) and its services.

    The services are not read for a hub whose culler is described by ``culler_timeout``
    alone: then no ``list:services`` scope is needed. For a hub that configures no culler at
    all they are read to find one, but optionally: a token without ``list:services`` (the
    least token of the README) leaves such a hub unjudged instead of failing the check.
    """
    result = []
    for name, hub in inventory.hubs.items():
        # The very read the sessions check makes: in a pass with both, fetched once.
        needs = [Need.bind("hub_api", call(HubApi.active_servers, name))]
        optional: frozenset[str] = frozenset()
        if hub.culler_service is not None or hub.culler_timeout is None:
            needs.append(services_need(name))
            if hub.culler_service is None and hub.culler_timeout is None:
                optional = frozenset({"services"})
        result.append(CheckTarget(name, tuple(needs), TargetSettings(
            hub=name, service=hub.culler_service, timeout=hub.culler_timeout, check=check),
            optional=optional))
    return result


# -- the culler's command line ----------------------------------------------------------------


def culler_options(command: list[str]) -> dict[str, str] | None:
    """jupyterhub-idle-culler's options on a command line, or None when it does not run it.

    Accepts what traitlets accepts: ``--timeout=3600``, ``--timeout 3600``,
    ``--IdleCuller.timeout=3600``; a bare ``--cull-users`` is ``true``. Option names are
    returned with dashes (``cull-every``). A command that does not run the culler but still
    says ``--timeout`` (a home-made culler) is read too: its timeout is what it says.
    """
    runs_culler = any(_CULLER_PROGRAMS.search(part) for part in command)
    options: dict[str, str] = {}
    args = list(command)
    for i, arg in enumerate(args):
        if not arg.startswith("--") or len(arg) <= 2:
            continue
        name, sep, value = arg[2:].partition("=")
        name = name.removeprefix("IdleCuller.").replace("_", "-")
        if not sep:
            following = args[i + 1] if i + 1 < len(args) else None
            value = (following if following is not None and not following.startswith("--")
                     else "true")
        options[name] = value
    if not runs_culler and "timeout" not in options:
        return None
    return options


def _seconds(options: dict[str, str], name: str) -> float | None:
    value = options.get(name)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ImplausibleData(f"the culler's --{name}={value!r} is not a number of seconds"
                              ) from None
    return seconds


def _flag(options: dict[str, str], name: str) -> bool:
    value = options.get(name, "true").strip().lower()
    return value not in _FALSE


def find_culler(services: dict[str, Any]) -> dict[str, Any] | None:
    """The culler among a hub's services when none is configured: by its command, else by
    a name it usually has."""
    for name in sorted(services):
        command = services[name].get("command") or []
        if any(_CULLER_PROGRAMS.search(part) for part in command):
            return dict(services[name])
    for name in KNOWN_NAMES:
        if name in services:
            return dict(services[name])
    return None


def culler_of(s: TargetSettings, service: dict[str, Any] | None) -> Culler | None:
    """The culler's limits from the configuration and the service's command line.

    None when there is nothing to judge (no timeout configured, no culler listed). Raises
    ImplausibleData when a culler is listed but its timeout cannot be known.
    """
    name = s.service or (service or {}).get("name")
    command = (service or {}).get("command")
    options = culler_options(command) if command else None
    every = _seconds(options, "cull-every") if options else None
    default_servers = _flag(options, "cull-default-servers") if options else True
    named_servers = _flag(options, "cull-named-servers") if options else True
    if s.timeout is not None:
        timeout, source = s.timeout, "config"
    elif options is not None:
        seconds = _seconds(options, "timeout")
        if seconds is None:
            timeout, source = timedelta(seconds=CULLER_DEFAULT_TIMEOUT), "culler default"
        else:
            timeout, source = timedelta(seconds=seconds), "command"
    elif service is None:
        return None
    else:
        why = ("the Hub API does not show its command (the token needs read:services)"
               if command is None else
               "the hub does not run it (no command: it runs elsewhere)" if not command else
               "its command line does not say --timeout")
        raise ImplausibleData(
            f"hub {s.hub} has a culler service {name!r}, but its timeout cannot be known: "
            f"{why}. Set hubs.{s.hub}.culler_timeout")
    if timeout <= timedelta(0):
        raise ImplausibleData(f"the culler of hub {s.hub} has a timeout of {timeout}: "
                              "it would cull everything at once; not judged")
    # The culler's own default interval is half its timeout (IdleCuller.cull_every).
    cull_every = timedelta(seconds=every) if every else timeout / 2
    return Culler(name, timeout, cull_every, source, default_servers, named_servers)


# -- detection ---------------------------------------------------------------------------------


class _Detector(Detector):
    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        super().__init__(NAME, snapshot, now)
        self.s: TargetSettings = snapshot.settings


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Servers idle past the culler's limits, and a configured culler the hub does not list."""
    d = _Detector(snapshot, now)
    s = d.s
    services: dict[str, Any] | None = snapshot.get("services")
    service: dict[str, Any] | None = None
    if services is not None:
        service = (services.get(s.service) if s.service is not None
                   else find_culler(services))
        if service is None and s.service is not None:
            d.finding("culler-missing", s.service, Severity.WARNING,
                      f"hub {s.hub} should have an idle culler (hubs.{s.hub}.culler_service = "
                      f"{s.service!r}), but its services list no {s.service!r}: idle servers "
                      f"are not being stopped. Services listed: "
                      f"{', '.join(sorted(services)) or 'none'}",
                      {"service": s.service, "services": sorted(services)})
    culler = culler_of(s, service)
    if culler is None:
        return Detection(d.findings, 0)
    servers: list[dict[str, Any]] = snapshot["hub_api"]
    hub_now = snapshot.server_now.get("hub_api")
    clock_now = hub_now or now
    limit = culler.timeout + culler.cull_every + s.check.margin
    judged = 0
    overdue: list[tuple[timedelta, dict[str, Any], datetime, str]] = []
    for server in servers:
        if server.get("pending") or not server.get("ready"):
            continue  # spawning, stopping or not up yet: not idle, and the culler skips it
        named = bool(server.get("server_name"))
        if (named and not culler.cull_named_servers) or (
                not named and not culler.cull_default_servers):
            continue  # the culler is told never to cull these
        last = parse_time(server.get("last_activity"))
        since, basis = (last, "last_activity") if last is not None else (
            parse_time(server.get("started")), "started")
        if since is None:
            continue  # no time at all: nothing to age (the culler skips it too)
        judged += 1
        idle = clock_now - since
        if idle > limit:
            overdue.append((idle, server, since, basis))
    if overdue:
        _overdue(d, culler, limit, overdue, clock="hub" if hub_now is not None else "watchdogd")
    return Detection(d.findings, judged)


def _subject(server: dict[str, Any]) -> str:
    name = server.get("server_name") or ""
    return f"{server['user']}/{name}" if name else str(server["user"])


def _overdue(d: _Detector, culler: Culler, limit: timedelta,
             overdue: list[tuple[timedelta, dict[str, Any], datetime, str]], clock: str) -> None:
    s = d.s
    overdue.sort(key=lambda item: (-item[0].total_seconds(), _subject(item[1])))
    idle, oldest, since, basis = overdue[0]
    who = f"the culler service {culler.service!r}" if culler.service else "the culler"
    clock_note = ("" if clock == "hub" else
                  " (the hub sent no Date header: aged on watchdogd's clock)")
    message = (
        f"{len(overdue)} server(s) of hub {s.hub} idle longer than the culler's timeout "
        f"({format_duration(culler.timeout.total_seconds())}, from the {culler.timeout_from}) "
        f"+ its cull interval ({format_duration(culler.cull_every.total_seconds())}) + a "
        f"margin ({format_duration(s.check.margin.total_seconds())}) are still running; the "
        f"oldest, {_subject(oldest)}, has been idle {format_duration(idle.total_seconds())} "
        f"({basis} {iso(since)}){clock_note}. Is {who} running, and may its token delete "
        "servers? (watchdogd only reports: stopping idle servers is the culler's job)")
    d.finding("culler-overdue", s.hub, Severity.WARNING, message, {
        "count": len(overdue),
        "oldest": {"user": oldest["user"], "server_name": oldest.get("server_name") or "",
                   basis: iso(since), "idle_s": int(idle.total_seconds())},
        "servers": [_subject(item[1]) for item in overdue[:s.check.max_listed]],
        "service": culler.service,
        "timeout_s": int(culler.timeout.total_seconds()),
        "timeout_from": culler.timeout_from,
        "cull_every_s": int(culler.cull_every.total_seconds()),
        "margin_s": int(s.check.margin.total_seconds()),
        "limit_s": int(limit.total_seconds()),
        "clock": clock,
    })
