"""``watchdogd repair-session``: the runbook's last resort (SQL on the hub database), made safe.

When the Hub API cannot clear a session (a stop that never finishes, a spawner that always
claims to run), the runbook used to delete the user's row with ``psql``. This command
clears only the session instead: the ``servers`` row and the spawner's ``server_id``,
``started`` and running-process keys of ``state``, never a ``users`` row (which holds the
user's tokens, groups, roles and named servers). It is an operator command; the daemon
never runs it.

Order, each step refusing with its own exit code (:class:`Refused`):

1. the hub is down: its API does not answer and no hub pod is Pending or Running (or,
   with ``--stop-hub``, the hub Deployment is scaled to 0 here, and back afterwards
   whatever happens);
2. nothing of the session runs: the user's pod (or Nublado lab) is absent, or is deleted
   after a confirmation (audited as ``delete-pod``);
3. the SQL is shown (secret-looking values of ``state`` masked) and confirmed;
4. the rows it changes go to the audit log in full (``repair-session``), the hub is
   checked to be down once more, and the change is one transaction that first re-reads
   the rows and rolls back unless they are exactly what was shown.

``watchdogd undo ACTION_ID`` puts the rows back (:mod:`watchdogd.undo`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from watchdogd.checks.common import pod_before_image
from watchdogd.config import Config, HubConfig
from watchdogd.model import Action, Finding, PreconditionFailed, Severity, SourceError
from watchdogd.sources.hubapi import hub_api_answers
from watchdogd.sources.hubdb_repair import (
    SESSION_STATE_KEYS,
    HubDbWriter,
    Row,
    SessionRows,
    archive_row,
    schema_known,
)
from watchdogd.sources.kube import KubeSource
from watchdogd.store import Store
from watchdogd.text import MASK, names_a_secret, safe_text

__all__ = ["EXIT_CANNOT", "EXIT_HUB_RUNNING", "EXIT_REFUSED", "EXIT_UNAVAILABLE", "Console",
           "Refused", "RepairOptions", "hub_is_down", "repair_session", "sql_text"]

#: the operator answered no
EXIT_REFUSED = 1
#: the data is not what the command can change (no such user, an unknown schema, rows
#: that changed since they were shown, an action that cannot be undone)
EXIT_CANNOT = 65
#: a peer that decides whether it is safe did not answer clearly (EX_UNAVAILABLE)
EXIT_UNAVAILABLE = 69
#: the hub is running: try again once it is down (EX_TEMPFAIL)
EXIT_HUB_RUNNING = 75
EXIT_CONFIG = 78

#: hub pod phases that mean a hub process runs or is about to
_LIVE_PHASES = ("Pending", "Running", "Unknown")


class Refused(Exception):
    """The command stops here: a one-line reason and its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Console:
    """How the command talks to the operator (the CLI passes click's; tests their own)."""

    echo: Callable[[str], None]
    ask: Callable[[str], bool]
    #: ``--yes``: every question is answered yes
    yes: bool = False

    def confirm(self, question: str) -> None:
        """Ask; Refused (exit 1) on no."""
        if self.yes:
            self.echo(f"{question} yes (--yes)")
            return
        if not self.ask(question):
            raise Refused("refused by the operator; nothing was changed", EXIT_REFUSED)


@dataclass
class RepairOptions:
    """What the operator asked for."""

    hub: str
    user: str
    server_name: str = ""
    stop_hub: bool = False
    deployment: str = "hub"
    #: how long to wait for the hub to go down and for a deleted pod to vanish
    wait: float = 120.0
    poll: float = 1.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)


def hub_config(config: Config, hub: str) -> HubConfig:
    """The ``[hubs.NAME]`` section, with a database URL; Refused 78 otherwise."""
    if hub not in config.hubs:
        known = ", ".join(sorted(config.hubs)) or "none configured"
        raise Refused(f"--hub: no [hubs.{hub}] in the configuration ({known})", EXIT_CONFIG)
    section = config.hubs[hub]
    if section.db_url is None:
        raise Refused(f"hubs.{hub}.db_url_file: not set; repair-session changes the hub "
                      "database and needs its URL (a hub configured API-only has none)",
                      EXIT_CONFIG)
    return section


