"""Checks and sources agree: every planned call exists on its adapter with those keywords."""

from __future__ import annotations

import inspect

import pytest

from tests.bindings import planned_calls
from watchdogd import ports
from watchdogd.config import ConfigError
from watchdogd.sources.hubapi import HubApiSource
from watchdogd.sources.hubdb import HubDbSource
from watchdogd.sources.kube import KubeSource
from watchdogd.sources.nublado import NubladoSource
from watchdogd.sources.openstack import OpenStackSource
from watchdogd.sources.probe import HubProbeSource
from watchdogd.sources.proxy import ProxySource
from watchdogd.sources.tls import TlsSource

ADAPTERS: dict[str, type] = {
    "hubdb": HubDbSource, "hubapi": HubApiSource, "proxy": ProxySource, "kube": KubeSource,
    "openstack": OpenStackSource, "tls": TlsSource, "nublado": NubladoSource,
    "probe": HubProbeSource,
}

PLANNED = planned_calls()


def test_every_source_has_a_protocol_and_an_adapter() -> None:
    assert set(ports.SOURCES.values()) == set(ADAPTERS)
    from watchdogd.sources import FACTORIES
    assert set(FACTORIES) == set(ADAPTERS)


def test_the_checks_plan_calls_of_every_kind() -> None:
    actions = {p.action for p in PLANNED if p.action}
    assert {"stop-server", "sync-routes", "delete-pod", "restart-hub", "delete-attachment",
            "reset-volume-status", "quarantine", "delete-orphan-volume", "delete-lab"} <= actions
    assert {p.source for p in PLANNED} == set(ADAPTERS)


@pytest.mark.parametrize("planned", PLANNED, ids=lambda p: f"{p.module}:{p.line}")
def test_each_planned_call_binds_to_the_adapter_method(planned: object) -> None:
    from tests.bindings import Planned

    assert isinstance(planned, Planned)
    adapter = ADAPTERS[planned.source]
    method = getattr(adapter, planned.method, None)
    assert callable(method), f"{adapter.__name__} has no {planned.method}"
    signature = inspect.signature(method)
    # the engine calls adapter.method(**params): every keyword must bind, and every
    # parameter without a default must be given
    signature.bind(None, **dict.fromkeys(planned.keywords))
    protocol = next(p for p, s in ports.SOURCES.items() if s == planned.source)
    assert inspect.signature(getattr(protocol, planned.method)).parameters.keys() == \
        signature.parameters.keys()


def test_call_refuses_what_is_not_a_protocol_method() -> None:
    with pytest.raises(TypeError):
        ports.call(ConfigError, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ports.call(ports.Kube.pod, "js2", "jhub", "p")  # type: ignore[call-arg]
    assert ports.call(ports.Kube.pod, "js2", name="p", namespace="jhub") == ports.Call(
        "kube", "js2", "pod", (("name", "p"), ("namespace", "jhub")))
