"""``watchdogd undo ACTION_ID``: put back what one audited action changed.

Each undoable action has one function in :data:`UNDO` (its name -> how to undo it); an
action that cannot be undone has the reason instead (:data:`NO_UNDO`). Adding an undo is
a function and a registry line.

The undo is itself audited: an ``undo`` row whose params name the undone action. An action
is undone at most once: a second ``undo`` of it says so and changes nothing (exit 0), and
each undo function is idempotent (a retry after a crash finds the world already restored).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from watchdogd.config import Config
from watchdogd.model import Action, Finding, PreconditionFailed, Severity, SourceError
from watchdogd.repair import (
    EXIT_CANNOT,
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    Console,
    Refused,
    kube_for,
    require_hub_down,
    restore_sql_text,
    writer_for,
)
from watchdogd.sources.hubdb_repair import SessionRows, restore_row
from watchdogd.store import ActionRecord, Store
from watchdogd.text import safe_text

__all__ = ["NO_UNDO", "UNDO", "UndoContext", "undo"]


@dataclass
class UndoContext:
    """What an undo function may use."""

    config: Config
    store: Store
    console: Console
    #: who asked, when it is not the login behind the CLI (the admin page's hub user)
    by: str | None = None


#: An undo: given the audited action, restore; returns a one-line result, or raises
#: Refused (a reason and an exit code) or PreconditionFailed (the world moved on).
UndoFn = Callable[[UndoContext, ActionRecord], str]


def _undo_repair_session(ctx: UndoContext, record: ActionRecord) -> str:
    """Put back the spawner columns and the ``servers`` row a repair-session changed."""
    before = _session(record.before, "spawner", "server")
    after = _session(record.before, "spawner_after", None)
    writer = writer_for(ctx.config, record.target)
    kube = kube_for(ctx.config, record.target)
    try:
        require_hub_down(ctx.config, record.target, kube)
        ctx.console.echo(restore_sql_text(writer.backend, before))
        ctx.console.confirm(f"Run this SQL on hub {record.target}'s database?")
        # The hub could have been started while the operator read the SQL.
        require_hub_down(ctx.config, record.target, kube)
        writer.restore_session(before, after)
    except SourceError as exc:
        raise Refused(f"hub database: rolled back, nothing changed: {exc}",
                      EXIT_UNAVAILABLE) from None
    finally:
        writer.close()
        kube.close()
    server = before.server.get("id") if before.server is not None else None
    return (f"restored spawner {before.spawner.get('id')}"
            + (f" and server row {server}" if server is not None else ""))


def _undo_quarantine(ctx: UndoContext, record: ActionRecord) -> str:
    """Remove the orphan-quarantine mark from the volume, if it is still watchdogd's."""
    from watchdogd.sources.openstack import OpenStackSource  # noqa: PLC0415

    params = record.params
    cloud = record.target
    if cloud not in ctx.config.clouds:
        raise Refused(f"the action's cloud {safe_text(cloud)} is not configured ([clouds.X])",
                      EXIT_CONFIG)
    try:
        volume_id, key, value = params["volume_id"], params["key"], params["value"]
    except KeyError:
        raise Refused(f"action {record.id} has no volume_id/key/value to undo",
                      EXIT_CANNOT) from None
    ctx.console.confirm(f"Remove the metadata {safe_text(key)}={safe_text(value)} from volume "
                        f"{safe_text(volume_id)}?")
    source = OpenStackSource(cloud, ctx.config.clouds[cloud])
    try:
        return source.unquarantine_volume(volume_id, key, value)
    except SourceError as exc:
        raise Refused(str(exc), EXIT_UNAVAILABLE) from None
    finally:
        source.close()


def _undo_quarantine_extra_pvc(ctx: UndoContext, record: ActionRecord) -> str:
    """Remove the quarantine mark from the claim, if it is still the one watchdogd wrote."""
    from watchdogd.sources.kube import KubeSource  # noqa: PLC0415

    cluster = record.target
    if cluster not in ctx.config.clusters:
        raise Refused(f"the action's cluster {safe_text(cluster)} is not configured",
                      EXIT_CONFIG)
    params = record.params
    try:
        namespace, name, uid = params["namespace"], params["name"], params["uid"]
        key, value = params["key"], params["value"]
    except KeyError:
        raise Refused(f"action {record.id} has no claim and mark to undo", EXIT_CANNOT) from None
    ctx.console.confirm(f"Remove the annotation {safe_text(key)}={safe_text(value)} from claim "
                        f"{safe_text(namespace)}/{safe_text(name)} in cluster "
                        f"{safe_text(cluster)}?")
    source = KubeSource(cluster, ctx.config.clusters[cluster])
    try:
        return source.unmark_claim(namespace, name, uid, key, value)
    except SourceError as exc:
        raise Refused(str(exc), EXIT_UNAVAILABLE) from None
    finally:
        source.close()


#: annotations the API server's controllers write on a claim: a recreated claim starts without
_CONTROLLER_ANNOTATIONS = ("pv.kubernetes.io/", "volume.kubernetes.io/",
                           "volume.beta.kubernetes.io/")


