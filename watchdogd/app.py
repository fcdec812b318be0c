"""Wiring: the one place that builds watchdogd's parts from a :class:`~watchdogd.config.Config`.

``watchdogd check``, ``watchdogd run``, the simulated worlds (``watchdogd demo``, the tests)
and the benchmarks all start here, so each runs the same store, notifier, sources and
engine that an operator's daemon runs. A problem that makes a part impossible to build
(a state URL nothing can open, an apprise file that does not parse, a Lease on a cluster
without credentials) is a :class:`BuildError` naming the setting, the CLI's exit 78.

Imports are deferred to the function that needs them: a ``check --only sessions`` never
pays for the scheduler, the metrics, the leader election or the SDKs of unused sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchdogd import config as _config
from watchdogd.checks import section_problems
from watchdogd.config import Config

if TYPE_CHECKING:
    from watchdogd.acklinks import AckLinks
    from watchdogd.daemon import Daemon, Reload
    from watchdogd.engine import Engine
    from watchdogd.leader import LeaderElector
    from watchdogd.listener import AckListener
    from watchdogd.metrics import Health, Metrics, MetricsServer
    from watchdogd.notify import Notifier
    from watchdogd.sources import Sources
    from watchdogd.store import Store
    from watchdogd.web import WebServer

__all__ = ["App", "BuildError", "build", "load_config", "open_store", "reload"]


class BuildError(Exception):
    """A part cannot be built from the configuration; the message names the setting."""


def load_config(path: str | Path | None = None, *, check_files: bool = False) -> Config:
    """The configuration with every ``[checks.NAME]`` judged by its check's own model.

    Raises :class:`~watchdogd.config.ConfigError` listing every problem at once.
    """
    config = _config.load_config(path, check_files=check_files,
                                 check_sections=section_problems)
    from watchdogd.checks import REGISTRY  # noqa: PLC0415

    unknown = [f"maintenance.{name}.checks: unknown check {check!r} (known: "
               f"{', '.join(sorted(REGISTRY))})"
               for name, window in config.maintenance.items() for check in window.checks
               if check not in REGISTRY]
    if unknown:
        raise _config.ConfigError(unknown)
    return config


@dataclass
class App:
    """The parts of one process, built together and closed together."""

    config: Config
    store: Store
    sources: Sources
    notifier: Notifier | None
    engine: Engine
    #: the daemon's parts (``build(service=True)``): the Lease elector, if elected
    elector: LeaderElector | None = None
    health: Health | None = None
    metrics: Metrics | None = None
    server: MetricsServer | None = None
    #: the acknowledge links' signer (``[listener] listen`` set) and, in a daemon, its server
    links: AckLinks | None = None
    listener: AckListener | None = None
    #: the weekly digest's own destinations (``[digest] enabled``, built with ``service``)
    digest: Notifier | None = None
    #: the admin page (``[web] listen``), served by ``watchdogd run``
    web: WebServer | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def daemon(self, reloader: Callable[[], Reload] | None = None) -> Daemon:
        """The scheduler around this app's engine."""
        from watchdogd.daemon import Daemon  # noqa: PLC0415

        return Daemon(self.config, self.engine, reloader=reloader, digest=self.digest)

    def close(self) -> None:
        """Close what was opened: adapters' connection pools, the store, the metrics port."""
        for close in reversed(self._closers):
            close()
        self._closers.clear()


def build(config: Config, *, dry_run: bool | None = None,
          clock: Callable[[], datetime] | None = None, service: bool = False,
          notify: bool = True, metrics: Metrics | None = None) -> App:
    """Build the store, notifier, sources and engine; with ``service`` the daemon's parts too.

    ``service`` adds the health rule, the metrics (and their endpoint when
    ``daemon.metrics_listen`` is set; a bad address fails here, before anything runs),
    the instrumented sources, and the Lease elector when ``daemon.leader_election`` is on.
    ``notify=False`` builds no notifier (a world without receivers). ``metrics`` (a
    one-shot run that exports its metrics) counts the sources' failures in it. Raises
    :class:`BuildError`.
    """
    from watchdogd.engine import Engine  # noqa: PLC0415

    store = open_store(config)
    closers: list[Callable[[], None]] = [store.close]
    try:
        links = _links(config)
        notifier = _notifier(config, links) if notify else None
        elector = health = server = listener = digest = None
        if service:
            digest = digest_notifier(config) if notify and config.digest.enabled else None
            from watchdogd.metrics import Health, Metrics, MetricsServer  # noqa: PLC0415

            elector = _elector(config) if config.daemon.leader_election else None
            health = Health(stuck_after=2 * config.daemon.pass_timeout.total_seconds())
            metrics = Metrics(health, leader=elector.is_leader if elector else lambda: True)
            if config.daemon.metrics_listen:
                try:
                    server = MetricsServer(metrics, config.daemon.metrics_listen)
                except ValueError as exc:
                    raise BuildError(str(exc)) from None
                closers.append(server.stop)
            if links is not None:
                listener = _listener(config, links, store)
                closers.append(listener.stop)
        sources = _sources(config, metrics)
        closers.append(sources.close)
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        if elector is not None:
            extra["acting"] = elector.is_leader
        engine = Engine(config, store, sources, notifier=notifier, dry_run=dry_run, **extra)
        web = _web(config, store, engine, clock) if service and config.web.listen else None
        if web is not None:
            closers.append(web.stop)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    return App(config, store, sources, notifier, engine, elector, health, metrics, server,
               links, listener, digest, web, closers)


