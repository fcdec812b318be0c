"""The Nublado lab controller's REST API, faithful to lsst-sqre/nublado, in a thread.

From ``controller/handlers/labs.py``, ``services/lab.py`` and ``models/v1/lab.py``; mounted
under ``/nublado`` as in Phalanx:

- ``GET /nublado/spawner/v1/labs``: the usernames whose lab status is ``running`` (labs
  pending, terminating, terminated or failed are not listed);
- ``GET /nublado/spawner/v1/labs/{username}``: the ``UserLabState`` (``user``, ``options``,
  ``env``, ``status``, ``pod`` ``present``/``missing``, ``internal_url``, ``resources``,
  ``quota``), or 404 ``unknown_user``;
- ``DELETE /nublado/spawner/v1/labs/{username}``: the lab goes ``terminating`` (its
  ``internal_url`` cleared) while the pod and then the namespace are deleted, then the state
  is dropped: 204. 404 ``unknown_user``; 409 ``operation_in_progress`` while another
  operation (a spawn, or a delete held with :meth:`NubladoSim.hold_delete`) runs; 500
  ``delete_failed`` when the delete fails (:meth:`NubladoSim.fail_deletes`).

Errors are Safir's ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``; unknown paths
FastAPI's ``{"detail": "Not Found"}``. Gafaelfawr guards the routes: no token or an unknown
one is 401 (``WWW-Authenticate: Bearer``), a token without ``admin:jupyterlab`` is 403.

The controller answers from memory. :meth:`NubladoSim.reconcile` is its ``reconcile()``:
labs are rebuilt from the namespaces ``nublado-<user>`` and their pods in the
:class:`~watchdogd.sim.kube.KubeSim` store (status from the pod phase), a known lab whose pod
is gone becomes ``failed``, a namespace without a pod is deleted as incomplete, and labs no
longer running are deleted. It runs when asked, and by itself before answering a request
once ``reconcile_every`` (an hour, the controller's ``LAB_STATE_REFRESH_INTERVAL``) has passed
on the simulator's clock: until then its memory may say ``running`` for a lab that is gone.
"""

from __future__ import annotations

import copy
import secrets
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

from watchdogd.sim._http import Fault, HttpSim, Request, Response, utcnow
from watchdogd.sim.kube import KubeSim

__all__ = ["LAB_PREFIX", "NubladoSim"]

LAB_PREFIX = "/nublado/spawner/v1/labs"
ADMIN_SCOPE = "admin:jupyterlab"
_PHASE_STATUS = {"Pending": "pending", "Running": "running", "Succeeded": "terminated",
                 "Failed": "terminated", "Unknown": "failed"}


def _error(status: int, kind: str, msg: str, loc: list[str] | None = None) -> Response:
    entry: dict[str, Any] = {"msg": msg, "type": kind}
    if loc:
        entry["loc"] = loc
    return Response.json(status, {"detail": [entry]})


