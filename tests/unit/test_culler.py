"""detect() of the culler check on hand-built snapshots, and how it reads the culler."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watchdogd.checks import REGISTRY, culler
from watchdogd.config import Config
from watchdogd.model import Detection, ImplausibleData, Snapshot

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
#: what z2jh 4.x puts on the culler's command line with its default values
Z2JH = ["python3", "-m", "jupyterhub_idle_culler", "--url=http://localhost:8081/hub/api",
        "--timeout=3600", "--cull-every=600", "--concurrency=10"]


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat().replace("+00:00", "Z")


def server(user: str, name: str = "", *, idle: timedelta | None = None,
           started: timedelta = timedelta(hours=10), pending: str | None = None,
           ready: bool = True) -> dict[str, Any]:
    """An entry of HubApi.active_servers(), ``idle`` long since its last activity."""
    return {"user": user, "server_name": name, "pending": pending, "ready": ready,
            "started": ago(seconds=started.total_seconds()),
            "last_activity": None if idle is None else ago(seconds=idle.total_seconds()),
            "url": f"/user/{user}/", "state": {}}


def service(name: str, command: list[str] | None) -> dict[str, Any]:
    return {"name": name, "command": command, "pid": 77 if command else 0, "url": None}


def snapshot(servers: list[dict[str, Any]], services: dict[str, Any] | None = None, *,
             culler_service: str | None = None, culler_timeout: timedelta | None = None,
             hub_now: datetime | None = NOW, **check: Any) -> Snapshot:
    settings = culler.TargetSettings("main", culler_service, culler_timeout,
                                     culler.Settings(**check))
    observations: dict[str, Any] = {"hub_api": servers}
    if services is not None:
        observations["services"] = services
    return Snapshot("culler", "main", observations, settings=settings,
                    server_now={"hub_api": hub_now} if hub_now is not None else {})


def detect(*args: Any, now: datetime = NOW, **kwargs: Any) -> Detection:
    return culler.detect(snapshot(*args, **kwargs), now)


def z2jh(*command: str) -> dict[str, Any]:
    return {"jupyterhub-idle-culler": service("jupyterhub-idle-culler", [*Z2JH, *command]),
            "watchdogd": service("watchdogd", [])}


# -- registration, settings, targets ---------------------------------------------------------


def test_registered_with_its_kinds_and_interval() -> None:
    spec = REGISTRY["culler"]
    assert set(spec.kinds) == {"culler-overdue", "culler-missing"}
    settings = spec.settings({})
    assert settings.interval == timedelta(minutes=10)
    assert settings.margin == timedelta(minutes=15)


def config(**hub: Any) -> Config:
    return Config.model_validate({
        "clusters": {"js2": {"in_cluster": True}},
        "hubs": {"main": {"cluster": "js2", "api_url": "http://hub:8081/hub/api", **hub}}})


def test_the_server_list_is_the_sessions_checks_read() -> None:
    """Both checks name the same call: in a pass with both, the engine fetches it once
    (in DB mode; in API mode the sessions check reads every user with HubApi.sessions)."""
    cfg = config(db_url="sqlite:////nonexistent/jupyterhub.sqlite")
    [ours] = REGISTRY["culler"].targets_for(cfg)
    [theirs] = REGISTRY["sessions"].targets_for(cfg)
    mine = {n.key: n for n in ours.needs}
    assert {(n.source, n.target, n.call, n.params) for n in theirs.needs if n.key == "hub_api"} \
        == {(mine["hub_api"].source, mine["hub_api"].target, mine["hub_api"].call,
             mine["hub_api"].params)}
    assert mine["services"].call == "services"


@pytest.mark.parametrize("hub, reads_services, optional", [
    ({}, True, True),                                  # look for a culler, if the token may
    ({"culler_service": "cull-idle"}, True, False),    # must be listed
    ({"culler_timeout": "1h"}, False, False),          # the configuration alone: no scope
    ({"culler_timeout": "1h", "culler_service": "x"}, True, False),
])
def test_services_are_read_only_when_they_can_tell_something(
        hub: dict[str, Any], reads_services: bool, optional: bool) -> None:
    [target] = REGISTRY["culler"].targets_for(config(**hub))
    assert ("services" in {n.key for n in target.needs}) is reads_services
    # A hub that configures no culler is not failed by a token without list:services
    # (the README's least token): it is only left unjudged.
    assert ("services" in target.optional) is optional


def test_an_unreadable_service_list_of_an_unconfigured_hub_is_no_verdict() -> None:
    [target] = REGISTRY["culler"].targets_for(config())
    snapshot = Snapshot("culler", "main", observations={"hub_api": []},
                        errors={"services": "hubapi main: 403: needs list:services"},
                        settings=target.settings, optional=target.optional)
    assert snapshot.complete
    assert culler.detect(snapshot, datetime(2026, 12, 7, tzinfo=UTC)).findings == []


def test_hub_keys_are_validated() -> None:
    with pytest.raises(ValueError, match="culler_timeout"):
        config(culler_timeout="soon")
    with pytest.raises(ValueError, match="culler_timout"):
        config(culler_timout="1h")


# -- the culler's command line ---------------------------------------------------------------


@pytest.mark.parametrize("command, expected", [
    (Z2JH, {"url": "http://localhost:8081/hub/api", "timeout": "3600", "cull-every": "600",
            "concurrency": "10"}),
    (["jupyterhub-idle-culler", "--timeout", "900", "--cull-users"],
     {"timeout": "900", "cull-users": "true"}),
    (["/usr/bin/python3", "-m", "jupyterhub_idle_culler", "--IdleCuller.timeout=120",
      "--cull_every=60", "--cull-named-servers=False"],
     {"timeout": "120", "cull-every": "60", "cull-named-servers": "False"}),
    (["python3", "/srv/cull_idle_servers.py", "--timeout=3600"], {"timeout": "3600"}),
    (["my-own-culler", "--timeout=300"], {"timeout": "300"}),   # says its timeout
    (["python3", "-m", "http.server", "8000"], None),            # not a culler
    (["my-own-culler", "--every=300"], None),                    # cannot know its timeout
])
def test_culler_options(command: list[str], expected: dict[str, str] | None) -> None:
    assert culler.culler_options(command) == expected


# -- culler-overdue --------------------------------------------------------------------------


def test_a_working_culler_leaves_nothing_to_report() -> None:
    """Idle less than timeout + cull interval + margin (1h + 10m + 15m): not overdue."""
    servers = [server("ada", idle=timedelta(minutes=84)), server("alan", idle=timedelta(0))]
    result = detect(servers, z2jh())
    assert result.findings == []
    assert result.subjects == 2


def test_overdue_servers_are_one_finding_per_hub_with_the_oldest() -> None:
    servers = [
        server("ada", idle=timedelta(hours=2)),
        server("alan", idle=timedelta(minutes=50)),                 # within the limits
        server("barbara", started=timedelta(hours=7)),              # never active: started
        server("claude", "gpu", idle=timedelta(hours=3)),           # a named server
        server("dennis", idle=timedelta(days=3), pending="stop"),   # stopping: not idle
        server("edsger", idle=timedelta(days=3), ready=False),      # not up: the culler skips
    ]
    [finding] = detect(servers, z2jh()).findings
    assert (finding.kind, finding.subject, finding.severity.label) == (
        "culler-overdue", "main", "warning")
    assert finding.key == "culler/main/culler-overdue/main"
    evidence = finding.evidence
    assert evidence["count"] == 3
    assert evidence["servers"] == ["barbara", "claude/gpu", "ada"]
    assert evidence["oldest"] == {"user": "barbara", "server_name": "",
                                  "started": ago(hours=7), "idle_s": 7 * 3600}
    assert (evidence["timeout_s"], evidence["cull_every_s"], evidence["margin_s"],
            evidence["limit_s"]) == (3600, 600, 900, 5100)
    assert evidence["timeout_from"] == "command"
    assert evidence["service"] == "jupyterhub-idle-culler"
    assert evidence["clock"] == "hub"
    assert "3 server(s)" in finding.message and "barbara" in finding.message


def test_the_key_stays_when_other_servers_become_overdue() -> None:
    """A new idle user must not page again: the subject is the hub, not the users."""
    first = detect([server("ada", idle=timedelta(hours=2))], z2jh()).findings
    second = detect([server("ada", idle=timedelta(hours=2)),
                     server("alan", idle=timedelta(hours=5))], z2jh()).findings
    assert [f.key for f in first] == [f.key for f in second]
    assert second[0].evidence["count"] == 2


def test_ages_are_on_the_hubs_clock() -> None:
    """last_activity is the hub's timestamp: compared with the hub's Date, never ours."""
    idle_30m = [server("ada", idle=timedelta(minutes=30))]
    # watchdogd's clock a day ahead changes nothing...
    assert detect(idle_30m, z2jh(), now=NOW + timedelta(days=1)).findings == []
    # ...and one behind hides nothing that the hub's clock shows as overdue.
    idle_3h = [server("ada", idle=timedelta(hours=3))]
    [finding] = detect(idle_3h, z2jh(), now=NOW - timedelta(days=1)).findings
    assert finding.evidence["oldest"]["idle_s"] == 3 * 3600
    # Without a Date from the hub, watchdogd's clock stands in, and the finding says so.
    [finding] = detect(idle_3h, z2jh(), hub_now=None).findings
    assert finding.evidence["clock"] == "watchdogd"
    assert "watchdogd's clock" in finding.message
    assert detect(idle_3h, z2jh(), hub_now=None, now=NOW - timedelta(hours=2)).findings == []


def test_activity_in_the_future_is_not_idle() -> None:
    busy = server("ada")
    busy["last_activity"] = (NOW + timedelta(minutes=5)).isoformat()
    assert detect([busy], z2jh()).findings == []


def test_servers_the_culler_is_told_to_spare_are_not_judged() -> None:
    servers = [server("ada", idle=timedelta(hours=5)),
               server("alan", "big", idle=timedelta(hours=5))]
    [named_spared] = detect(servers, z2jh("--cull-named-servers=false")).findings
    assert named_spared.evidence["servers"] == ["ada"]
    [default_spared] = detect(servers, z2jh("--cull-default-servers", "false")).findings
    assert default_spared.evidence["servers"] == ["alan/big"]


def test_a_culler_without_timeout_has_its_default() -> None:
    command = ["python3", "-m", "jupyterhub_idle_culler", "--url=http://hub:8081/hub/api"]
    services = {"cull-idle": service("cull-idle", command)}
    # 600 s + its default interval (half of it) + 15 m: 30 minutes
    assert detect([server("ada", idle=timedelta(minutes=29))], services).findings == []
    [finding] = detect([server("ada", idle=timedelta(minutes=31))], services).findings
    assert (finding.evidence["timeout_s"], finding.evidence["cull_every_s"],
            finding.evidence["timeout_from"]) == (600, 300, "culler default")


def test_the_configured_timeout_wins_over_the_command_line() -> None:
    servers = [server("ada", idle=timedelta(hours=2))]
    assert detect(servers, z2jh(), culler_timeout=timedelta(hours=4)).findings == []
    [finding] = detect(servers, z2jh(), culler_timeout=timedelta(minutes=30)).findings
    assert (finding.evidence["timeout_s"], finding.evidence["timeout_from"],
            finding.evidence["cull_every_s"]) == (1800, "config", 600)


def test_an_external_culler_is_judged_from_the_configuration() -> None:
    """A culler the hub does not run shows no command: the timeout comes from the config,
    with the culler's default interval (half of it); without one, no services are read."""
    servers = [server("ada", idle=timedelta(hours=2))]
    services = {"idle-culler": service("idle-culler", [])}
    [finding] = detect(servers, services, culler_service="idle-culler",
                       culler_timeout=timedelta(minutes=30), margin=timedelta(0)).findings
    assert (finding.evidence["limit_s"], finding.evidence["service"]) == (2700, "idle-culler")
    [alone] = detect(servers, None, culler_timeout=timedelta(minutes=30)).findings
    assert alone.evidence["service"] is None
    assert "the culler is running" not in alone.message


