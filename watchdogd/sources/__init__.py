"""Adapters to the outside world, one module per system, no decisions.

:class:`Sources` builds each adapter on first use from the configuration and
keeps it for the life of the process (connection pools are worth keeping).
Adding a system is a module, its protocol in :mod:`watchdogd.ports` and one line in
:data:`FACTORIES`. Each factory is typed as its protocol, so mypy proves here that every
adapter has the methods, with the parameters, that the checks call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from watchdogd import ports
from watchdogd.config import Config
from watchdogd.model import SourceError

__all__ = ["FACTORIES", "Sources"]

Factory = Callable[[Config, str], Any]


def _kube(config: Config, name: str) -> ports.Kube:
    from watchdogd.sources.kube import KubeSource  # noqa: PLC0415

    return KubeSource(name, config.clusters[name])


def _hubdb(config: Config, name: str) -> ports.HubDb:
    from watchdogd.sources.hubdb import HubDbSource  # noqa: PLC0415

    return HubDbSource(name, config.hubs[name])


def _hubapi(config: Config, name: str) -> ports.HubApi:
    from watchdogd.sources.hubapi import HubApiSource  # noqa: PLC0415

    return HubApiSource(name, config.hubs[name])


def _proxy(config: Config, name: str) -> ports.Proxy:
    from watchdogd.sources.proxy import ProxySource  # noqa: PLC0415

    return ProxySource(name, config.hubs[name])


def _nublado(config: Config, name: str) -> ports.Nublado:
    from watchdogd.sources.nublado import NubladoSource  # noqa: PLC0415

    return NubladoSource(name, config.hubs[name])


def _probe(config: Config, name: str) -> ports.HubProbe:
    from watchdogd.sources.probe import HubProbeSource  # noqa: PLC0415

    return HubProbeSource(name, config.hubs[name])


def _tls(config: Config, name: str) -> ports.Tls:
    from watchdogd.sources.tls import TlsSource  # noqa: PLC0415

    return TlsSource(name, config)


def _openstack(config: Config, name: str) -> ports.OpenStack:
    from watchdogd.sources.openstack import OpenStackSource  # noqa: PLC0415

    return OpenStackSource(name, config.clouds[name])


#: source name -> factory(config, target name). Imports are lazy so that a
#: check run never pays for the SDKs of sources it does not use.
FACTORIES: dict[str, Factory] = {
    "kube": _kube,
    "hubdb": _hubdb,
    "hubapi": _hubapi,
    "proxy": _proxy,
    "openstack": _openstack,
    "tls": _tls,
    "nublado": _nublado,
    "probe": _probe,
}


class Sources:
    """The adapters of one process, built lazily and shared between passes."""

    def __init__(self, config: Config, factories: dict[str, Factory] | None = None) -> None:
        self.config = config
        self.factories = dict(FACTORIES if factories is None else factories)
        self._adapters: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def adapter(self, source: str, target: str) -> Any:
        """The adapter for ``source`` of ``target``; a SourceError if it cannot be built."""
        key = (source, target)
        with self._lock:
            if key not in self._adapters:
                try:
                    self._adapters[key] = self.factories[source](self.config, target)
                except (ValueError, KeyError) as exc:
                    raise SourceError(source, target, f"not configured: {exc}") from None
            return self._adapters[key]

    def close(self) -> None:
        """Close every adapter that was built."""
        with self._lock:
            for adapter in self._adapters.values():
                close = getattr(adapter, "close", None)
                if close is not None:
                    close()
            self._adapters.clear()