def writer_for(config: Config, hub: str) -> HubDbWriter:
    """The read-write database path of ``hub``; Refused 78 when it cannot be built."""
    section = hub_config(config, hub)
    try:
        return HubDbWriter(hub, section)
    except ValueError as exc:
        raise Refused(f"hubs.{hub}.db_url_file: {exc}", EXIT_CONFIG) from None


def kube_for(config: Config, hub: str) -> KubeSource:
    """The hub's cluster."""
    section = config.hubs[hub]
    if section.cluster not in config.clusters:
        raise Refused(f"hubs.{hub}.cluster: no [clusters.{section.cluster}]", EXIT_CONFIG)
    return KubeSource(section.cluster, config.clusters[section.cluster])


def hub_is_down(config: Config, hub: str, kube: KubeSource) -> str | None:
    """None when the hub is down; else why it is not (or cannot be shown to be).

    Down means both: nothing answers at the Hub API's URL (any HTTP answer, even a 401 or
    a 503, is a running hub), and no pod matching ``hub_pod_selector`` in the hub's
    namespace is Pending, Running or Unknown. A peer that does not answer clearly
    raises Refused (exit 69): absence is never assumed.
    """
    section = config.hubs[hub]
    try:
        status = hub_api_answers(hub, section)
    except SourceError as exc:
        raise Refused(f"{exc}", EXIT_UNAVAILABLE) from None
    if status is not None:
        return f"the hub API answers (HTTP {status}) at {safe_text(section.api_url)}"
    try:
        pods = kube.pods(section.namespace, section.hub_pod_selector)
    except SourceError as exc:
        raise Refused(f"cannot list the hub pods: {exc}", EXIT_UNAVAILABLE) from None
    live = [p for p in pods if (p.get("status") or {}).get("phase", "Unknown") in _LIVE_PHASES]
    if live:
        pod = live[0]
        name = f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"
        phase = (pod.get("status") or {}).get("phase", "Unknown")
        return (f"hub pod {safe_text(name)} is {phase} (selector "
                f"{safe_text(section.hub_pod_selector)})")
    return None


def require_hub_down(config: Config, hub: str, kube: KubeSource) -> None:
    """Refused (exit 75) unless :func:`hub_is_down`."""
    why = hub_is_down(config, hub, kube)
    if why is not None:
        raise Refused(f"refused: the hub is running: {why}. The hub keeps its database in "
                      "memory and would write the rows back: stop it first, or pass "
                      "--stop-hub", EXIT_HUB_RUNNING)


def repair_session(config: Config, store: Store, options: RepairOptions,
                   console: Console) -> int:
    """Clear one stuck session (see the module docstring). Returns 0, or raises Refused."""
    writer = writer_for(config, options.hub)
    kube = kube_for(config, options.hub)
    try:
        with _hub_stopped(config, options, kube, console):
            return _repair(config, store, options, console, writer, kube)
    finally:
        writer.close()
        kube.close()


@contextmanager
def _hub_stopped(config: Config, options: RepairOptions, kube: KubeSource,
                 console: Console) -> Iterator[None]:
    """With ``--stop-hub``: the hub Deployment at 0 replicas inside, its count restored after
    (also when the repair fails or is refused). Without: the hub must already be down."""
    if not options.stop_hub:
        require_hub_down(config, options.hub, kube)
        yield
        return
    namespace = config.hubs[options.hub].namespace
    where = f"deployment {safe_text(namespace)}/{safe_text(options.deployment)}"
    try:
        replicas = kube.deployment_replicas(namespace, options.deployment)
    except SourceError as exc:
        raise Refused(f"--stop-hub: {exc}", EXIT_UNAVAILABLE) from None
    if replicas:
        console.confirm(f"Scale {where} from {replicas} to 0 replicas (the hub stops), "
                        "and back afterwards?")
        try:
            kube.scale_deployment(namespace, options.deployment, 0)
        except SourceError as exc:
            raise Refused(f"--stop-hub: {exc}", EXIT_UNAVAILABLE) from None
        console.echo(f"scaled {where} to 0 replicas")
    try:
        _wait_hub_down(config, options, kube)
        yield
    finally:
        if replicas:
            _restore_replicas(kube, namespace, options, replicas, where, console)


