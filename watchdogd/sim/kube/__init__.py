"""The simulated Kubernetes API server (package): :class:`KubeSim` and the names tests use.

Modules by job: ``resources`` (the resource table), ``errors`` (Status answers),
``selectors``, ``store`` (versions, watches, paged lists), ``patch``, ``tables`` (kubectl),
``tls``, ``verbs`` (the write rules), ``routes`` (paths, verbs, RBAC, discovery documents)
and ``apiserver`` (KubeSim: lifecycle, dispatch to the store, and the direct test API).
HTTP itself is the shared base, ``watchdogd.sim._http``.
"""

from watchdogd.sim._http import Response as _Response
from watchdogd.sim.kube.apiserver import KubeSim
from watchdogd.sim.kube.errors import ApiError
from watchdogd.sim.kube.resources import RESOURCES, ResourceType
from watchdogd.sim.kube.selectors import parse_field_selector, parse_label_selector
from watchdogd.sim.kube.tables import human_duration
from watchdogd.sim.kube.tls import SIM_CA_PEM

__all__ = ["RESOURCES", "SIM_CA_PEM", "ApiError", "KubeSim", "ResourceType", "_Response",
           "human_duration", "parse_field_selector", "parse_label_selector"]
