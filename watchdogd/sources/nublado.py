"""The Nublado lab controller's REST API: the fourth record of a lab, read and deleted.

On a Nublado deployment the hub's spawner asks the controller (``GET
/spawner/v1/labs/{username}``) whether a lab still runs, and the controller answers from
its memory, which its ``reconcile()`` refreshes from Kubernetes only periodically (hourly by
default). This adapter reads that memory and asks the controller to delete a lab; it makes
no decisions. Routes, as in lsst-sqre/nublado ``controller/handlers/labs.py``, under the
controller's prefix (``/nublado``, part of ``hubs.X.nublado_url``):

- ``GET /spawner/v1/labs``: the users whose labs are ``running`` (a JSON list of names);
- ``GET /spawner/v1/labs/{username}``: a ``UserLabState``, or 404 (``unknown_user``);
- ``DELETE /spawner/v1/labs/{username}``: 204; 404 unknown user; 409 another operation in
  progress; 500 the delete failed.

Errors are FastAPI/Safir bodies, ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``.
The token is a Gafaelfawr token with ``admin:jupyterlab``, sent as ``Authorization: Bearer``.
A ``UserLabState`` carries the lab's ``env`` (the user's hub API token among it): it is
dropped here, so it never reaches a finding, the audit log or a message.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from watchdogd.config import HubConfig
from watchdogd.model import PreconditionFailed
from watchdogd.sources.base import HttpClient

__all__ = ["LAB_STATUSES", "NubladoSource", "lab_summary"]

#: ``LabStatus`` of the controller's models
LAB_STATUSES = frozenset({"pending", "running", "terminating", "terminated", "failed"})
#: the parts of a ``UserLabState`` watchdogd keeps (never ``env``)
_KEPT = ("status", "pod", "internal_url", "resources", "quota")
_OPTIONS = ("image_list", "image_dropdown", "image_class", "image_tag", "size")


def lab_summary(state: dict[str, Any]) -> dict[str, Any]:
    """What watchdogd keeps of a ``UserLabState``: identity, status, pod, URL, resources,
    the image and size chosen; never ``env`` nor the user's groups."""
    user = state.get("user") if isinstance(state.get("user"), dict) else {}
    options = state.get("options") if isinstance(state.get("options"), dict) else {}
    summary = {key: state.get(key) for key in _KEPT}
    summary["user"] = (user or {}).get("username")
    summary["options"] = {key: (options or {}).get(key) for key in _OPTIONS
                          if (options or {}).get(key) is not None}
    return summary


class NubladoSource:
    """One Nublado controller, with an admin token."""

    def __init__(self, target: str, config: HubConfig) -> None:
        if config.nublado_url is None or config.nublado_token is None:
            raise ValueError(f"hubs.{target}: nublado_url and nublado_token_file are needed")
        self.http = HttpClient(
            "nublado", target, config.nublado_url,
            headers={"Authorization": f"Bearer {config.nublado_token.get_secret_value()}",
                     "Accept": "application/json"},
            timeout=config.timeout.total_seconds(),
            max_bytes=int(config.max_response_bytes),
            credential=(f"the Nublado controller token of hub {target} "
                        f"(hubs.{target}.nublado_token_file)"),
        )

    def running_labs(self) -> list[str]:
        """The users whose labs the controller holds as ``running`` (its memory, not K8s)."""
        data = self.http.get_json("/spawner/v1/labs", need="the scope admin:jupyterlab")
        if not isinstance(data, list) or not all(isinstance(u, str) and u for u in data):
            raise self.http.error("GET /spawner/v1/labs: answer is not a list of usernames")
        return list(data)

    def lab(self, user: str) -> dict[str, Any] | None:
        """One user's lab state (:func:`lab_summary`), or None when the controller has none."""
        path = f"/spawner/v1/labs/{quote(user, safe='')}"
        response = self.http.request("GET", path, ok=(200, 404),
                                     need="the scope admin:jupyterlab")
        if response.status_code == 404:
            return None
        try:
            data = response.json()
        except (ValueError, RecursionError):
            raise self.http.error(f"GET {path}: answer is not JSON") from None
        if not isinstance(data, dict) or data.get("status") not in LAB_STATUSES:
            raise self.http.error(f"GET {path}: not a lab state (no known status)")
        summary = lab_summary(data)
        if summary["user"] not in (None, user):
            raise self.http.error(f"GET {path}: the state is another user's")
        return summary

    def delete_lab(self, user: str) -> str:
        """``DELETE`` one user's lab. 409 (another operation in progress) and 404 (no lab any
        more) are the world having moved: the action is skipped, never retried in the pass."""
        path = f"/spawner/v1/labs/{quote(user, safe='')}"
        response = self.http.request("DELETE", path, ok=(204, 404, 409),
                                     need="the scope admin:jupyterlab")
        if response.status_code == 204:
            return "lab deleted (204)"
        detail = self.http.scrub(error_detail(response.text))
        if response.status_code == 409:
            raise PreconditionFailed(f"controller answered 409, another operation in progress "
                                     f"({detail}); looked at again next pass")
        raise PreconditionFailed(f"controller answered 404: it has no lab for this user any "
                                 f"more ({detail})")

    def close(self) -> None:
        """Close pooled connections."""
        self.http.close()


def error_detail(body: str) -> str:
    """The ``msg`` of a FastAPI/Safir error body (``{"detail": [{"msg": ...}]}``), short."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return body[:200]
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return str(detail[0].get("msg", ""))[:200]
    return str(detail)[:200] if detail else ""