def _restore_replicas(kube: KubeSource, namespace: str, options: RepairOptions, replicas: int,
                      where: str, console: Console) -> None:
    last: SourceError | None = None
    for _ in range(3):  # the hub must come back: a blip of the API server is retried
        try:
            kube.scale_deployment(namespace, options.deployment, replicas)
        except SourceError as exc:
            last = exc
            options.sleep(options.poll)
            continue
        console.echo(f"scaled {where} back to {replicas} replica(s)")
        return
    console.echo(f"ERROR: could not scale {where} back to {replicas}: {last}; run "
                 f"kubectl -n {namespace} scale deployment {options.deployment} "
                 f"--replicas={replicas}")
    raise Refused(f"the hub was left at 0 replicas: {last}", EXIT_UNAVAILABLE)


def _wait_hub_down(config: Config, options: RepairOptions, kube: KubeSource) -> None:
    deadline = time.monotonic() + options.wait
    while True:
        why = hub_is_down(config, options.hub, kube)
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise Refused(f"refused: the hub is still running after {options.wait:g}s: "
                          f"{why}", EXIT_HUB_RUNNING)
        options.sleep(options.poll)


def _repair(config: Config, store: Store, options: RepairOptions, console: Console,
            writer: HubDbWriter, kube: KubeSource) -> int:
    label = _label(options.user, options.server_name)
    try:
        rows = writer.read_session(options.user, options.server_name)
    except (SourceError, PreconditionFailed) as exc:
        raise Refused(f"hub database: {exc}", EXIT_CANNOT) from None
    if rows is None:
        raise Refused(f"hub {options.hub} has no server {label} (no such user or server)",
                      EXIT_CANNOT)
    if not schema_known(rows.schema):
        raise Refused(f"hub database schema {safe_text(str(rows.schema))} is not one "
                      "watchdogd has read (JupyterHub 5.x 4621fec11365, 6.x f460b0348206); "
                      "nothing was changed", EXIT_CANNOT)
    if rows.spawner.get("server_id") is None and rows.server is None:
        console.echo(f"nothing to repair: {label} has no session in the hub database")
        return 0
    _no_pods(config, store, options, console, kube, rows)
    state = _new_state(rows.spawner.get("state"))
    console.echo(sql_text(writer.backend, rows, state))
    console.confirm(f"Run this SQL on hub {options.hub}'s database?")
    finding = Finding("repair", options.hub, "repair-session", label, Severity.CRITICAL,
                      f"operator repair of {label}'s session in the hub database")
    action = Action("repair-session", "hubdb", options.hub, "clear_session",
                    params={"user": options.user, "server_name": options.server_name},
                    before=session_archive(rows, state))
    now = datetime.now(UTC)
    pass_id = f"operator-{uuid.uuid4().hex[:12]}"
    action_id = store.begin_action(pass_id, finding, action, now)
    try:
        # Re-checked right before the write: the hub could have been started meanwhile.
        require_hub_down(config, options.hub, kube)
        writer.clear_session(rows, state)
    except Refused as exc:
        store.finish_action(action_id, "skipped", str(exc), datetime.now(UTC))
        raise
    except PreconditionFailed as exc:
        store.finish_action(action_id, "skipped", str(exc), datetime.now(UTC))
        raise Refused(f"hub database: {exc}", EXIT_CANNOT) from None
    except SourceError as exc:
        store.finish_action(action_id, "failed", f"rolled back: {exc}", datetime.now(UTC))
        raise Refused(f"hub database: rolled back, nothing changed: {exc}",
                      EXIT_UNAVAILABLE) from None
    except BaseException:
        store.finish_action(action_id, "failed", "interrupted; the transaction rolled back",
                            datetime.now(UTC))
        raise
    detail = f"cleared {label}'s session (spawner {rows.spawner.get('id')}" + (
        f", server row {rows.server.get('id')})" if rows.server is not None else ")")
    store.finish_action(action_id, "done", detail, datetime.now(UTC))
    console.echo(f"done: {detail}; audit action {action_id} (undo: watchdogd undo {action_id})")
    return 0