def _undo_delete_extra_pvc(ctx: UndoContext, record: ActionRecord) -> str:
    """Recreate the deleted claim from its archived manifest on the retained PV."""
    from watchdogd.sources.kube import KubeSource  # noqa: PLC0415

    cluster = record.target
    if cluster not in ctx.config.clusters:
        raise Refused(f"the action's cluster {safe_text(cluster)} is not configured",
                      EXIT_CONFIG)
    try:
        manifest = dict(record.before["claim"])
        volume_name = str(record.before["pv"]["name"])
        metadata = dict(manifest["metadata"])
    except (KeyError, TypeError):
        raise Refused(f"action {record.id} has no claim manifest to recreate",
                      EXIT_CANNOT) from None
    # Without watchdogd's mark (the quarantine starts again on both clocks) and without
    # the controllers' binding annotations of the old claim.
    key = record.params.get("key")
    metadata["annotations"] = {
        k: v for k, v in (metadata.get("annotations") or {}).items()
        if k != key and not k.startswith(_CONTROLLER_ANNOTATIONS)}
    manifest["metadata"] = metadata
    where = f"{metadata.get('namespace')}/{metadata.get('name')}"
    ctx.console.confirm(f"Recreate claim {safe_text(where)} on PV {safe_text(volume_name)} "
                        f"in cluster {safe_text(cluster)}?")
    source = KubeSource(cluster, ctx.config.clusters[cluster])
    try:
        return source.restore_claim(manifest, volume_name)
    except SourceError as exc:
        raise Refused(str(exc), EXIT_UNAVAILABLE) from None
    finally:
        source.close()


#: action name -> its undo. One line per undoable action.
UNDO: dict[str, UndoFn] = {
    "repair-session": _undo_repair_session,
    "quarantine": _undo_quarantine,
    "delete-extra-pvc": _undo_delete_extra_pvc,
    "quarantine-extra-pvc": _undo_quarantine_extra_pvc,
}

#: action name -> why it has no undo (said to the operator as it is)
NO_UNDO: dict[str, str] = {
    "stop-server": "a stopped server is started by its user",
    "delete-pod": "a deleted pod is not recreated by watchdogd: its owner (the hub, a "
                  "controller) starts a new one",
    "restart-hub": "a restarted hub is already running again",
    "sync-routes": "the routes were made to match the hub's own records",
    "delete-attachment": "a deleted Cinder attachment is recreated by attaching the volume "
                         "again (Kubernetes does so when a pod needs it)",
    "reset-volume-status": "the status reset only corrected Cinder's database",
    "delete-orphan-volume": "a deleted volume is gone; it was quarantined for "
                            "quarantine_days first",
    "undo": "an undo is not undone; run the original action again",
    "delete-lab": "a deleted lab is started again by its user",
    "silence-add": "expire the silence instead (watchdogd silence expire, or the page)",
    "silence-expire": "add a silence again",
    "ack": "an acknowledgement ends when its finding escalates or resolves",
}


def undo(ctx: UndoContext, action_id: int) -> int:
    """Undo the audited action ``action_id``; 0 when done (or done before), else Refused."""
    record = ctx.store.action(action_id)
    if record is None:
        raise Refused(f"no action {action_id} in the audit log", EXIT_CANNOT)
    name = record.name
    if name in NO_UNDO or name not in UNDO:
        reason = NO_UNDO.get(name, "watchdogd has no undo for this action")
        raise Refused(f"action {action_id} ({safe_text(name)}) cannot be undone: {reason}",
                      EXIT_CANNOT)
    if record.status != "done":
        raise Refused(f"action {action_id} ({safe_text(name)}) is {record.status}, not done: "
                      "there is nothing of it to undo", EXIT_CANNOT)
    earlier = [r for r in ctx.store.actions(name="undo", limit=100_000)
               if r.params.get("undoes") == action_id]
    done = [r for r in earlier if r.status == "done"]
    if done:
        ctx.console.echo(f"action {action_id} was already undone by action {done[-1].id}; "
                         "nothing to do")
        return 0
    finding = Finding("undo", record.target, "undo", str(action_id), Severity.INFO,
                      f"operator undo of action {action_id} ({name})")
    audit = Action("undo", "operator", record.target, name,
                   params={"undoes": action_id, "action": name}
                   | ({"by": ctx.by} if ctx.by else {}), destructive=False)
    undo_id = ctx.store.begin_action(f"operator-{uuid.uuid4().hex[:12]}", finding, audit,
                                     datetime.now(UTC))
    try:
        detail = UNDO[name](ctx, record)
    except PreconditionFailed as exc:
        ctx.store.finish_action(undo_id, "skipped", str(exc), datetime.now(UTC))
        raise Refused(f"undo of action {action_id} refused: {exc}", EXIT_CANNOT) from None
    except Refused as exc:
        ctx.store.finish_action(undo_id, "skipped" if exc.code != EXIT_UNAVAILABLE
                                else "failed", str(exc), datetime.now(UTC))
        raise
    except BaseException as exc:
        ctx.store.finish_action(undo_id, "failed", f"{type(exc).__name__}", datetime.now(UTC))
        raise
    ctx.store.finish_action(undo_id, "done", detail, datetime.now(UTC))
    ctx.console.echo(f"done: {safe_text(detail)}; audit action {undo_id}")
    return 0


def _session(before: dict[str, Any], spawner_key: str, server_key: str | None) -> SessionRows:
    try:
        spawner = restore_row(before[spawner_key])
        server_data = before.get(server_key) if server_key else None
        server = restore_row(server_data) if server_data else None
        return SessionRows(before.get("schema"), int(before["user_id"]), spawner, server)
    except (KeyError, TypeError, ValueError):
        raise Refused("the audit row's before-image is not a repair-session archive",
                      EXIT_CANNOT) from None
