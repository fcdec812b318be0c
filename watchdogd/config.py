"""Configuration: a TOML file, overridden by ``WATCHDOGD_*`` environment variables.

Every key of the file can also be set as ``WATCHDOGD_SECTION__KEY`` (``__``
separates levels: ``WATCHDOGD_HUBS__MAIN__API_URL``). Secrets never live in the
file itself: each secret ``x`` is read from ``x_file`` (a path, or
``credential:NAME`` for a systemd ``LoadCredential=``) or from the environment
variable for ``x``. Loading either succeeds completely or raises
:class:`ConfigError` listing every problem with its dotted path, so that
``watchdogd config check`` can print them all at once.

Relative paths (``kubeconfig``, ``clouds_yaml``, every ``*_file``, a SQLite state
database) are relative to the config file's folder, never to the working directory
of whoever started watchdogd; the loaded configuration holds them absolute. The state
URL is parsed here, so that a bad port or an unknown driver is a configuration error
(exit 78) rather than a traceback, and no message ever shows its password.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from watchdogd.urls import redact_url, split_userinfo

#: The default largest answer of a peer: a page of 500 pods or 1,000 volumes is a few MB,
#: the hub's pages of 200 users well under one; a pass holds a handful of answers at once,
#: parsed, inside the Deployment's 512 MiB.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024

__all__ = [
    "CheckConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "HubConfig",
    "Inventory",
    "ListenerConfig",
    "file_problem",
    "load_config",
    "parse_duration",
    "redact_url",
]

ENV_PREFIX = "WATCHDOGD_"
#: what judges the ``[checks.NAME]`` tables: problem lines, empty when all is well
SectionCheck = Callable[[Mapping[str, Any]], list[str]]
DEFAULT_CONFIG_PATH = Path("/etc/watchdogd/watchdogd.toml")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one ``path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_duration(value: Any) -> Any:
    """Accept ``"90s"``, ``"5m"``, ``"6h"``, ``"2d"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            number, unit = match.groups()
            return timedelta(seconds=float(number) * _DURATION_UNITS[unit or "s"])
        raise ValueError(f"invalid duration {value!r}; use a number with a unit: 30s, 5m, 6h, 2d")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _time_zone(value: str) -> str:
    """An IANA time zone name this machine (or the ``tzdata`` package) knows."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as "
                         "'America/Chicago')") from None
    return value


TimeZone = Annotated[str, AfterValidator(_time_zone)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StateConfig(Section):
    """Where findings, the audit log and the outbox live."""

    url: SecretStr | None = None
    url_file: str | None = None

    def resolved_url(self) -> str:
        """The SQLAlchemy URL; ``$STATE_DIRECTORY`` (systemd) or /var/lib/watchdogd by default."""
        if self.url is not None:
            return self.url.get_secret_value()
        state_dir = os.environ.get("STATE_DIRECTORY", "/var/lib/watchdogd").split(":")[0]
        return f"sqlite:///{state_dir}/state.db"


class NotifyConfig(Section):
    """Apprise delivery. URLs carry tokens, so they come from a file or the environment."""

    urls: SecretStr | None = None
    urls_file: str | None = None
    repeat_after: Duration = timedelta(hours=6)
    send_resolved: bool = True
    timeout: Duration = timedelta(seconds=10)
    retry_after: Duration = timedelta(minutes=1)
    title_prefix: str = "watchdogd"
    #: A check target that cannot complete (``error``) in ``error_after_passes`` passes in a
    #: row *and* for ``error_after`` becomes a ``check-failing`` finding: both must hold, so
    #: a 30 s check pages after 5 minutes and a 6 h one after three failed passes, never on
    #: one failed pass.
    error_after: Duration = timedelta(minutes=5)
    error_after_passes: int = Field(3, ge=2)
    #: the "open report" button of ntfy notices (a page the phone can open)
    report_url: str | None = None
    #: Pushover: with a retry, a critical notice is an emergency (priority 2), repeated
    #: every ``pushover_retry`` until seen or ``pushover_expire`` passed; else high (1)
    pushover_retry: Duration | None = None
    pushover_expire: Duration = timedelta(hours=1)

    @field_validator("report_url")
    @classmethod
    def _web_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _pushover_bounds(self) -> Self:
        # Pushover's own bounds: a retry of at least 30 s, an expiry of at most 3 hours.
        if self.pushover_retry is not None and self.pushover_retry < timedelta(seconds=30):
            raise ValueError("pushover_retry: at least 30s (Pushover's minimum)")
        if not timedelta(0) <= self.pushover_expire <= timedelta(hours=3):
            raise ValueError("pushover_expire: between 0s and 3h (Pushover's maximum)")
        return self


class ListenerConfig(Section):
    """The optional acknowledge listener of ``watchdogd run`` (off while ``listen`` is unset).

    It serves ``POST /ack/<token>`` only; the token is signed with the key of
    ``key_file`` and named in ntfy notices as ``public_url/ack/<token>``.
    """

    listen: str | None = None
    #: how phones reach the listener (behind a TLS proxy): ``https://watchdogd.example.org``
    public_url: str | None = None
    key: SecretStr | None = None
    key_file: str | None = None
    link_ttl: Duration = timedelta(hours=24)
    #: the whole of one request (a client that trickles its request is cut off)
    timeout: Duration = timedelta(seconds=10)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment or "@" in parts.netloc:
            raise ValueError("expected an http:// or https:// URL without query or "
                             "credentials")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.listen is None:
            return self
        if self.public_url is None:
            raise ValueError("listen needs public_url (the address phones open)")
        if self.key is None and self.key_file is None:
            raise ValueError("listen needs key_file (the HMAC key of the links)")
        if self.key is not None and len(self.key.get_secret_value().encode()) < 32:
            raise ValueError("key: at least 32 bytes (e.g. openssl rand -base64 48)")
        if self.link_ttl <= timedelta(0):
            raise ValueError("link_ttl: must be positive")
        return self


class DigestConfig(Section):
    """The weekly digest: opt-in, to destinations of its own (long text: e-mail, not pushes)."""

    enabled: bool = False
    #: weekday and local time of the weekly send: "mon 08:00"
    schedule: str = "mon 08:00"
    #: the zone of ``schedule`` and of the digest's dates (an IANA name)
    timezone: TimeZone = "UTC"
    #: apprise URLs of the digest's own destinations, one per line (they carry tokens)
    urls_file: str | None = None
    #: how many entries the "slowest to resolve" and "oldest open" lists show
    top: int = Field(5, ge=1, le=50)

    @field_validator("schedule")
    @classmethod
    def _weekly(cls, value: str) -> str:
        parse_weekly(value)
        return value


def parse_weekly(value: str) -> tuple[str, int, int]:
    """``"mon 08:00"`` as (weekday, hour, minute); ValueError naming what is wrong."""
    match = re.fullmatch(r"\s*([a-z]{3})\s+(\d{1,2}):(\d{2})\s*", value.lower())
    if not match or match.group(1) not in WEEKDAYS:
        raise ValueError(f"expected a weekday and a time, e.g. \"mon 08:00\", not {value!r}")
    hour, minute = int(match.group(2)), int(match.group(3))
    if hour > 23 or minute > 59:
        raise ValueError(f"no such time of day in {value!r}")
    return match.group(1), hour, minute


RemediationName = Literal[
    "stop-server",
    "sync-routes",
    "delete-pod",
    "delete-attachment",
    "reset-volume-status",
    "quarantine",
    "delete-orphan-volume",
    "quarantine-extra-pvc",
    "delete-extra-pvc",
    "restart-hub",
    "delete-lab",
]


DEFAULT_ENABLED: tuple[RemediationName, ...] = (
    "stop-server", "sync-routes", "delete-attachment", "reset-volume-status")


class RemediationConfig(Section):
    """The policy: dry-run first, confirm over passes, budgets and the breaker."""

    dry_run: bool = True
    confirm_after: int = Field(2, ge=1)
    min_age: Duration = timedelta(minutes=1)
    max_per_pass: int = Field(5, ge=0)
    max_per_hour: int = Field(20, ge=0)
    breaker_max: int = Field(10, ge=0)
    breaker_fraction: float = Field(0.2, gt=0, le=1)
    breaker_min_subjects: int = Field(20, ge=1)
    #: A subject acted on this many times within ``repeat_window`` gets no further
    #: automatic action: a loop means watchdogd's picture of it is wrong.
    max_repeats: int = Field(2, ge=1)
    repeat_window: Duration = timedelta(hours=24)
    enabled: list[RemediationName] = Field(
        default_factory=lambda: list(DEFAULT_ENABLED)
    )


class DaemonConfig(Section):
    """Process-level settings of ``watchdogd run``."""

    metrics_listen: str | None = "127.0.0.1:9464"
    pass_timeout: Duration = timedelta(minutes=5)
    leader_election: bool = False
    lease_namespace: str = "watchdogd"
    lease_name: str = "watchdogd"
    lease_cluster: str | None = None
    lease_duration: Duration = timedelta(seconds=30)
    #: a one-shot ``watchdogd check`` writes its metrics here (node_exporter's textfile
    #: collector), replaced whole after every run
    metrics_textfile: str | None = None
    #: ... and/or pushes them to this Prometheus Pushgateway (``http://host:9091``)
    pushgateway_url: str | None = None
    pushgateway_job: str = Field("watchdogd", min_length=1)
    #: the whole push (connect, send, answer): a gateway that hangs cannot hold the run
    pushgateway_timeout: Duration = timedelta(seconds=10)

    @field_validator("pushgateway_url")
    @classmethod
    def _plain_gateway(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        if "@" in parts.netloc:
            # The URL is logged with a failed push: keep credentials out of it.
            raise ValueError("no credentials in the URL (put the gateway behind a proxy "
                             "that authenticates, or leave the push to a textfile)")
        return value


#: weekday names as maintenance windows take them
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MaintenanceWindow(Section):
    """``[maintenance.NAME]``: a recurring window in which notices are muted and actions frozen.

    It opens at ``start`` (local time in ``timezone``) on each of ``days`` (every day when
    empty) and lasts ``duration``; ``checks`` and ``targets`` narrow what it covers (empty:
    everything). Findings are still tracked and reported; when the window ends, one summary
    notice lists what is open.
    """

    start: str
    duration: Duration
    timezone: TimeZone = "UTC"
    days: list[str] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    reason: str = ""

    @field_validator("start")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"expected HH:MM (24-hour local time), got {value!r}")
        return value

    @field_validator("duration")
    @classmethod
    def _length(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(days=7):
            raise ValueError("must be longer than zero and at most 7 days")
        return value

    @field_validator("days")
    @classmethod
    def _weekdays(cls, value: list[str]) -> list[str]:
        days = [day.lower()[:3] for day in value]
        unknown = [v for v, d in zip(value, days, strict=True) if d not in WEEKDAYS]
        if unknown:
            raise ValueError(f"unknown weekday {unknown[0]!r} (mon, tue, ... sun)")
        return days


#: the annotation that exempts a pod or claim from every action (still reported)
IGNORE_ANNOTATION = "watchdogd.io/ignore"


class ExclusionsConfig(Section):
    """``[exclusions]``: subjects no action may touch; their findings are still reported.

    ``users``, ``server_names`` and ``namespaces`` are shell patterns (``test-*``);
    ``volume_ids`` exact; ``volume_metadata`` key = value pairs, any of which exempts a
    Cinder volume. A pod or claim annotated ``watchdogd.io/ignore: "true"`` is exempt too.
    """

    users: list[str] = Field(default_factory=list)
    server_names: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    volume_ids: list[str] = Field(default_factory=list)
    volume_metadata: dict[str, str] = Field(default_factory=dict)


class ClusterConfig(Section):
    """A Kubernetes cluster: a kubeconfig context, or the in-cluster service account."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    timeout: Duration = timedelta(seconds=15)
    page_size: int = Field(500, ge=1, le=5000)
    #: the largest answer read from this cluster's API (a page of ``page_size`` objects)
    max_response_bytes: ByteSize = Field(ByteSize(DEFAULT_MAX_BYTES), ge=1024)

    @model_validator(mode="after")
    def _one_way_in(self) -> ClusterConfig:
        if self.in_cluster and self.kubeconfig:
            raise ValueError("set either in_cluster = true or kubeconfig, not both")
        return self