def session_archive(rows: SessionRows, state: str | None) -> dict[str, Any]:
    """The audit log's before-image of a repair: every row it changes, in full."""
    after = rows.spawner.with_values({"server_id": None, "started": None, "state": state})
    return {"schema": rows.schema, "user_id": rows.user_id,
            "spawner": archive_row(rows.spawner),
            "server": archive_row(rows.server) if rows.server is not None else None,
            # what the repair leaves, so an undo can tell whether anything changed since
            "spawner_after": archive_row(after)}


def _no_pods(config: Config, store: Store, options: RepairOptions, console: Console,
             kube: KubeSource, rows: SessionRows) -> None:
    """Every pod of the session absent, or deleted with the operator's consent."""
    pods = _session_pods(config, options, kube, rows)
    if not pods:
        console.echo(f"no pod of {_label(options.user, options.server_name)} exists")
        return
    for pod in pods:
        meta = pod["metadata"]
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        phase = (pod.get("status") or {}).get("phase", "Unknown")
        console.confirm(f"Pod {safe_text(name)} ({phase}) belongs to this session; delete it?")
        finding = Finding("repair", options.hub, "repair-session",
                          _label(options.user, options.server_name), Severity.CRITICAL,
                          "operator repair: the session's pod")
        action = Action("delete-pod", "kube", kube.target, "delete_pod",
                        params={"namespace": meta.get("namespace"), "name": meta.get("name"),
                                "uid": meta.get("uid")},
                        before={"pod": pod_before_image(pod)})
        action_id = store.begin_action(f"operator-{uuid.uuid4().hex[:12]}", finding, action,
                                       datetime.now(UTC))
        try:
            detail = kube.delete_pod(meta["namespace"], meta["name"], meta.get("uid"))
        except PreconditionFailed as exc:
            detail = str(exc)
            store.finish_action(action_id, "skipped", detail, datetime.now(UTC))
        except SourceError as exc:
            store.finish_action(action_id, "failed", str(exc), datetime.now(UTC))
            raise Refused(f"could not delete pod {safe_text(name)}: {exc}",
                          EXIT_UNAVAILABLE) from None
        else:
            store.finish_action(action_id, "done", detail, datetime.now(UTC))
        console.echo(safe_text(detail))
        _wait_gone(kube, meta["namespace"], meta["name"], options)


def _wait_gone(kube: KubeSource, namespace: str, name: str, options: RepairOptions) -> None:
    deadline = time.monotonic() + options.wait
    while True:
        try:
            if kube.pod(namespace, name) is None:
                return
        except SourceError as exc:
            raise Refused(f"cannot tell whether pod {namespace}/{name} is gone: {exc}",
                          EXIT_UNAVAILABLE) from None
        if time.monotonic() >= deadline:
            raise Refused(f"pod {safe_text(namespace)}/{safe_text(name)} is still there after "
                          f"{options.wait:g}s; nothing was changed", EXIT_CANNOT)
        options.sleep(options.poll)


