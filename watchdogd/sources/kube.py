"""The Kubernetes API, read as raw JSON, paginated, with server-side selectors.

The official client is used for configuration, authentication and URL
building, but lists bypass its model deserialization (``_preload_content=False``
and ``json.loads``): for 5,000 pods that is 0.3 s instead of 5.7 s. Every list
is paginated with ``limit``/``continue``; a continue token that expires half way
(410) makes the whole list fail, because half a pod list must never look like a
cluster with fewer pods.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import urllib3
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from watchdogd.config import ClusterConfig, file_problem
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.ports import LIST_FIELDS, FieldTree
from watchdogd.sources.base import (
    count_request,
    describe_status,
    note_server_date,
    scrub,
    secret_values,
)
from watchdogd.sources.bounded import bound_pools, limits

__all__ = ["KIND_LISTS", "KubeSource", "api_client"]

# kind -> (all-namespaces path, namespaced path); adding a kind is one line. Lists
# go by path through ApiClient: the generated CoreV1Api costs over a second to
# import, which every one-shot `watchdogd check` (a CronJob) would pay.
KIND_LISTS: dict[str, tuple[str, str | None]] = {
    "Pod": ("/api/v1/pods", "/api/v1/namespaces/{namespace}/pods"),
    "Namespace": ("/api/v1/namespaces", None),
    "Node": ("/api/v1/nodes", None),
    "PersistentVolume": ("/api/v1/persistentvolumes", None),
    "PersistentVolumeClaim": ("/api/v1/persistentvolumeclaims",
                              "/api/v1/namespaces/{namespace}/persistentvolumeclaims"),
    "Event": ("/api/v1/events", "/api/v1/namespaces/{namespace}/events"),
    "Secret": ("/api/v1/secrets", "/api/v1/namespaces/{namespace}/secrets"),
}

# Fields nobody here reads and that dominate the size of real objects.
_DROP_METADATA = ("managedFields",)

# kubernetes' kubeconfig loader writes inline certificate data (certificate-authority-data,
# client keys) to temporary files it caches by content, and caches the path *before* writing
# the file: a second source loading the same kubeconfig in another collect thread could get
# the still-empty file, and its TLS handshake failed (NO_CERTIFICATE_OR_CRL_FOUND).
_LOAD_LOCK = threading.Lock()


def api_client(name: str, config: ClusterConfig) -> client.ApiClient:
    """An ApiClient for one configured cluster, never touching the global config."""
    configuration = client.Configuration()
    if not config.in_cluster and config.kubeconfig:
        # The client says "Invalid kube-config file. No configuration found." for a
        # missing file, naming neither the setting nor the path.
        from pathlib import Path  # noqa: PLC0415

        problem = file_problem(f"clusters.{name}.kubeconfig",
                               Path(_expand(config.kubeconfig)))
        if problem is not None:
            raise SourceError("kube", name, f"cannot load the cluster credentials: {problem}")
    try:
        if config.in_cluster:
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
        else:
            path = config.kubeconfig
            with _LOAD_LOCK:
                kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(_expand(path)) if path else None,
                    context=config.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
    except (kube_config.ConfigException, OSError, ValueError, TypeError, KeyError,
            yaml.YAMLError) as exc:
        # The first line only: YAML errors quote the file, which may hold a token.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, yaml.YAMLError):
            first = "the kubeconfig is not valid YAML"
        raise SourceError("kube", name,
                          f"cannot load the cluster credentials: {first[:200]}") from None
    # One retry is enough to ride over a dropped keep-alive connection; more
    # would multiply the timeout an operator configured.
    configuration.retries = 1
    return client.ApiClient(configuration)


def _expand(path: str) -> str:
    from pathlib import Path  # noqa: PLC0415

    return str(Path(path).expanduser())


class KubeSource:
    """One cluster's API."""

    def __init__(self, target: str, config: ClusterConfig,
                 *, factory: Callable[[str, ClusterConfig], client.ApiClient] = api_client) -> None:
        self.target = target
        self.timeout = config.timeout.total_seconds()
        self.page_size = config.page_size
        self.max_bytes = int(config.max_response_bytes)
        self._config = config
        self._factory = factory
        self._client: client.ApiClient | None = None

    @property
    def client(self) -> client.ApiClient:
        """The ApiClient, built on first use so that a bad kubeconfig is a SourceError."""
        if self._client is None:
            self._client = self._factory(self.target, self._config)
            rest = getattr(self._client, "rest_client", None)
            if isinstance(getattr(rest, "pool_manager", None), urllib3.PoolManager):
                # Every connection checks the call's total deadline and byte budget.
                bound_pools(rest.pool_manager)  # type: ignore[union-attr]
        return self._client

    def error(self, cause: str) -> SourceError:
        """A SourceError naming this cluster (its credentials masked, should a peer echo
        them back in an error body)."""
        secrets: list[str] = []
        if self._client is not None:
            configuration = self._client.configuration
            secrets = secret_values([*(configuration.api_key or {}).values(),
                                     configuration.password])
        return SourceError("kube", self.target, scrub(cause, secrets))

    def list_objects(self, kind: str, namespace: str | None = None,
                     label_selector: str | None = None,
                     field_selector: str | None = None) -> list[dict[str, Any]]:
        """Every object of ``kind`` matching the selectors, all pages, as plain dicts."""
        all_path, namespaced_path = KIND_LISTS[kind]
        if namespace is not None:
            if namespaced_path is None:
                raise ValueError(f"{kind} is not namespaced")
            path, path_params = namespaced_path, {"namespace": namespace}
        else:
            path, path_params = all_path, {}
        what = f"list {kind.lower()}s" + (f" in namespace {namespace}" if namespace else "")
        keep = LIST_FIELDS.get(kind)
        items: list[dict[str, Any]] = []
        token: str | None = None
        tokens: set[str] = set()
        while True:
            query: list[tuple[str, Any]] = [("limit", self.page_size)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            data = self._get(what, path, path_params, query)
            page_items = data.get("items")
            if not isinstance(page_items, list):
                raise self.error(f"{what}: answer has no items list")
            for item in page_items:
                metadata = item.get("metadata") if isinstance(item, dict) else None
                if not isinstance(metadata, dict):
                    raise self.error(f"{what}: an item has no metadata")
                for key in _DROP_METADATA:
                    metadata.pop(key, None)
            # A kind with a LIST_FIELDS entry keeps only those parts: the rest of each page
            # goes with the page, so tens of thousands of PVs cost what the checks read.
            items.extend(page_items if keep is None else
                         [_project(item, keep) for item in page_items])
            meta = data.get("metadata") or {}
            token = meta.get("continue") or None if isinstance(meta, dict) else None
            if not isinstance(meta, dict) or not isinstance(token, str | None):
                raise self.error(f"{what}: the list metadata is malformed")
            if not token:
                return items
            if token in tokens:  # a server that never gets to the end: no complete list
                raise self.error(f"{what}: the same continue token came back twice")
            tokens.add(token)

    def pods(self, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        """Pods matching the selectors (all namespaces when ``namespace`` is None)."""
        return self.list_objects("Pod", namespace, label_selector, field_selector)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pod read by name, whatever its labels; None when it does not exist.

        The targeted read behind every verdict of absence that the pod list alone
        cannot prove (another namespace, a selector that misses it) and behind the
        re-read right before an action.
        """
        data = self._get(f"read pod {namespace}/{name}",
                         "/api/v1/namespaces/{namespace}/pods/{name}",
                         {"namespace": namespace, "name": name}, [], missing_ok=True)
        if data is None:
            return None
        metadata = data.get("metadata")
        if not isinstance(metadata, dict) or data.get("kind", "Pod") != "Pod":
            raise self.error(f"read pod {namespace}/{name}: answer is not a pod")
        for key in _DROP_METADATA:
            metadata.pop(key, None)
        pod: dict[str, Any] = data
        return pod

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> str:
        """Delete one pod, only if it is still the pod that was observed (same uid)."""
        api = client.CoreV1Api(self.client)
        body = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid) if uid else None)
        try:
            count_request()
            with self._limited(f"delete pod {namespace}/{name}"):
                api.delete_namespaced_pod(name, namespace, body=body, _preload_content=False,
                                          _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                raise PreconditionFailed(f"pod {namespace}/{name} is already gone") from None
            if exc.status == 409:
                raise PreconditionFailed(
                    f"pod {namespace}/{name} was replaced since it was observed") from None
            raise self.error(f"delete pod {namespace}/{name}: " + describe_status(
                exc.status or 0, _body(exc), credential=self._credential(),
                need="delete on pods")) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.error(f"delete pod {namespace}/{name}: {_net(exc, self.timeout)}") from None
        return f"deleted pod {namespace}/{name}"

    def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One PersistentVolumeClaim read by name; None when it does not exist."""
        return self._object("PersistentVolumeClaim", f"read pvc {namespace}/{name}",
                            "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
                            {"namespace": namespace, "name": name})

    def volume(self, name: str) -> dict[str, Any] | None:
        """One PersistentVolume read by name; None when it does not exist."""
        return self._object("PersistentVolume", f"read pv {name}",
                            "/api/v1/persistentvolumes/{name}", {"name": name})

    def mark_claim(self, namespace: str, name: str, uid: str, key: str, value: str) -> str:
        """Annotate a claim ``key: value`` (the quarantine mark), only the claim of ``uid``."""
        claim = self.claim(namespace, name)
        if claim is None or claim["metadata"].get("uid") != uid:
            raise PreconditionFailed(f"claim {namespace}/{name} is gone or was replaced")
        current = (claim["metadata"].get("annotations") or {}).get(key)
        if current:
            return f"claim {namespace}/{name} was already marked ({key}={current})"
        patch = [{"op": "test", "path": "/metadata/uid", "value": uid},
                 {"op": "add", "path": "/metadata/annotations",
                  "value": {**(claim["metadata"].get("annotations") or {}), key: value}}]
        self._write("PATCH", f"mark pvc {namespace}/{name}",
                    "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
                    {"namespace": namespace, "name": name}, patch,
                    "application/json-patch+json", "patch on persistentvolumeclaims")
        return f"claim {namespace}/{name} marked {key}={value}"

    def unmark_claim(self, namespace: str, name: str, uid: str, key: str, value: str) -> str:
        """Remove the quarantine mark ``key: value`` from the claim of ``uid`` (an undo).

        Only the mark watchdogd wrote: a claim replaced since, or whose annotation now holds
        another value, is left alone. The JSON patch tests both on the server's side too.
        """
        where = f"claim {namespace}/{name}"
        claim = self.claim(namespace, name)
        if claim is None or claim["metadata"].get("uid") != uid:
            raise PreconditionFailed(f"{where} is gone or was replaced")
        current = (claim["metadata"].get("annotations") or {}).get(key)
        if current is None:
            return f"{where} has no mark {key} any more"
        if current != value:
            raise PreconditionFailed(f"{where} is marked {key}={current}, not {value}")
        pointer = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        patch = [{"op": "test", "path": "/metadata/uid", "value": uid},
                 {"op": "test", "path": pointer, "value": value},
                 {"op": "remove", "path": pointer}]
        self._write("PATCH", f"unmark pvc {namespace}/{name}",
                    "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
                    {"namespace": namespace, "name": name}, patch,
                    "application/json-patch+json", "patch on persistentvolumeclaims")
        return f"{where}: mark {key} removed"

    def delete_extra_claim(self, namespace: str, name: str, uid: str, volume_name: str,
                           key: str, value: str) -> str:
        """Delete a quarantined claim, its PV switched to ``Retain`` first.

        Verified right before, by name: the claim (same uid, still marked ``key: value``,
        not being deleted), every pod of its namespace (none may mount it) and the PV
        (bound to this claim's uid). The disk survives as the PV and its volume.
        """
        where = f"claim {namespace}/{name}"
        claim = self.claim(namespace, name)
        if claim is None or claim["metadata"].get("uid") != uid:
            raise PreconditionFailed(f"{where} is gone or was replaced")
        meta = claim["metadata"]
        if (meta.get("annotations") or {}).get(key) != value:
            raise PreconditionFailed(f"{where} is no longer marked {key}={value}")
        if meta.get("deletionTimestamp"):
            raise PreconditionFailed(f"{where} is already being deleted")
        if (claim.get("spec") or {}).get("volumeName") != volume_name:
            raise PreconditionFailed(f"{where} is not bound to PV {volume_name} any more")
        holders = [str(p["metadata"].get("name")) for p in self.pods(namespace)
                   if _mounts(p, name)]
        if holders:
            raise PreconditionFailed(f"{where} is mounted by pod(s) {', '.join(holders)}")
        pv = self.volume(volume_name)
        claim_ref = ((pv or {}).get("spec") or {}).get("claimRef") or {}
        if pv is None or claim_ref.get("uid") != uid:
            raise PreconditionFailed(f"PV {volume_name} is gone or bound to another claim")
        if (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Retain":
            self._write("PATCH", f"retain pv {volume_name}", "/api/v1/persistentvolumes/{name}",
                        {"name": volume_name},
                        [{"op": "test", "path": "/spec/claimRef/uid", "value": uid},
                         {"op": "replace", "path": "/spec/persistentVolumeReclaimPolicy",
                          "value": "Retain"}],
                        "application/json-patch+json", "patch on persistentvolumes")
        self._write("DELETE", f"delete {where}",
                    "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
                    {"namespace": namespace, "name": name},
                    {"kind": "DeleteOptions", "apiVersion": "v1",
                     "preconditions": {"uid": uid}}, "application/json",
                    "delete on persistentvolumeclaims")
        return f"deleted {where}; PV {volume_name} kept (reclaim policy Retain)"

    def restore_claim(self, manifest: dict[str, Any], volume_name: str) -> str:
        """Recreate a claim from its archived manifest, bound by name to ``volume_name``,
        and free the retained PV's ``claimRef`` (uid, resourceVersion) so it can bind again.

        The undo of :meth:`delete_extra_claim`. Idempotent: a claim of that name already
        bound to the PV is success.
        """
        meta = manifest.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        where = f"claim {namespace}/{name}"
        pv = self.volume(volume_name)
        if pv is None:
            raise PreconditionFailed(f"PV {volume_name} no longer exists: nothing to bind to")
        claim_ref = (pv.get("spec") or {}).get("claimRef") or {}
        if claim_ref and (claim_ref.get("namespace"), claim_ref.get("name")) != (namespace, name):
            raise PreconditionFailed(f"PV {volume_name} is claimed by "
                                     f"{claim_ref.get('namespace')}/{claim_ref.get('name')} now")
        existing = self.claim(namespace, name)
        if existing is not None and (existing.get("spec") or {}).get("volumeName") != volume_name:
            raise PreconditionFailed(f"{where} exists again, for another volume")
        if existing is None:
            body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {k: meta[k] for k in ("name", "namespace", "labels",
                                                      "annotations") if meta.get(k)},
                    "spec": {**(manifest.get("spec") or {}), "volumeName": volume_name}}
            self._write("POST", f"create {where}",
                        "/api/v1/namespaces/{namespace}/persistentvolumeclaims",
                        {"namespace": namespace}, body, "application/json",
                        "create on persistentvolumeclaims")
        if claim_ref.get("uid") or claim_ref.get("resourceVersion"):
            self._write("PATCH", f"free pv {volume_name}", "/api/v1/persistentvolumes/{name}",
                        {"name": volume_name},
                        {"spec": {"claimRef": {"uid": None, "resourceVersion": None}}},
                        "application/merge-patch+json", "patch on persistentvolumes")
        return f"recreated {where} on PV {volume_name} (the PV stays Retain)"

    def _object(self, kind: str, what: str, path: str,
                params: dict[str, str]) -> dict[str, Any] | None:
        data = self._send("GET", what, path, params, [], missing_ok=True,
                          need=f"get on {what.split()[1]}s")
        if data is None:
            return None
        metadata = data.get("metadata")
        if not isinstance(metadata, dict) or data.get("kind", kind) != kind:
            raise self.error(f"{what}: answer is not a {kind}")
        for key in _DROP_METADATA:
            metadata.pop(key, None)
        result: dict[str, Any] = data
        return result

    def _write(self, method: str, what: str, path: str, params: dict[str, str], body: Any,
               content_type: str, need: str) -> Any:
        """A write; 404, 409 and 422 (gone, replaced, a failed ``test`` op) are
        PreconditionFailed: the object is not the one that was verified."""
        return self._send(method, what, path, params, [], body=body,
                          content_type=content_type, need=need,
                          precondition=(404, 409, 422))

    def deployment_replicas(self, namespace: str, name: str) -> int:
        """A Deployment's desired replicas, read through its ``scale`` subresource.

        Used by ``watchdogd repair-session --stop-hub`` only (an operator command: the
        daemon never scales anything).
        """
        data = self._get(f"read deployments/scale {namespace}/{name}",
                         "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
                         {"namespace": namespace, "name": name}, [])
        return _replicas(self, data, f"deployments/scale {namespace}/{name}")

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> int:
        """Set a Deployment's replicas (merge patch of its ``scale``); the new value."""
        data = self._send("PATCH", f"patch deployments/scale {namespace}/{name}",
                          "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
                          {"namespace": namespace, "name": name}, [],
                          body={"spec": {"replicas": replicas}},
                          content_type="application/merge-patch+json",
                          need="patch on deployments/scale")
        return _replicas(self, data, f"deployments/scale {namespace}/{name}")

    def _get(self, what: str, path: str, path_params: dict[str, str],
             query: list[tuple[str, Any]], *, missing_ok: bool = False) -> Any:
        return self._send("GET", what, path, path_params, query, missing_ok=missing_ok,
                          need=f"list on {what.split()[1]}")

    def _send(self, method: str, what: str, path: str, path_params: dict[str, str],
              query: list[tuple[str, Any]], *, body: Any = None, content_type: str | None = None,
              missing_ok: bool = False, need: str = "",
              precondition: tuple[int, ...] = ()) -> Any:
        """One request by path, its answer parsed as a JSON object (None: a NotFound with
        ``missing_ok``; PreconditionFailed for a status in ``precondition``)."""
        count_request()
        api = self.client
        headers_in = {"Accept": "application/json"}
        if content_type:
            headers_in["Content-Type"] = content_type
        try:
            method, url, headers, payload, _post = api.param_serialize(
                method, path, path_params=path_params, query_params=query, body=body,
                header_params=headers_in, auth_settings=["BearerToken"])
            with self._limited(what):
                response = api.call_api(method, url, header_params=headers, body=payload,
                                        _request_timeout=self.timeout)
                raw = response.read()  # type: ignore[no-untyped-call]
            # The API server's clock, for ages judged on it (Snapshot.server_now).
            note_server_date(response.getheader("Date"))  # type: ignore[no-untyped-call]
            if not 200 <= response.status < 300:
                raise ApiException.from_response(
                    http_resp=response, body=raw.decode("utf-8", "replace"), data=None)
        except ApiException as exc:
            if exc.status == 404 and missing_ok and _is_not_found(exc):
                return None
            if exc.status in precondition:
                raise PreconditionFailed(f"{what}: " + describe_status(
                    exc.status or 0, _body(exc), credential=self._credential())) from None
            if exc.status == 410:
                raise self.error(f"{what}: the list expired while paging (410 Gone); "
                                 "it is read again next pass") from None
            raise self.error(f"{what}: " + describe_status(
                exc.status or 0, _body(exc), credential=self._credential(),
                need=need)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.error(f"{what}: {_net(exc, self.timeout)}") from None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise self.error(f"{what}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise self.error(f"{what}: answer is not an object")
        return data

    @contextmanager
    def _limited(self, what: str) -> Iterator[None]:
        """One call within the cluster's timeout and answer size (bounded.py); past
        either, a SourceError that says which."""
        with limits(self.timeout, self.max_bytes) as bound:
            try:
                yield
            except (urllib3.exceptions.HTTPError, OSError):
                if bound.exceeded:
                    raise self.error(f"{what}: {bound.describe()}") from None
                raise

    def _credential(self) -> str:
        if self._config.in_cluster:
            return "the service account"
        return f"the credentials of cluster {self.target} (clusters.{self.target})"

    def close(self) -> None:
        """Close the client's connection pool."""
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]


def _mounts(pod: dict[str, Any], claim: str) -> bool:
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        source = volume.get("persistentVolumeClaim") if isinstance(volume, dict) else None
        if isinstance(source, dict) and source.get("claimName") == claim:
            return True
    return False


def _replicas(source: KubeSource, data: dict[str, Any], what: str) -> int:
    replicas = (data.get("spec") or {}).get("replicas", 0)
    if data.get("kind") != "Scale" or not isinstance(replicas, int) or isinstance(replicas, bool):
        raise source.error(f"{what}: answer is not a Scale")
    return replicas


def _project(obj: dict[str, Any], keep: FieldTree) -> dict[str, Any]:
    """The parts of ``obj`` that ``keep`` names (a value that is not an object where the tree
    goes deeper is kept as it is: judging malformed objects is the checks' job)."""
    result: dict[str, Any] = {}
    for key, inner in keep.items():
        if key in obj:
            value = obj[key]
            # dict, not the Mapping ABC: this runs for every kept field of every PV
            result[key] = (_project(value, inner)
                           if isinstance(inner, dict) and type(value) is dict else value)
    return result


def _is_not_found(exc: ApiException) -> bool:
    """Whether a 404 is the API server's NotFound Status for the object.

    A 404 from something else (a proxy in front, a wrong URL prefix) is an error,
    never proof that a pod is gone.
    """
    try:
        status = json.loads(_body(exc))
    except (ValueError, RecursionError):
        return False
    return (isinstance(status, dict) and status.get("kind") == "Status"
            and status.get("reason") == "NotFound")


def _body(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return str(body or "")


def _net(exc: BaseException, timeout: float) -> str:
    text = str(exc)
    if "timed out" in text.lower() or isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"no answer within {timeout:g}s"
    if "refused" in text.lower():
        return "connection refused"
    return f"network error ({type(exc).__name__})"
