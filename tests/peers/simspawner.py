"""A JupyterHub spawner that stands in for KubeSpawner in integration tests.

``SimSpawner`` runs ``python -m http.server PORT --bind 127.0.0.1`` as the "notebook
server" (it starts in well under a second; the hub's readiness probe of
``{server.url}api`` accepts any non-5xx answer, so http.server's 404 passes), and
mirrors what KubeSpawner 7 does in Kubernetes against a Kubernetes API given by
configuration (a simulator: plain HTTP, ``Authorization: Bearer <token>``):

- ``start()`` creates the Pod ``jupyter-{user_server}`` (KubeSpawner 7's ``safe`` slug
  scheme) in the namespace, with KubeSpawner's labels and annotations, ``status.phase``
  ``Running`` and ``podIP`` 127.0.0.1;
- ``get_state()`` records ``pod_name``, ``namespace``, ``dns_name``,
  ``kubespawner_version`` (plus LocalProcessSpawner's ``pid``), even after a stop,
  like KubeSpawner; ``load_state()`` restores them;
- ``stop()`` deletes the pod (a 404 is fine) and ends the process itself;
- ``poll()`` reads the pod like KubeSpawner's watch cache does (pod gone: 1; no
  container status: 1; notebook container terminated: its exit code; Pending: None)
  and the local process; and it can be *frozen*: while ``$FREEZE_DIR/<username>`` (all
  of the user's servers) or ``$FREEZE_DIR/<username>:<servername>`` (one server; the
  default server is ``<username>:``) exists, ``poll()`` answers None (running) whatever
  happened, as KubeSpawner does when its watch died and its cache froze;
- ``stop()`` never returns while ``$FREEZE_DIR/hang-stop:<username>:<servername>`` exists
  (after it deleted the pod and ended the process): the hub's "pending stop" for ever.

Each running server also has a record ``$PEER_DIR/servers/<username>:<servername>.json``
(``user``, ``server_name``, ``pid``, ``port``, ``pod_name``, ``namespace``), written on
start and removed on stop, so the test harness can end servers by pid even when the
hub is gone.

Configuration (traitlets on ``SimSpawner``, each falling back to an env var):
``kube_url`` (``WATCHDOGD_TEST_KUBE_URL``), ``kube_token`` (``WATCHDOGD_TEST_KUBE_TOKEN``),
``namespace`` (``WATCHDOGD_TEST_NAMESPACE``, default ``jhub``), ``freeze_dir``
(``WATCHDOGD_TEST_FREEZE_DIR``), ``peer_dir`` (``WATCHDOGD_TEST_PEER_DIR``).

The naming functions at the top (``safe_slug``, ``multi_slug``, ``pod_name_for``,
``pod_labels``, ``pod_annotations``) do not need JupyterHub and are copied from
kubespawner 7.1 (``kubespawner/slugs.py`` and ``KubeSpawner._expand_user_properties``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import string
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import Bool, Dict, Float, Unicode, default

KUBESPAWNER_VERSION = "7.1.0"
SINGLEUSER_IMAGE = "quay.io/jupyterhub/k8s-singleuser-sample:4.1.0"

# --------------------------------------------------------------------------------------
# KubeSpawner 7 naming ("safe" slug scheme), copied from kubespawner/slugs.py
# --------------------------------------------------------------------------------------

_alphanum = tuple(string.ascii_letters + string.digits)
_alpha_lower = tuple(string.ascii_lowercase)
_alphanum_lower = tuple(string.ascii_lowercase + string.digits)
_object_pattern = re.compile(r"^[a-z0-9\-]+$")
_label_pattern = re.compile(r"^[a-z0-9\.\-_]+$", flags=re.IGNORECASE)
_non_alphanum_pattern = re.compile(r"[^a-z0-9]+")
_hash_length = 8
_slug_max_length = 48  # KubeSpawner._expand_user_properties


def is_valid_object_name(s: str) -> bool:
    """RFC 1035/1123 DNS label: 1-63 chars of [a-z0-9-], starts with a letter."""
    return (
        0 < len(s) <= 63
        and s.startswith(_alpha_lower)
        and s.endswith(_alphanum_lower)
        and bool(_object_pattern.match(s))
    )


def is_valid_label(s: str) -> bool:
    """Kubernetes label value: empty, or 1-63 chars [A-Za-z0-9._-], alphanumeric ends."""
    if not s:
        return True
    return (
        len(s) <= 63
        and s.startswith(_alphanum)
        and s.endswith(_alphanum)
        and bool(_label_pattern.match(s))
    )


def _extract_safe_name(name: str, max_length: int) -> str:
    safe_name = _non_alphanum_pattern.sub("-", name.lower())
    safe_name = safe_name.lstrip("-")[:max_length].rstrip("-")
    if safe_name and not safe_name.startswith(_alpha_lower):
        safe_name = "x-" + safe_name[: max_length - 2]
    if not safe_name:
        safe_name = "x"
    return safe_name


def strip_and_hash(name: str, max_length: int = 32) -> str:
    """``{safe part}---{8 hex of sha256(name)}``, at most ``max_length`` characters."""
    name_length = max_length - (_hash_length + 3)
    if name_length < 1:
        raise ValueError(f"Cannot make safe names shorter than {_hash_length + 4}")
    name_hash = hashlib.sha256(name.encode("utf8")).hexdigest()[:_hash_length]
    return f"{_extract_safe_name(name, name_length)}---{name_hash}"


def safe_slug(
    name: str, is_valid: Any = is_valid_object_name, max_length: int | None = None
) -> str:
    """KubeSpawner 7 ``safe_slug``: the name as-is when valid (and has no ``--``), else hashed."""
    if "--" in name:
        return strip_and_hash(name, max_length=max_length or 32)
    if is_valid(name) and (max_length is None or len(name) <= max_length):
        return name
    return strip_and_hash(name, max_length=max_length or 32)


def multi_slug(names: list[str], max_length: int = 48) -> str:
    """KubeSpawner 7 ``multi_slug``: ``{name1}--{name2}---{hash}``."""
    hasher = hashlib.sha256()
    hasher.update(names[0].encode("utf8"))
    for name in names[1:]:
        hasher.update(b"\xff")
        hasher.update(name.encode("utf8"))
    digest = hasher.hexdigest()[:_hash_length]
    per_name = (max_length - (_hash_length + 1)) // len(names)
    name_max_length = per_name - 2
    if name_max_length < 2:
        raise ValueError(f"Not enough characters for {len(names)} names: {max_length}")
    return "--".join(_extract_safe_name(n, name_max_length) for n in names) + f"---{digest}"


def user_server_slug(username: str, servername: str = "") -> str:
    """KubeSpawner 7's ``{user_server}`` in the ``safe`` scheme."""
    safe_username = safe_slug(username, max_length=_slug_max_length)
    safe_servername = safe_slug(servername, max_length=_slug_max_length) if servername else ""
    if len(safe_username) + len(safe_servername) + 2 > _slug_max_length:
        return multi_slug([username, servername], max_length=_slug_max_length)
    if servername:
        return f"{safe_username}--{safe_servername}"
    return safe_username