@pytest.mark.parametrize("command, why", [
    ([], "the hub does not run it"),
    (None, "the token needs read:services"),
    (["/opt/cull.sh"], "does not say --timeout"),
])
def test_a_listed_culler_with_an_unknown_timeout_is_an_error(
        command: list[str] | None, why: str) -> None:
    services = {"cull-idle": service("cull-idle", command)}
    with pytest.raises(ImplausibleData, match=r"hubs\.main\.culler_timeout") as info:
        detect([server("ada", idle=timedelta(days=2))], services, culler_service="cull-idle")
    assert why in str(info.value)
    assert not info.value.notify


def test_a_nonsense_timeout_is_an_error() -> None:
    with pytest.raises(ImplausibleData, match="not a number"):
        detect([server("ada")], z2jh("--timeout=soon"))
    with pytest.raises(ImplausibleData, match="cull everything"):
        detect([server("ada")], z2jh("--timeout=0"))


def test_no_culler_configured_and_none_listed_is_nothing_to_judge() -> None:
    servers = [server("ada", idle=timedelta(days=30))]
    result = detect(servers, {"watchdogd": service("watchdogd", []),
                              "grafana": service("grafana", ["grafana-server"])})
    assert (result.findings, result.subjects) == ([], 0)


def test_the_culler_is_found_by_its_command_under_any_name() -> None:
    services = {"reaper": service("reaper", Z2JH)}
    [finding] = detect([server("ada", idle=timedelta(hours=3))], services).findings
    assert finding.evidence["service"] == "reaper"


# -- culler-missing --------------------------------------------------------------------------


def test_a_configured_culler_that_is_not_listed_is_missing() -> None:
    services = {"watchdogd": service("watchdogd", [])}
    [finding] = detect([server("ada", idle=timedelta(days=2))], services,
                       culler_service="cull-idle").findings
    assert (finding.kind, finding.subject, finding.severity.label) == (
        "culler-missing", "cull-idle", "warning")
    assert finding.evidence == {"service": "cull-idle", "services": ["watchdogd"]}


def test_missing_and_overdue_together_when_the_timeout_is_configured() -> None:
    found = detect([server("ada", idle=timedelta(days=2))], {}, culler_service="cull-idle",
                   culler_timeout=timedelta(hours=1)).findings
    assert sorted(f.kind for f in found) == ["culler-missing", "culler-overdue"]


def test_a_listed_configured_culler_is_not_missing() -> None:
    services = {"cull-idle": service("cull-idle", Z2JH)}
    assert detect([server("ada", idle=timedelta(0))], services,
                  culler_service="cull-idle").findings == []