class NubladoSim(HttpSim):
    """The lab controller: ``with NubladoSim(kube) as ctl: ctl.add_lab("rachel")``."""

    kind = "nubladosim"

    def __init__(self, kube: KubeSim, *, token: str | None = None, prefix: str = "nublado-",
                 reconcile_every: timedelta = timedelta(minutes=60),
                 clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__(clock=clock)
        self.kube = kube
        self.prefix = prefix
        self.token = token or secrets.token_hex(16)
        self._tokens: dict[str, frozenset[str]] = {self.token: frozenset({ADMIN_SCOPE})}
        self.reconcile_every = reconcile_every
        self.last_reconcile = clock()
        #: how many reconciles ran (by request or by hand)
        self.reconciles = 0
        self._labs: dict[str, dict[str, Any]] = {}
        self._ops: dict[str, str] = {}  # user -> "spawn" | "delete", an operation in progress
        self._held: dict[str, threading.Event] = {}
        self._fail_deletes = False
        self._lock = threading.RLock()

    @property
    def url(self) -> str:
        """What ``hubs.X.nublado_url`` is: the base URL with the ``/nublado`` prefix."""
        return f"{self.base_url}/nublado"

    def add_token(self, token: str, scopes: set[str]) -> str:
        """Accept ``token`` with ``scopes`` (``admin:jupyterlab`` or not)."""
        self._tokens[token] = frozenset(scopes)
        return token

    # -- Python API ----------------------------------------------------------------------------

    def names(self, user: str) -> tuple[str, str]:
        """The lab's (namespace, pod name)."""
        return f"{self.prefix}{user}", f"{user}-nb"

    def state(self, user: str) -> dict[str, Any] | None:
        """A copy of one lab's state in the controller's memory, or None."""
        with self._lock:
            lab = self._labs.get(user)
            return copy.deepcopy(lab) if lab is not None else None

    def running(self) -> list[str]:
        """Users whose labs the memory holds as running (what ``GET /labs`` lists)."""
        with self._lock:
            return [u for u, lab in self._labs.items() if lab["status"] == "running"]

    def remember(self, user: str, status: str = "running", *, pod: str = "present",
                 operation: str | None = None) -> dict[str, Any]:
        """Put a lab into the controller's memory as it would record one it spawned."""
        namespace, name = self.names(user)
        state = {
            "options": {"image_list": "ghcr.io/lsst-sqre/sciplat-lab:w_2026_47",
                        "size": "medium", "enable_debug": False, "reset_user_env": False},
            "env": {"JUPYTERHUB_SERVICE_PREFIX": f"/nb/user/{user}/",
                    "JUPYTERHUB_API_TOKEN": secrets.token_hex(16)},
            "user": {"username": user, "name": user.title(), "uid": 1000 + len(self._labs),
                     "gid": 1000 + len(self._labs), "groups": []},
            "status": status, "pod": pod,
            "internal_url": (f"http://{name}.{namespace}:8888" if status == "running"
                             else None),
            "resources": {"limits": {"cpu": 4.0, "memory": 12884901888},
                          "requests": {"cpu": 1.0, "memory": 3221225472}},
            "quota": None,
        }
        with self._lock:
            self._labs[user] = state
            if operation:
                self._ops[user] = operation
            else:
                self._ops.pop(user, None)
        return copy.deepcopy(state)

    def add_lab(self, user: str, *, phase: str = "Running", pod: bool = True) -> dict[str, Any]:
        """A lab as the controller spawns one: namespace, pod (``pod=False``: none) and
        memory. The pod carries Nublado's labels."""
        namespace, name = self.names(user)
        self.ensure_namespace(user)
        if pod:
            self.kube.put({
                "kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"nublado.lsst.io/category": "lab",
                                        "nublado.lsst.io/user": user}},
                "spec": {"containers": [{"name": "notebook",
                                         "image": "ghcr.io/lsst-sqre/sciplat-lab:w_2026_47"}],
                         "nodeName": "node-1"},
                "status": {"phase": phase}})
        return self.remember(user, _PHASE_STATUS.get(phase, "failed") if pod else "running",
                             pod="present" if pod else "missing")

    def ensure_namespace(self, user: str) -> None:
        """The lab's namespace, created if missing (labelled as Nublado labels it)."""
        namespace, _ = self.names(user)
        if self.kube.get("Namespace", namespace) is None:
            self.kube.put({"kind": "Namespace", "apiVersion": "v1",
                           "metadata": {"name": namespace, "labels": {
                               "kubernetes.io/metadata.name": namespace,
                               "nublado.lsst.io/category": "lab",
                               "nublado.lsst.io/user": user}},
                           "spec": {"finalizers": ["kubernetes"]},
                           "status": {"phase": "Active"}})

    def forget(self, user: str) -> bool:
        """Drop a lab from memory only (a controller restarted before its reconcile)."""
        with self._lock:
            self._ops.pop(user, None)
            return self._labs.pop(user, None) is not None

    def hold_delete(self, user: str) -> threading.Event:
        """The next delete of ``user``'s lab stays ``terminating`` until the returned event is
        set (a namespace slow to go): meanwhile another DELETE is a 409."""
        event = threading.Event()
        with self._lock:
            self._held[user] = event
        return event

    def fail_deletes(self, fail: bool = True) -> None:
        """Deletes fail (Kubernetes refuses): 500 ``delete_failed``, the lab left ``failed``."""
        self._fail_deletes = fail

    def delete_lab(self, user: str) -> int:
        """What ``DELETE`` does; returns the status code it answers (204, 404, 409, 500).

        Blocks while a :meth:`hold_delete` holds it, as the real request waits for the
        namespace to go.
        """
        with self._lock:
            lab = self._labs.get(user)
            if lab is None:
                return 404
            if user in self._ops:
                return 409
            self._ops[user] = "delete"
            lab["status"], lab["internal_url"] = "terminating", None
            held = self._held.pop(user, None)
        if held is not None:
            held.wait(30)
        with self._lock:
            self._ops.pop(user, None)
            if self._fail_deletes:
                lab["status"] = "failed"
                return 500
            namespace, name = self.names(user)
            self.kube.delete("Pod", name, namespace)
            self.kube.delete("Namespace", namespace)
            self._labs.pop(user, None)
        return 204

    def reconcile(self) -> None:
        """The controller's ``reconcile()``: memory rebuilt from Kubernetes (see module)."""
        with self._lock:
            self.reconciles += 1
            self.last_reconcile = self.clock()
            observed: dict[str, str] = {}
            for ns in self.kube.list("Namespace"):
                name = str(ns["metadata"]["name"])
                if not name.startswith(self.prefix):
                    continue
                user = name[len(self.prefix):]
                pod = self.kube.get("Pod", f"{user}-nb", name)
                if pod is not None:
                    phase = str((pod.get("status") or {}).get("phase") or "Unknown")
                    observed[user] = _PHASE_STATUS.get(phase, "failed")
                elif user not in self._ops:
                    self.kube.delete("Namespace", name)  # "Deleting incomplete namespace"
            for user, lab in self._labs.items():
                if user in self._ops or lab["status"] == "failed":
                    continue
                lab["status"] = observed.get(user, "failed")
                if lab["status"] != "running":
                    lab["internal_url"] = None
            for user in set(observed) - set(self._labs):
                self.remember(user, observed[user])
            done = [u for u, lab in self._labs.items()
                    if lab["status"] in ("terminated", "failed") and u not in self._ops]
        for user in done:  # _delete_completed_labs
            self.delete_lab(user)

    def _maybe_reconcile(self) -> None:
        if self.clock() - self.last_reconcile >= self.reconcile_every:
            self.reconcile()

    # -- HTTP ----------------------------------------------------------------------------------

    def fault_response(self, fault: Fault) -> Response:
        """FastAPI's shape: a JSON ``detail``."""
        return Response.json(fault.status, {"detail": "simulated fault"})

    def handle(self, req: Request) -> Response:
        """Gafaelfawr's token check, then the three lab routes."""
        if req.path != LAB_PREFIX and not req.path.startswith(LAB_PREFIX + "/"):
            return Response.json(404, {"detail": "Not Found"})
        header = req.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        scopes = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if scopes is None:
            resp = _error(401, "invalid_token", "Invalid token")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="nublado", error="invalid_token"'
            return resp
        if ADMIN_SCOPE not in scopes:
            return _error(403, "permission_denied", f"Token does not have {ADMIN_SCOPE} scope")
        self._maybe_reconcile()
        rest = req.path[len(LAB_PREFIX):].strip("/")
        if not rest:
            if req.method != "GET":
                return Response.json(405, {"detail": "Method Not Allowed"})
            return Response.json(200, self.running())
        if "/" in rest:
            return Response.json(404, {"detail": "Not Found"})
        user = unquote(rest)
        if req.method == "GET":
            state = self.state(user)
            if state is None:
                return _error(404, "unknown_user", f"Unknown user {user}", ["path", "username"])
            return Response.json(200, state)
        if req.method == "DELETE":
            status = self.delete_lab(user)
            if status == 204:
                return Response(204, b"", None)
            if status == 404:
                return _error(404, "unknown_user", f"Unknown user {user}", ["path", "username"])
            if status == 409:
                return _error(409, "operation_in_progress",
                              f"Conflicting operation for {user} already in progress")
            return _error(500, "delete_failed", "Failed to delete lab")
        return Response.json(405, {"detail": "Method Not Allowed"})