def pod_name_for(username: str, servername: str = "") -> str:
    """KubeSpawner's default pod name ``jupyter-{user_server}``."""
    return f"jupyter-{user_server_slug(username, servername)}"


def pod_labels(username: str, servername: str = "") -> dict[str, str]:
    """The labels KubeSpawner 7 puts on a user pod (with its default ``common_labels``)."""
    return {
        "hub.jupyter.org/username": safe_slug(username, is_valid=is_valid_label),
        "app.kubernetes.io/name": "jupyterhub",
        "app.kubernetes.io/managed-by": "kubespawner",
        "app": "jupyterhub",
        "heritage": "jupyterhub",
        "app.kubernetes.io/component": "singleuser-server",
        "component": "singleuser-server",
        "hub.jupyter.org/servername": safe_slug(servername, is_valid=is_valid_label),
    }


def pod_annotations(
    username: str, servername: str = "", jupyterhub_version: str = ""
) -> dict[str, str]:
    """The annotations KubeSpawner 7 puts on a user pod (raw names)."""
    ann = {"hub.jupyter.org/username": username}
    if servername:
        ann["hub.jupyter.org/servername"] = servername
    ann["hub.jupyter.org/kubespawner-version"] = KUBESPAWNER_VERSION
    if jupyterhub_version:
        ann["hub.jupyter.org/jupyterhub-version"] = jupyterhub_version
    return ann