def _session_pods(config: Config, options: RepairOptions, kube: KubeSource,
                  rows: SessionRows) -> list[dict[str, Any]]:
    """The session's pods: the one the spawner state names, read by name, and every pod
    of the user's server found by the layout's selector and the hub's annotations."""
    section = config.hubs[options.hub]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        state = _state_dict(rows.spawner.get("state"))
        if isinstance(state.get("namespace"), str) and isinstance(state.get("pod_name"), str):
            pod = kube.pod(state["namespace"], state["pod_name"])
            if pod is not None:
                found[(state["namespace"], state["pod_name"])] = pod
        if section.layout == "nublado":
            namespace = f"{section.nublado_namespace_prefix}{options.user}"
            candidates = kube.pods(namespace, section.user_pod_selector())
        else:
            candidates = [
                p for p in kube.pods(section.namespace, section.user_pod_selector())
                if (p["metadata"].get("annotations") or {}).get("hub.jupyter.org/username")
                == options.user
                and ((p["metadata"].get("annotations") or {})
                     .get("hub.jupyter.org/servername") or "") == options.server_name]
    except SourceError as exc:
        raise Refused(f"cannot tell whether the session's pod runs: {exc}",
                      EXIT_UNAVAILABLE) from None
    for pod in candidates:
        meta = pod["metadata"]
        found.setdefault((meta.get("namespace"), meta.get("name")), pod)
    return list(found.values())


def _state_dict(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _new_state(text: Any) -> Any:
    """``spawners.state`` without the running-process keys; unchanged when it has none
    (or is not a JSON object: then it is left exactly as it is)."""
    state = _state_dict(text)
    if not any(key in state for key in SESSION_STATE_KEYS):
        return text
    return json.dumps({k: v for k, v in state.items() if k not in SESSION_STATE_KEYS})


def masked_state(text: Any) -> Any:
    """``state`` for the terminal: values of keys that name a credential masked."""
    state = _state_dict(text)
    if not state:
        return text
    return json.dumps(_mask(state))


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (MASK if names_a_secret(str(k)) and v not in (None, "") else _mask(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


# The two functions below write SQL text for the operator to read, never to run: what
# runs is built by SQLAlchemy with bound parameters (sources/hubdb_repair.py).
# ruff: noqa: S608

def sql_text(backend: str, rows: SessionRows, state: Any) -> str:
    """The statements the repair runs, with their values, for the operator to read.

    What runs is the same statements with bound parameters; here the values are
    written in, with ``state`` values whose keys name a credential masked.
    """
    spawner_id = rows.spawner.get("id")
    lines = [f"-- {backend}, alembic {safe_text(str(rows.schema))}: clear the session of "
             f"spawner {spawner_id} (user id {rows.user_id}); users rows are not touched",
             f"-- before: server_id = {_literal(rows.spawner.get('server_id'))}, started = "
             f"{_literal(rows.spawner.get('started'))}, state = "
             f"{_literal(masked_state(rows.spawner.get('state')))}",
             f"UPDATE spawners SET server_id = NULL, started = NULL, state = "
             f"{_literal(masked_state(state))} WHERE id = {spawner_id};"]
    if rows.server is not None:
        lines.append(f"-- before: {_row_text(rows.server)}")
        lines.append(f"DELETE FROM servers WHERE id = {rows.server.get('id')};")
    return "\n".join(lines)


def restore_sql_text(backend: str, before: SessionRows) -> str:
    """The statements an undo runs, for the operator to read (secrets masked)."""
    spawner = before.spawner
    lines = [f"-- {backend}: restore the session of spawner {spawner.get('id')}"]
    if before.server is not None:
        server = before.server
        lines.append(f"INSERT INTO servers ({', '.join(server.columns)}) VALUES ("
                     + ", ".join(_literal(v) for v in server.values) + ");")
    lines.append(f"UPDATE spawners SET server_id = {_literal(spawner.get('server_id'))}, "
                 f"started = {_literal(spawner.get('started'))}, state = "
                 f"{_literal(masked_state(spawner.get('state')))} WHERE id = {spawner.get('id')};")
    return "\n".join(lines)


def _row_text(row: Row) -> str:
    return ", ".join(f"{c} = {_literal(v)}" for c, v in zip(row.columns, row.values,
                                                             strict=True))


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = value.isoformat(sep=" ") if isinstance(value, datetime) else str(value)
    return "'" + safe_text(text).replace("'", "''") + "'"


def _label(user: str, server_name: str) -> str:
    return safe_text(f"{user}/{server_name}" if server_name else user)