def _web(config: Config, store: Store, engine: Engine,
         clock: Callable[[], datetime] | None) -> WebServer:
    """The admin page, fed each pass's report; BuildError without ``watchdogd[web]``."""
    try:
        import jinja2  # noqa: F401, PLC0415
        import jupyterhub.services.auth  # noqa: F401, PLC0415
        import tornado  # noqa: F401, PLC0415
    except ImportError:
        raise BuildError("web.listen: the admin page needs the extra: "
                         "pip install 'watchdogd[web]'") from None
    from watchdogd.times import utcnow  # noqa: PLC0415
    from watchdogd.web import Latest, WebServer  # noqa: PLC0415

    hub = config.hubs.get(config.web.hub or "")
    if hub is None or hub.api_token is None:
        raise BuildError(f"web.hub: hubs.{config.web.hub} has no api_token (the service's token "
                         "asks the hub who a visitor is)")
    latest = Latest()
    engine.listeners.append(latest.observe)
    try:
        return WebServer(config, store, latest, clock or utcnow)
    except ValueError as exc:
        raise BuildError(f"web.listen: {exc}") from None


def reload(app: App, path: str | Path | None, dry_run: bool | None) -> Reload:
    """The configuration at ``path`` read again for SIGHUP, validated as ``config check`` does.

    Builds the new sources (instrumented into the running metrics) and notifier; applies
    nothing. Raises ReloadRefused with one line naming every problem.
    """
    from watchdogd.daemon import Reload, ReloadRefused  # noqa: PLC0415

    try:
        config = load_config(path, check_files=True)
    except _config.ConfigError as exc:
        raise ReloadRefused("; ".join(f"config: {p}" for p in exc.problems)) from None
    try:
        # ``[listener]`` belongs to the process (its port, its key): the running links stay.
        notifier = _notifier(config, app.links)
    except BuildError as exc:
        raise ReloadRefused(str(exc)) from None
    return Reload(config, _sources(config, app.metrics), notifier,
                  config.remediation.dry_run if dry_run is None else dry_run)


def open_store(config: Config) -> Store:
    """The state store of ``[state]`` (created or upgraded on first use)."""
    from watchdogd.store import Store, StoreError  # noqa: PLC0415

    try:
        return Store(config.state.resolved_url())
    except StoreError as exc:
        raise BuildError(f"state: {exc}") from None


def _sources(config: Config, metrics: Metrics | None) -> Sources:
    """The adapters; with a daemon's metrics, counting every failed call in them."""
    if metrics is not None:
        from watchdogd.metrics import InstrumentedSources  # noqa: PLC0415

        return InstrumentedSources(config, metrics)
    from watchdogd.sources import Sources  # noqa: PLC0415

    return Sources(config)


def _notifier(config: Config, links: AckLinks | None = None) -> Notifier:
    from watchdogd.notify import Notifier, NotifyConfigError  # noqa: PLC0415

    try:
        return Notifier.from_config(config.notify, links)
    except NotifyConfigError as exc:
        raise BuildError(str(exc)) from None


def _links(config: Config) -> AckLinks | None:
    """The signer of acknowledge links, when ``[listener] listen`` is set."""
    listener = config.listener
    if listener.listen is None:
        return None
    from watchdogd.acklinks import AckLinks  # noqa: PLC0415

    # The model validator made sure both are there once the key file was read.
    assert listener.key is not None and listener.public_url is not None
    try:
        return AckLinks(listener.key.get_secret_value().encode("utf-8"), listener.public_url,
                        listener.link_ttl)
    except ValueError as exc:
        raise BuildError(str(exc)) from None


def _listener(config: Config, links: AckLinks, store: Store) -> AckListener:
    from watchdogd.listener import AckListener  # noqa: PLC0415

    assert config.listener.listen is not None
    try:
        return AckListener(links, store, config.listener.listen,
                           timeout=config.listener.timeout.total_seconds())
    except ValueError as exc:
        raise BuildError(str(exc)) from None


def digest_notifier(config: Config) -> Notifier:
    """The weekly digest's notifier: ``[digest] urls_file``, with ``[notify]``'s timing."""
    from watchdogd.notify import Notifier, NotifyConfigError  # noqa: PLC0415

    if not config.digest.urls_file:
        raise BuildError("digest.urls_file: not set: the digest has nowhere to go")
    settings = config.notify.model_copy(update={"urls": None,
                                                "urls_file": config.digest.urls_file})
    try:
        return Notifier.from_config(settings)
    except NotifyConfigError as exc:
        # The message names notify.*: the file is digest.urls_file here.
        raise BuildError(str(exc).replace("notify.urls_file", "digest.urls_file")
                         .replace("notify:", "digest.urls_file:")) from None


def _elector(config: Config) -> LeaderElector:
    """The Lease elector of ``[daemon]``, on the lease cluster's credentials."""
    from watchdogd.leader import KubeLeaseApi, LeaderElector, default_identity  # noqa: PLC0415
    from watchdogd.model import SourceError  # noqa: PLC0415
    from watchdogd.sources.kube import api_client  # noqa: PLC0415

    daemon = config.daemon
    cluster = daemon.lease_cluster
    if cluster is None:
        # The first cluster of the file, as documented: every replica reads the same
        # file, so they all meet on the same Lease.
        if not config.clusters:
            raise BuildError("daemon.leader_election: no [clusters.X] to hold the Lease")
        cluster = next(iter(config.clusters))
    duration = daemon.lease_duration.total_seconds()
    if duration < 3:
        raise BuildError("daemon.lease_duration: at least 3s (renewals run every third of it)")
    try:
        client = api_client(cluster, config.clusters[cluster])
    except SourceError as exc:
        raise BuildError(f"daemon.lease_cluster: {exc}") from None
    timeout = min(duration / 3, config.clusters[cluster].timeout.total_seconds())
    api = KubeLeaseApi(client, daemon.lease_namespace, daemon.lease_name, timeout=timeout)
    return LeaderElector(api, default_identity(), duration)