def server_key(username: str, servername: str = "") -> str:
    """File name stem for a server's freeze flag and record: ``<user>:<server>``."""
    return f"{username}:{servername}"


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_state(pid: int) -> str | None:
    """Process state letter from /proc (``Z`` for a zombie), None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the state follows the last ')'
    return stat.rsplit(")", 1)[1].split()[0]


class KubeError(RuntimeError):
    """A Kubernetes API call failed (network error or an unexpected status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        """Keep the HTTP status (None for a network error)."""
        super().__init__(message)
        self.status = status


def kube_request(
    base_url: str,
    token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    content_type: str = "application/json",
    timeout: float = 10.0,
) -> tuple[int, dict[str, Any]]:
    """One blocking call to the Kubernetes API; returns (status, JSON body or {})."""
    if not base_url.startswith(("http://", "https://")):
        raise KubeError(f"kube_url must be http(s), not {base_url!r}")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        base_url.rstrip("/") + path, data=data, method=method
    )
    req.add_header("Accept", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    except (OSError, ValueError) as exc:
        raise KubeError(f"{method} {path}: {exc}") from exc
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw.decode(errors="replace")}
    return status, parsed if isinstance(parsed, dict) else {"items": parsed}


# --------------------------------------------------------------------------------------
# the spawner
# --------------------------------------------------------------------------------------