class HubConfig(Section):
    """A JupyterHub: its REST API, its database (read only) and its proxy."""

    cluster: str
    namespace: str = "jhub"
    layout: Literal["kubespawner", "nublado"] = "kubespawner"
    api_url: str
    api_token: SecretStr | None = None
    api_token_file: str | None = None
    db_url: SecretStr | None = None
    db_url_file: str | None = None
    proxy_api_url: str | None = None
    proxy_token: SecretStr | None = None
    proxy_token_file: str | None = None
    #: the hub's public URL (through the proxy, as users reach it): the ``probes`` check
    #: asks ``{public_url}/hub/health`` there; no probe without it
    public_url: str | None = None
    timeout: Duration = timedelta(seconds=15)
    #: the largest answer read from the Hub API or the proxy (the proxy's table is one answer)
    max_response_bytes: ByteSize = Field(ByteSize(DEFAULT_MAX_BYTES), ge=1024)
    #: label selector of user server pods; default by layout (see :meth:`user_pod_selector`)
    pod_selector: str | None = None
    hub_pod_selector: str = "component=hub"
    nublado_namespace_prefix: str = "nublado-"
    #: the idle culler's service name in the hub; setting it says the hub has a culler, so
    #: a hub that lists no such service is ``culler-missing`` (the culler check)
    culler_service: str | None = None
    #: the culler's ``--timeout``; wins over its command line, and is needed when the Hub
    #: API does not show one (a culler run outside the hub, a token without read:services)
    culler_timeout: Duration | None = None
    #: the Nublado controller's REST API (its ``/nublado`` prefix included), for the labs check
    nublado_url: str | None = None
    #: a Gafaelfawr token with ``admin:jupyterlab``, sent as ``Authorization: Bearer``
    nublado_token: SecretStr | None = None
    nublado_token_file: str | None = None

    def user_pod_selector(self) -> str:
        """The selector of user pods: the configured one, else the layout's own labels."""
        if self.pod_selector is not None:
            return self.pod_selector
        if self.layout == "nublado":
            return "nublado.lsst.io/category=lab"
        return "component=singleuser-server"

    @field_validator("api_url", "proxy_api_url", "nublado_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _controller_needs_nublado(self) -> HubConfig:
        if self.nublado_url and self.layout != "nublado":
            raise ValueError("nublado_url needs layout = \"nublado\" (the controller manages "
                             "namespaces nublado-<user>)")
        if self.nublado_url and self.nublado_token is None and self.nublado_token_file is None:
            raise ValueError("nublado_url needs nublado_token_file (a Gafaelfawr token with "
                             "admin:jupyterlab)")
        return self


class CloudConfig(Section):
    """An OpenStack cloud, by its clouds.yaml entry, and the clusters that use its volumes."""

    cloud: str
    clusters: list[str] = Field(default_factory=list)
    clouds_yaml: str | None = None
    timeout: Duration = timedelta(seconds=30)
    #: the largest answer read from Keystone or Cinder (one page of volumes)
    max_response_bytes: ByteSize = Field(ByteSize(DEFAULT_MAX_BYTES), ge=1024)
    region: str | None = None
    auth_url: str | None = None
    block_storage_endpoint: str | None = None
    application_credential_id: str | None = None
    application_credential_secret: SecretStr | None = None
    application_credential_secret_file: str | None = None
    page_size: int = Field(1000, ge=1, le=10000)


class CheckConfig(Section):
    """Settings every check shares; each check's ``Settings`` adds its own keys.

    ``[checks.NAME]`` sections stay raw tables in :class:`Config`: the check registry
    validates each against its check's model, so that a check's own defaults apply
    (certs every 6 hours, sessions every 30 seconds) and an unknown key is an error.
    """

    enabled: bool = True
    interval: Duration = timedelta(minutes=5)

    @classmethod
    def section(cls, sections: Mapping[str, Any], name: str) -> Self:
        """``[checks.<name>]`` of ``sections`` validated by this model; defaults when absent."""
        return cls.model_validate(sections.get(name) or {})


@dataclass(frozen=True)
class Inventory:
    """What the configuration declares to watch: the checks' view of it besides their settings."""

    clusters: Mapping[str, ClusterConfig]
    hubs: Mapping[str, HubConfig]
    clouds: Mapping[str, CloudConfig]


class WebConfig(Section):
    """The admin page: ``/services/watchdogd/`` behind the hub's own login (``watchdogd[web]``).

    Off unless ``listen`` is set. The hub named by ``hub`` registers it as a service (same
    name as the API token's service); its ``api_url`` and ``api_token`` are how the page asks
    the hub who a visitor is, so the page needs no secret of its own.
    """

    #: ``host:port`` the page listens on inside ``watchdogd run``; None: no page
    listen: str | None = None
    #: the ``[hubs.X]`` whose login guards the page
    hub: str | None = None
    #: the hub's name of this service (``c.JupyterHub.services``; z2jh ``hub.services.X``)
    service_name: str = Field("watchdogd", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    #: who may see the page: hub admins, and members of these hub groups or roles
    allow_admins: bool = True
    allowed_groups: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    #: how many audit rows the page shows
    recent_actions: int = Field(50, ge=1, le=1000)

    @property
    def base_url(self) -> str:
        """Where the hub's proxy sends the service's traffic."""
        return f"/services/{self.service_name}/"


class Config(BaseSettings):
    """The whole configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    state: StateConfig = StateConfig()
    notify: NotifyConfig = NotifyConfig()
    listener: ListenerConfig = ListenerConfig()
    remediation: RemediationConfig = RemediationConfig()
    daemon: DaemonConfig = DaemonConfig()
    clusters: dict[str, ClusterConfig] = Field(default_factory=dict)
    hubs: dict[str, HubConfig] = Field(default_factory=dict)
    clouds: dict[str, CloudConfig] = Field(default_factory=dict)
    #: the raw ``[checks.NAME]`` tables, validated by the check registry
    checks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    maintenance: dict[str, MaintenanceWindow] = Field(default_factory=dict)
    exclusions: ExclusionsConfig = ExclusionsConfig()
    digest: DigestConfig = DigestConfig()
    web: WebConfig = WebConfig()

    _toml_path: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)

    @property
    def inventory(self) -> Inventory:
        """The hubs, clusters and clouds to watch, as the checks see them."""
        return Inventory(self.clusters, self.hubs, self.clouds)


# Secrets: (section path pattern, field). A value for these may come from the
# environment or from ``<field>_file``, never from the TOML file itself.
_SECRET_FIELDS = {
    "state": ["url"],
    "notify": ["urls"],
    "listener": ["key"],
    "hubs.*": ["api_token", "db_url", "proxy_token", "nublado_token"],
    "clouds.*": ["application_credential_secret"],
}


def _sections(data: dict[str, Any], pattern: str) -> Iterator[tuple[str, dict[str, Any]]]:
    head, _, rest = pattern.partition(".")
    section = data.get(head)
    if not isinstance(section, dict):
        return
    if rest == "*":
        for name, sub in section.items():
            if isinstance(sub, dict):
                yield f"{head}.{name}", sub
    else:
        yield head, section


def _read_secret_file(value: str, base: Path) -> str:
    if value.startswith("credential:"):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError("credential: needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
        path = Path(directory) / value.removeprefix("credential:")
    else:
        path = (base / Path(value).expanduser()).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path}: not UTF-8 text") from None
    secret = text.strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def _env_secret_names() -> set[str]:
    return {key for key in os.environ if key.startswith(ENV_PREFIX)}


def _check_raw_file(data: dict[str, Any]) -> list[str]:
    """Reject inline secrets: a config file is copied and committed, a secret file is not."""
    problems = []
    for pattern, fields in _SECRET_FIELDS.items():
        for path, section in _sections(data, pattern):
            for name in fields:
                if name in section:
                    env = ENV_PREFIX + f"{path}.{name}".replace(".", "__").upper()
                    problems.append(
                        f"{path}.{name}: secrets do not belong in the config file; "
                        f"use {name}_file or the environment variable {env}"
                    )
    return problems


def _check_env() -> list[str]:
    """Catch a misspelt section in ``WATCHDOGD_SECTION__KEY``: pydantic-settings ignores it.

    Only names with ``__`` address configuration keys; other ``WATCHDOGD_*`` names
    (``WATCHDOGD_CONFIG``, variables of the test tooling) are not configuration.
    """
    sections = {ENV_PREFIX + name.upper() + "__" for name in Config.model_fields}
    problems = []
    for key in sorted(_env_secret_names()):
        if "__" not in key or any(key.startswith(s) for s in sections):
            continue
        problems.append(f"{key}: unknown environment variable (no such section)")
    return problems


def _resolve_secret_files(config: Config, base: Path) -> tuple[Config, list[str]]:
    """Replace every ``x_file`` by the secret it points to, collecting unreadable ones."""
    problems: list[str] = []
    updates: dict[str, Any] = {}
    data = config.model_dump()
    for pattern, fields in _SECRET_FIELDS.items():
        for path, section in _sections(data, pattern):
            changed = False
            for name in fields:
                file_value = section.get(f"{name}_file")
                if file_value is None:
                    continue
                if section.get(name) is not None:
                    continue  # the environment overrides the file, like every other key
                try:
                    section[name] = SecretStr(_read_secret_file(file_value, base))
                    changed = True
                except ValueError as exc:
                    problems.append(f"{path}.{name}_file: {exc}")
            if changed:
                updates[path] = section
    if problems or not updates:
        return config, problems
    for path, section in updates.items():
        head, _, name = path.partition(".")
        if name:
            data[head][name] = section
        else:
            data[head] = section
    try:
        return Config.model_validate(data), problems
    except ValidationError as exc:
        # A secret read from its file can still be wrong (a listener key too short).
        return config, problems + _format_validation(exc)


def _format_validation(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        if not loc:
            problems.extend(message.splitlines())
        else:
            problems.append(f"{loc}: {message}")
    return problems


def config_path(explicit: str | Path | None) -> Path | None:
    """The file to load: ``--config``, else ``$WATCHDOGD_CONFIG``, else the default if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(path: str | Path | None = None, *, check_files: bool = False,
                check_sections: SectionCheck | None = None) -> Config:
    """Load, validate and resolve secrets; raise :class:`ConfigError` with every problem.

    Relative paths (``kubeconfig``, ``clouds_yaml``, every ``*_file``, a SQLite state
    database) are taken relative to the config file's folder, the working directory when
    there is no file. ``check_files`` (``config check``, a reload) also requires the
    kubeconfig and clouds.yaml files and the state database's folder to exist; a daemon
    started without it reports a missing kubeconfig as a failing check instead, since
    such a file may be provisioned after the start.

    ``check_sections`` judges the ``[checks.NAME]`` tables: the check registry's
    :func:`~watchdogd.checks.section_problems`, which :func:`watchdogd.app.load_config`
    passes. This module knows no checks, so without it they are not validated here.
    """
    resolved = config_path(path)
    problems: list[str] = []
    base = Path.cwd()
    if resolved is not None:
        # pydantic-settings treats a missing file as empty: that would run
        # with defaults against nothing, so a missing file is an error here.
        if not resolved.is_file():
            raise ConfigError([f"{resolved}: no such config file"])
        try:
            raw = tomllib.loads(resolved.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{resolved}: invalid TOML: {exc}"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{resolved}: cannot read: {exc}"]) from None
        problems += _check_raw_file(raw)
        base = resolved.parent.absolute()
    problems += _check_env()

    class _Loaded(Config):
        _toml_path = resolved

    try:
        loaded = _Loaded()
        config = Config.model_validate(loaded.model_dump())
    except ValidationError as exc:
        # Report what else is wrong too, judged on the file alone, so that one
        # run of `config check` shows every problem.
        problems += _format_validation(exc)
        problems += _raw_problems(raw if resolved is not None else {}, base, problems,
                                  check_sections)
        raise ConfigError(problems) from None
    problems += _references(config.model_dump())
    config, secret_problems = _resolve_secret_files(config, base)
    problems += secret_problems
    if check_sections is not None:
        problems += check_sections(config.checks)
    config, path_problems = _resolve_paths(config, base, check_files=check_files)
    problems += path_problems
    if problems:
        raise ConfigError(problems)
    return config


def _references(data: dict[str, Any]) -> list[str]:
    """Names that point to sections that do not exist.

    Also runs on a raw file that failed validation, so any section may have any type.
    """

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    clusters = section("clusters")
    problems = []
    for name, hub in section("hubs").items():
        cluster = hub.get("cluster") if isinstance(hub, dict) else None
        if isinstance(cluster, str) and cluster not in clusters:
            problems.append(f"hubs.{name}.cluster: no cluster named {cluster!r}")
    for name, cloud in section("clouds").items():
        names = cloud.get("clusters") if isinstance(cloud, dict) else None
        for cluster in names if isinstance(names, list) else []:
            if isinstance(cluster, str) and cluster not in clusters:
                problems.append(f"clouds.{name}.clusters: no cluster named {cluster!r}")
    lease = section("daemon").get("lease_cluster")
    if isinstance(lease, str) and lease not in clusters:
        problems.append(f"daemon.lease_cluster: no cluster named {lease!r}")
    web = section("web")
    web_hub = web.get("hub")
    if isinstance(web_hub, str) and web_hub not in section("hubs"):
        problems.append(f"web.hub: no hub named {web_hub!r}")
    if web.get("listen") and web_hub is None:
        problems.append("web.hub: required with web.listen (the hub whose login guards the page)")
    return problems


def _raw_problems(raw: dict[str, Any], base: Path, known: list[str],
                  check_sections: SectionCheck | None) -> list[str]:
    """References, secret files and check sections of a file that failed validation."""
    problems = _references(raw)
    for pattern, fields in _SECRET_FIELDS.items():
        for path, section in _sections(raw, pattern):
            for name in fields:
                value = section.get(f"{name}_file")
                if isinstance(value, str):
                    try:
                        _read_secret_file(value, base)
                    except ValueError as exc:
                        problems.append(f"{path}.{name}_file: {exc}")
    checks = raw.get("checks")
    if isinstance(checks, dict) and check_sections is not None:
        problems += check_sections({k: v for k, v in checks.items() if isinstance(v, dict)})
    return [p for p in problems if p not in known]


# -- paths and the state URL -------------------------------------------------------------


def _absolute(value: str, base: Path) -> Path:
    """``value`` with ``~`` expanded, relative to ``base`` (the config file's folder)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


def file_problem(field: str, path: Path) -> str | None:
    """Why ``path`` cannot be read as a small YAML file, naming both ``field`` and ``path``.

    Only the kind of failure is told, never the content: a kubeconfig holds tokens.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{field}: {path}: no such file"
    except IsADirectoryError:
        return f"{field}: {path}: is a directory, not a file"
    except PermissionError:
        return f"{field}: {path}: permission denied"
    except OSError as exc:
        return f"{field}: {path}: cannot read ({exc.strerror})"
    except UnicodeDecodeError:
        return f"{field}: {path}: not UTF-8 text"
    import yaml  # noqa: PLC0415 - only `config check` and a reload read these files

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return f"{field}: {path}: not valid YAML"
    if not isinstance(data, dict) or not data:
        return f"{field}: {path}: empty or not a YAML mapping"
    return None


def _kubeconfig_problems(name: str, cluster: ClusterConfig) -> list[str]:
    field = f"clusters.{name}.kubeconfig"
    if cluster.in_cluster or cluster.kubeconfig is None:
        return []  # the service account, or the client's own default (~/.kube/config)
    path = Path(cluster.kubeconfig)
    problem = file_problem(field, path)
    if problem is not None:
        return [problem]
    import yaml  # noqa: PLC0415

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    listed = data.get("contexts")
    contexts = [c.get("name") for c in (listed if isinstance(listed, list) else [])
                if isinstance(c, dict)]
    if cluster.context is not None and cluster.context not in contexts:
        return [f"clusters.{name}.context: {path}: no context named {cluster.context!r}"]
    if cluster.context is None and not data.get("current-context"):
        return [f"clusters.{name}.context: {path} has no current-context; set context"]
    return []


def _clouds_yaml_problems(name: str, cloud: CloudConfig) -> list[str]:
    if cloud.clouds_yaml is None:
        return []  # openstacksdk's own search path
    path = Path(cloud.clouds_yaml)
    problem = file_problem(f"clouds.{name}.clouds_yaml", path)
    if problem is not None:
        return [problem]
    import yaml  # noqa: PLC0415

    entries = yaml.safe_load(path.read_text(encoding="utf-8")).get("clouds")
    if not isinstance(entries, dict) or cloud.cloud not in entries:
        return [f"clouds.{name}.cloud: {path}: no cloud named {cloud.cloud!r}"]
    return []


def _absolute_files(entry: Section, base: Path, **update: Any) -> Any:
    """A copy of ``entry`` whose ``*_file`` paths are absolute (``credential:`` stays)."""
    for key, value in entry:
        if key.endswith("_file") and isinstance(value, str) \
                and not value.startswith("credential:"):
            update[key] = str(_absolute(value, base))
    return entry.model_copy(update=update) if update else entry


#: the keys of a check's section that hold local paths (a path or a list of them), by name
_CHECK_PATH_KEYS = re.compile(r"^(files|kubeconfigs)$|_(path|paths|dir|dirs)$")


def _absolute_check_paths(check: dict[str, Any], base: Path) -> dict[str, Any]:
    """A check section whose path keys (``[checks.certs] files``, ``kubeconfigs``...) are
    absolute against the config file's folder, like every other path of the config."""
    update: dict[str, Any] = {}
    for key, value in check.items():
        if not _CHECK_PATH_KEYS.search(key):
            continue
        if isinstance(value, str):
            update[key] = str(_absolute(value, base))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            update[key] = [str(_absolute(v, base)) for v in value]
    return {**check, **update}


def _resolve_paths(config: Config, base: Path, *,
                   check_files: bool) -> tuple[Config, list[str]]:
    """Make every relative path absolute against ``base``; check the files when asked.

    Secret files were already read relative to ``base``; they are made absolute too, so
    that what the loaded configuration says is what was read.
    """
    problems: list[str] = []
    clusters: dict[str, ClusterConfig] = {}
    for name, cluster in config.clusters.items():
        kubeconfig = cluster.kubeconfig
        clusters[name] = cluster.model_copy(update={
            "kubeconfig": str(_absolute(kubeconfig, base)) if kubeconfig else kubeconfig})
        if check_files:
            problems += _kubeconfig_problems(name, clusters[name])
    clouds: dict[str, CloudConfig] = {}
    for name, cloud in config.clouds.items():
        clouds_yaml = cloud.clouds_yaml
        clouds[name] = _absolute_files(cloud, base, clouds_yaml=(
            str(_absolute(clouds_yaml, base)) if clouds_yaml else clouds_yaml))
        if check_files:
            problems += _clouds_yaml_problems(name, clouds[name])
    hubs = {name: _absolute_files(hub, base) for name, hub in config.hubs.items()}
    checks = {name: _absolute_check_paths(check, base) for name, check in config.checks.items()}
    state, state_problems = _resolve_state(config.state, base, check_files=check_files)
    problems += state_problems
    if config.digest.enabled and not config.digest.urls_file:
        problems.append("digest.urls_file: required when digest.enabled is true (the "
                        "digest's own destinations, e.g. a mailto:// URL)")
    elif check_files and config.digest.enabled and config.digest.urls_file \
            and not _absolute(config.digest.urls_file, base).is_file():
        problems.append(f"digest.urls_file: {_absolute(config.digest.urls_file, base)} "
                        "does not exist")
    return config.model_copy(update={
        "clusters": clusters, "clouds": clouds, "hubs": hubs, "checks": checks,
        "state": _absolute_files(state, base),
        "notify": _absolute_files(config.notify, base),
        "listener": _absolute_files(config.listener, base),
        "digest": _absolute_files(config.digest, base),
        "daemon": _absolute_textfile(config.daemon, base)}), problems


def _absolute_textfile(daemon: DaemonConfig, base: Path) -> DaemonConfig:
    if not daemon.metrics_textfile:
        return daemon
    return daemon.model_copy(update={
        "metrics_textfile": str(_absolute(daemon.metrics_textfile, base))})


#: the backends watchdogd's state store is tested on; a driver of another backend
#: may work, but its dialect and DBAPI must at least load
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg"}


def _state_url_problems(url: str, base: Path, *, check_files: bool) -> tuple[str, list[str]]:
    """The normalized state URL and what is wrong with it; messages never hold a password."""
    from urllib.parse import unquote  # noqa: PLC0415

    import sqlalchemy as sa  # noqa: PLC0415 - config must stay cheap to import

    shown = redact_url(url)
    scheme, user, password, rest = split_userinfo(url)
    if "://" not in url or not scheme:
        return url, [f"state.url: not a database URL ({shown}); "
                     "use sqlite:///PATH or postgresql://USER@HOST/DB"]
    try:
        parsed = sa.make_url(f"{scheme}://{rest}")
        if user is not None:
            # Quoted here, so that SQLAlchemy parses the user information the same way.
            parsed = parsed.set(username=unquote(user),
                                password=None if password is None else unquote(password))
        port = parsed.port
    except sa.exc.ArgumentError:
        return url, [f"state.url: cannot parse {shown}"]
    except (ValueError, TypeError):  # int() of the port
        return url, [f"state.url: cannot parse {shown}: the port is not a number"]
    if port is not None and not 0 < port < 65536:
        return url, [f"state.url: port {port} out of range in {shown}"]
    backend = parsed.get_backend_name()
    drivername = _DEFAULT_DRIVERS.get(parsed.drivername, parsed.drivername)
    try:
        dialect = parsed.set(drivername=drivername).get_dialect()
    except (sa.exc.ArgumentError, ValueError, ImportError):
        return url, [f"state.url: unknown database driver {parsed.drivername!r} in {shown}"]
    try:
        dialect.import_dbapi()
    except ImportError:
        return url, [f"state.url: the driver of {drivername!r} is not installed ({shown})"]
    problems = []
    if backend == "sqlite" and (parsed.host or parsed.port or parsed.username):
        # SQLAlchemy refuses it only when connecting, with a traceback.
        return url, [f"state.url: a SQLite URL has no host ({shown}); use "
                     "sqlite:///relative/state.db or sqlite:////absolute/state.db"]
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:" \
            and not parsed.database.startswith("file:"):
        database = _absolute(parsed.database, base)
        parsed = parsed.set(database=str(database))
        if check_files and not database.parent.is_dir():
            problems.append(f"state.url: directory {database.parent} does not exist")
        elif check_files and database.is_dir():
            problems.append(f"state.url: {database} is a directory, not a database file")
    # Rendered again with the user information quoted, so that the Store's own parse of
    # it finds the same host (and never shows a piece of the password as one).
    return parsed.render_as_string(hide_password=False), problems


def _resolve_state(state: StateConfig, base: Path, *,
                   check_files: bool) -> tuple[StateConfig, list[str]]:
    if state.url is None:
        default = state.resolved_url()
        _, problems = _state_url_problems(default, base, check_files=check_files)
        return state, [p + " (the default; set state.url or $STATE_DIRECTORY)"
                       for p in problems]
    normalized, problems = _state_url_problems(state.url.get_secret_value(), base,
                                               check_files=check_files)
    return state.model_copy(update={"url": SecretStr(normalized)}), problems
