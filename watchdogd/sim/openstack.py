"""A fake OpenStack cloud, Keystone, Cinder and Nova over real HTTP, that openstacksdk and the
``openstack`` CLI use unchanged.

watchdogd's volume remediation depends on how Cinder answers: the JSON shapes, the microversion
gate on attachments (3.27), marker pagination with ``volumes_links``, ``all_tenants`` being
silently ignored for non-admins, the 403 of a non-admin ``os-reset_status``, what an attachment
delete does to the volume's status. The real services (PyPI ``cinder`` and ``keystone``) are the
ground truth and are used by the integration tests; this package copies what was observed there
(shapes checked against cinder 29.0 and keystone 30.0) so that unit, scenario and benchmark runs
need neither a virtualenv nor seconds of start-up, and so that faults the real services cannot
be asked for (Keystone down, a token revoked half way through a list, a 503 storm, a volume
changing between two requests) are one method call away.

:class:`OpenStackSim` composes :class:`~watchdogd.sim.keystone.Keystone`,
:class:`~watchdogd.sim.cinder.Cinder` and :class:`~watchdogd.sim.nova.Nova` (the servers
under a cluster's nodes), each an :class:`~watchdogd.sim._http.HttpSim` on its own
port (the catalog Keystone hands out points at Cinder's and Nova's), and holds what they
share: the lock, the clock, the settings, the request log, the hooks.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from watchdogd.sim._http import Request
from watchdogd.sim.cinder import Cinder
from watchdogd.sim.keystone import Keystone
from watchdogd.sim.nova import Nova
from watchdogd.sim.openstack_base import OpenStackError, Service

__all__ = ["OpenStackError", "OpenStackSim"]

Obj = dict[str, Any]
Clock = Callable[[], datetime]


@dataclass
class _Hook:
    service: str | None
    pattern: re.Pattern[str]
    method: str | None
    fn: Callable[[OpenStackSim], None]
    times: int | None
    fired: int = 0


class OpenStackSim:
    """Keystone, Cinder and Nova in threads: ``with OpenStackSim() as sim: ...``.

    The world is built directly (:meth:`add_volume`, :meth:`add_attachment`, the ``inject_*``
    helpers, bound from the service that owns that state) and changed over HTTP by the clients
    under test. :attr:`requests` logs every request as ``(service, method, path?query)``;
    :meth:`fail`, :meth:`down`, :meth:`expire_tokens` and :meth:`on_request` inject faults.
    """

    ADMIN_PASSWORD = "sim-admin-secret"

    def __init__(self, *, page_max: int = 1000, clock: Clock | None = None,
                 region: str = "RegionOne", project_id_in_url: bool = True,
                 token_ttl: timedelta = timedelta(hours=1), default_quotas: bool = False) -> None:
        """``page_max`` is Cinder's ``osapi_max_limit`` (and Nova's ``max_limit``); ``clock``
        gives the simulated "now" (timestamps, token and credential expiry), so tests with a
        fake clock stay consistent. ``default_quotas``: projects without quotas of their own
        get Cinder's and Nova's shipped defaults (10 volumes, 10 instances...) instead of
        none, so that worlds of thousands of volumes are not over quota by accident."""
        self.page_max = page_max
        self.default_quotas = default_quotas
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.region = region
        self.project_id_in_url = project_id_in_url
        self.token_ttl = token_ttl
        self.requests: list[tuple[str, str, str]] = []
        #: tracebacks of unexpected exceptions (answered 500), to debug the simulator itself
        self.errors: list[str] = []
        self.lock = threading.RLock()
        self._hooks: list[_Hook] = []
        self._revoke_after: int | None = None
        self.keystone = Keystone(self)
        self.cinder = Cinder(self, self.keystone)
        self.nova = Nova(self, self.keystone)
        keystone, cinder = self.keystone, self.cinder
        # The world builder's vocabulary, from the service whose state each call changes.
        self.add_project = keystone.add_project
        self.add_user = keystone.add_user
        self.add_application_credential = keystone.add_application_credential
        self.set_application_credential = keystone.set_application_credential
        self.expire_tokens = keystone.expire_tokens
        self.add_volume = cinder.add_volume
        self.add_volumes = cinder.add_volumes
        self.add_attachment = cinder.add_attachment
        self.add_attachments = cinder.add_attachments
        self.set_volume = cinder.set_volume
        self.set_attachment = cinder.set_attachment
        self.remove_volume = cinder.remove_volume
        self.volume = cinder.volume
        self.volumes = cinder.volume_list
        self.attachments = cinder.attachment_list
        self.inject_stuck_volume = cinder.inject_stuck_volume
        self.inject_dangling_attachment = cinder.inject_dangling_attachment
        self.inject_orphan_volume = cinder.inject_orphan_volume
        self.add_server = self.nova.add_server
        self.set_server = self.nova.set_server
        self.remove_server = self.nova.remove_server
        self.server = self.nova.server
        self.set_volume_quota = cinder.set_quota
        self.set_compute_quota = self.nova.set_quota
        self.admin_project_id = self.add_project("admin")
        self.admin_user_id = self.add_user("admin", self.ADMIN_PASSWORD, project="admin",
                                           roles=("admin", "member", "reader"))

    # -- life ----------------------------------------------------------------------------------

    def _services(self, service: str | None) -> tuple[Service, ...]:
        if service is None:
            return (self.keystone, self.cinder, self.nova)
        by_name = {"keystone": self.keystone, "cinder": self.cinder, "nova": self.nova}
        if service not in by_name:
            raise ValueError("service is 'keystone', 'cinder' or 'nova'")
        return (by_name[service],)

    def start(self) -> OpenStackSim:
        """Listen on three free ports of 127.0.0.1 (the same ones again after :meth:`down`)."""
        self.keystone.start()
        self.cinder.start()
        self.nova.start()
        return self

    def stop(self) -> None:
        """Stop every service (idempotent)."""
        self.keystone.stop()
        self.cinder.stop()
        self.nova.stop()

    def down(self, service: str = "keystone") -> None:
        """Close ``keystone``, ``cinder`` or ``nova``'s socket and cut its connections
        (refused/reset)."""
        self._services(service)[0].down()

    def up(self, service: str = "keystone") -> None:
        """Listen again on the same port."""
        self._services(service)[0].up()

    def __enter__(self) -> OpenStackSim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def send_date(self) -> bool:
        """Whether answers carry a ``Date`` header (a proxy in front may strip it)."""
        return self.cinder.send_date

    @send_date.setter
    def send_date(self, value: bool) -> None:
        self.keystone.send_date = self.cinder.send_date = self.nova.send_date = value

    @property
    def keystone_url(self) -> str:
        """Keystone's root URL."""
        return self.keystone.base_url

    @property
    def auth_url(self) -> str:
        """The ``auth_url`` for clouds.yaml (``.../v3``)."""
        return self.keystone.auth_url

    @property
    def cinder_url(self) -> str:
        """Cinder's root URL (what ``block_storage_endpoint_override`` takes)."""
        return self.cinder.base_url

    @property
    def nova_url(self) -> str:
        """Nova's root URL (the catalog's compute endpoint is ``.../v2.1``)."""
        return self.nova.base_url

    # -- clients -------------------------------------------------------------------------------

    def write_clouds_yaml(self, path: str | Path, cloud: str = "sim", *, user: str = "admin",
                          password: str | None = None,
                          application_credential: tuple[str, str] | None = None) -> str:
        """Write a clouds.yaml (JSON is YAML) with one entry; password or app credential auth."""
        auth: Obj = {"auth_url": self.auth_url}
        entry: Obj = {"region_name": self.region, "interface": "public",
                      "identity_api_version": "3"}
        if application_credential is not None:
            entry["auth_type"] = "v3applicationcredential"
            auth.update(application_credential_id=application_credential[0],
                        application_credential_secret=application_credential[1])
        else:
            owner = self.keystone.user_by_name(user)
            entry["auth_type"] = "password"
            auth.update(username=user, user_domain_name="Default",
                        password=password if password is not None else owner.password,
                        project_name=self.keystone.projects[owner.project_id].name,
                        project_domain_name="Default")
        entry["auth"] = auth
        Path(path).write_text(json.dumps({"clouds": {cloud: entry}}, indent=2), encoding="utf-8")
        return str(path)

    def expire_tokens_after(self, cinder_requests: int) -> None:
        """Revoke every token once ``cinder_requests`` more Cinder requests were answered: a
        token that expires in the middle of a paginated list."""
        with self.lock:
            self._revoke_after = cinder_requests

    # -- faults and hooks ----------------------------------------------------------------------

    def fail(self, path_regex: str, *, status: int = 500, times: int | None = None,
             service: str | None = "cinder", method: str | None = None, after: int = 0,
             hang: float | None = None) -> None:
        """Answer requests whose path matches ``path_regex`` with ``status``.

        The next ``times`` matches (None: all) after the first ``after`` fail; ``status=0``
        closes the connection without an answer; ``hang`` delays the answer that many seconds.
        ``service=None`` sets the fault on both services (each counts its own matches).
        """
        for target in self._services(service):
            target.fail(status, times=times, hang=hang, path=path_regex, method=method,
                        after=after)

    def clear_faults(self) -> None:
        """Forget every fault and hook."""
        for service in self._services(None):
            service.clear_faults()
        with self.lock:
            self._hooks.clear()
            self._revoke_after = None

    def on_request(self, path_regex: str, fn: Callable[[OpenStackSim], None], *,
                   service: str | None = "cinder", method: str | None = None,
                   times: int | None = 1) -> None:
        """Run ``fn(sim)`` right after a matching request was answered: the world changing
        while a client is in the middle of something."""
        with self.lock:
            self._hooks.append(_Hook(service, re.compile(path_regex), method, fn, times))

    def answered(self, service: str, req: Request) -> None:
        """Called by the services once a request (not a fault) has its answer: counts down
        :meth:`expire_tokens_after` and runs the matching hooks (outside the lock)."""
        hooks = []
        with self.lock:
            if service == "cinder" and self._revoke_after is not None:
                self._revoke_after -= 1
                if self._revoke_after <= 0:
                    self._revoke_after = None
                    for token in self.keystone.tokens.values():
                        token.revoked = True
            for hook in self._hooks:
                if hook.service not in (None, service):
                    continue
                if hook.method not in (None, req.method) or not hook.pattern.search(req.path):
                    continue
                if hook.times is not None and hook.fired >= hook.times:
                    continue
                hook.fired += 1
                hooks.append(hook)
        for hook in hooks:
            hook.fn(self)

    def reset_requests(self) -> None:
        """Forget the request log."""
        with self.lock:
            self.requests.clear()
        for service in self._services(None):
            service.reset_requests()

    def count(self, service: str | None = None, path_regex: str | None = None,
              method: str | None = None) -> int:
        """How many logged requests match."""
        pattern = re.compile(path_regex) if path_regex else None
        with self.lock:
            return sum(1 for s, m, p in self.requests
                       if (service is None or s == service) and (method is None or m == method)
                       and (pattern is None or pattern.search(p)))