class SimSpawner(SimpleLocalProcessSpawner):  # type: ignore[misc]
    """Local ``http.server`` process + a KubeSpawner-shaped pod in a Kubernetes API."""

    kube_url = Unicode(config=True, help="Base URL of the Kubernetes API (simulator).")
    kube_token = Unicode(config=True, help="Bearer token for the Kubernetes API.")
    namespace = Unicode(config=True, help="Namespace of the user pods.")
    freeze_dir = Unicode(config=True, help="Directory of freeze flags for poll().")
    peer_dir = Unicode(config=True, help="Directory for server records (servers/*.json).")
    poll_pod = Bool(True, config=True, help="Let poll() read the pod (like KubeSpawner).")
    kube_timeout = Float(10.0, config=True, help="Timeout of one Kubernetes API call.")
    extra_pod_labels = Dict(config=True, help="Extra labels for the pod (e.g. release).")
    node_name = Unicode("", config=True, help="spec.nodeName of the pod, if any.")

    @default("kube_url")
    def _default_kube_url(self) -> str:
        return os.environ.get("WATCHDOGD_TEST_KUBE_URL", "")

    @default("kube_token")
    def _default_kube_token(self) -> str:
        return os.environ.get("WATCHDOGD_TEST_KUBE_TOKEN", "")

    @default("namespace")
    def _default_namespace(self) -> str:
        return os.environ.get("WATCHDOGD_TEST_NAMESPACE", "jhub")

    @default("freeze_dir")
    def _default_freeze_dir(self) -> str:
        return os.environ.get("WATCHDOGD_TEST_FREEZE_DIR", "")

    @default("peer_dir")
    def _default_peer_dir(self) -> str:
        return os.environ.get("WATCHDOGD_TEST_PEER_DIR", "")

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return [sys.executable, "-m", "http.server"]

    def __init__(self, **kwargs: Any) -> None:
        """Set up KubeSpawner-like names; state may override them in load_state."""
        super().__init__(**kwargs)
        self._bypass_freeze = False
        self._pod_name: str | None = None
        self._dns_name: str | None = None
        self._state_namespace: str | None = None
        self._state_kubespawner_version: str | None = None

    # -- names -----------------------------------------------------------------------

    @property
    def servername(self) -> str:
        """This spawner's server name ('' for the default server)."""
        return str(self.name or "")

    @property
    def pod_namespace(self) -> str:
        """Namespace of the pod (from state once a server has started)."""
        return self._state_namespace or str(self.namespace)

    @property
    def pod_name(self) -> str:
        """``jupyter-{user_server}`` (from state once a server has started)."""
        return self._pod_name or pod_name_for(self.user.name, self.servername)

    @property
    def dns_name(self) -> str:
        """``{pod}.{namespace}.svc.cluster.local`` like KubeSpawner."""
        return self._dns_name or f"{self.pod_name}.{self.pod_namespace}.svc.cluster.local"

    def get_args(self) -> list[str]:
        """http.server's arguments instead of jupyterhub-singleuser's."""
        return [str(self.port), "--bind", self.ip or "127.0.0.1"]

    # -- state -------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """LocalProcessSpawner's pid plus KubeSpawner's keys (kept even after a stop)."""
        state: dict[str, Any] = super().get_state()
        state["kubespawner_version"] = KUBESPAWNER_VERSION
        state["pod_name"] = self.pod_name
        state["namespace"] = self.pod_namespace
        state["dns_name"] = self.dns_name
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore pid and the pod's name, namespace and DNS name."""
        super().load_state(state)
        if "pod_name" in state:
            self._pod_name = state["pod_name"]
        if "namespace" in state:
            self._state_namespace = state["namespace"]
        if "dns_name" in state:
            self._dns_name = state["dns_name"]
        self._state_kubespawner_version = state.get("kubespawner_version")

    def clear_state(self) -> None:
        """Like KubeSpawner: pod and DNS name are recomputed; the namespace is kept."""
        super().clear_state()
        self._pod_name = None
        self._dns_name = None

    # -- files shared with the test harness --------------------------------------------

    def _freeze_flags(self) -> list[Path]:
        if not self.freeze_dir:
            return []
        d = Path(self.freeze_dir)
        return [d / self.user.name, d / server_key(self.user.name, self.servername)]

    def is_frozen(self) -> bool:
        """Whether a freeze flag for this server (or all of the user's servers) exists."""
        return any(p.exists() for p in self._freeze_flags())

    def _record_path(self) -> Path | None:
        if not self.peer_dir:
            return None
        key = server_key(self.user.name, self.servername)
        return Path(self.peer_dir) / "servers" / f"{key}.json"

    def _write_record(self) -> None:
        path = self._record_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "user": self.user.name,
            "server_name": self.servername,
            "pid": self.pid,
            "port": self.port,
            "pod_name": self.pod_name,
            "namespace": self.pod_namespace,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    def _remove_record(self) -> None:
        path = self._record_path()
        if path is not None:
            path.unlink(missing_ok=True)

    # -- Kubernetes ----------------------------------------------------------------------

    async def _kube(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        if not self.kube_url:
            raise KubeError("SimSpawner.kube_url (WATCHDOGD_TEST_KUBE_URL) is not set")
        return await asyncio.to_thread(
            kube_request,
            self.kube_url,
            self.kube_token,
            method,
            path,
            body,
            content_type=content_type,
            timeout=self.kube_timeout,
        )

    def _pod_path(self, name: str | None = None) -> str:
        ns = urllib.parse.quote(self.pod_namespace, safe="")
        base = f"/api/v1/namespaces/{ns}/pods"
        return base if name is None else f"{base}/{urllib.parse.quote(name, safe='')}"

    def pod_manifest(self) -> dict[str, Any]:
        """The pod KubeSpawner would create (trimmed), already Running on 127.0.0.1."""
        import jupyterhub

        now = _now_iso()
        labels = pod_labels(self.user.name, self.servername)
        labels.update(self.extra_pod_labels)
        spec: dict[str, Any] = {
            "containers": [
                {
                    "name": "notebook",
                    "image": SINGLEUSER_IMAGE,
                    "ports": [{"containerPort": 8888, "name": "notebook-port", "protocol": "TCP"}],
                }
            ],
            "restartPolicy": "OnFailure",
        }
        if self.node_name:
            spec["nodeName"] = self.node_name
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name,
                "namespace": self.pod_namespace,
                "labels": labels,
                "annotations": pod_annotations(
                    self.user.name, self.servername, jupyterhub.__version__
                ),
            },
            "spec": spec,
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "hostIP": "127.0.0.1",
                "startTime": now,
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": "notebook",
                        "ready": True,
                        "restartCount": 0,
                        "image": SINGLEUSER_IMAGE,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            },
        }

    async def create_pod(self) -> dict[str, Any]:
        """POST the pod (replacing a leftover of the same name) and make it Running."""
        manifest = self.pod_manifest()
        status, body = await self._kube("POST", self._pod_path(), manifest)
        if status == 409:
            self.log.warning("Pod %s already exists; replacing it", self.pod_name)
            await self.delete_pod()
            status, body = await self._kube("POST", self._pod_path(), manifest)
        if status not in (200, 201, 202):
            raise KubeError(f"creating pod {self.pod_name}: HTTP {status} {body}", status)
        if (body.get("status") or {}).get("phase") != "Running":
            # a faithful API server ignores status on create: set it through the subresource
            obj = dict(body or manifest)
            obj["status"] = manifest["status"]
            s2, b2 = await self._kube("PUT", self._pod_path(self.pod_name) + "/status", obj)
            if s2 >= 300:
                s2, b2 = await self._kube(
                    "PATCH",
                    self._pod_path(self.pod_name) + "/status",
                    {"status": manifest["status"]},
                    content_type="application/merge-patch+json",
                )
            if s2 >= 300:
                self.log.warning("Could not set pod %s Running: HTTP %s %s", self.pod_name, s2, b2)
            else:
                body = b2
        return body

    async def delete_pod(self) -> int:
        """DELETE the pod; returns the HTTP status (404 is fine)."""
        status, body = await self._kube(
            "DELETE", self._pod_path(self.pod_name), {"gracePeriodSeconds": 0}
        )
        if status not in (200, 202, 404):
            raise KubeError(f"deleting pod {self.pod_name}: HTTP {status} {body}", status)
        return status

    async def read_pod(self) -> dict[str, Any] | None:
        """GET the pod; None when it does not exist."""
        status, body = await self._kube("GET", self._pod_path(self.pod_name))
        if status == 404:
            return None
        if status != 200:
            raise KubeError(f"reading pod {self.pod_name}: HTTP {status} {body}", status)
        return body

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Create the pod, then start http.server; returns (ip, port)."""
        # a fresh start computes names from config again, like KubeSpawner
        self._state_namespace = None
        await self.create_pod()
        try:
            ip, port = await super().start()
        except BaseException:
            try:
                await self.delete_pod()
            except Exception:
                self.log.exception("Could not delete pod %s after a failed start", self.pod_name)
            raise
        self._write_record()
        self.log.info(
            "SimSpawner started %s: pid %s port %s pod %s/%s",
            self._log_name,
            self.pid,
            port,
            self.pod_namespace,
            self.pod_name,
        )
        return ip, port

    async def _process_status(self) -> int | None:
        """LocalProcessSpawner.poll, but a zombie or vanished pid counts as ended."""
        if self.proc is None and self.pid:
            state = _pid_state(self.pid)
            if state is None or state == "Z":
                self.clear_state()
                return 0
            return None
        status: int | None = await LocalProcessSpawner.poll(self)
        return status

    async def _end_process(self, now: bool = False) -> None:
        """Run LocalProcessSpawner.stop with the freeze bypassed."""
        self._bypass_freeze = True
        try:
            await LocalProcessSpawner.stop(self, now=now)
        finally:
            self._bypass_freeze = False

    async def poll(self) -> int | None:
        """None while running (or frozen); an exit status once the server is gone."""
        if self._bypass_freeze:
            return await self._process_status()
        if self.is_frozen():
            return None
        if self.poll_pod and self.kube_url:
            try:
                pod = await self.read_pod()
            except KubeError as exc:
                # an unreachable API server: KubeSpawner's cache would keep its last view
                self.log.warning("poll of pod %s failed: %s", self.pod_name, exc)
                pod = {"status": {"phase": "Running"}}
            if pod is None:
                self.log.info("Pod %s is gone", self.pod_name)
                await self._end_process(now=True)
                return 1
            pod_status = pod.get("status") or {}
            if pod_status.get("phase") == "Pending":
                return None
            ctr_stat = pod_status.get("containerStatuses")
            if ctr_stat is None:
                await self._end_process(now=True)
                return 1
            for c in ctr_stat:
                if c.get("name") == "notebook" and "terminated" in (c.get("state") or {}):
                    await self.stop(now=True)
                    return int(c["state"]["terminated"].get("exitCode", 1))
        return await self._process_status()

    async def stop(self, now: bool = False) -> None:
        """Delete the pod (404 is fine), end the process, forget the server's freeze flag."""
        try:
            await self.delete_pod()
        except KubeError:
            # a stop clears the hub DB even when the pod delete fails (orphan-pod)
            self.log.exception("Could not delete pod %s", self.pod_name)
        await self._end_process(now=now)
        self._remove_record()
        hang = self._hang_flag()
        if hang is not None and hang.exists():
            # KubeSpawner waiting for its frozen watch to see the pod go: the stop never
            # returns, and the hub shows "pending": "stop" for as long as the flag exists.
            self.log.warning("SimSpawner stop of %s hangs (%s)", self._log_name, hang)
            while hang.exists():
                await asyncio.sleep(0.2)
        if self.freeze_dir:
            Path(self.freeze_dir, server_key(self.user.name, self.servername)).unlink(
                missing_ok=True
            )

    def _hang_flag(self) -> Path | None:
        if not self.freeze_dir:
            return None
        return Path(self.freeze_dir) / f"hang-stop:{server_key(self.user.name, self.servername)}"

