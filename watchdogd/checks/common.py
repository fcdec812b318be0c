"""Small helpers the check modules share: pure functions, no I/O."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from watchdogd.model import Action, Finding, Severity, Snapshot
from watchdogd.text import names_a_secret

__all__ = ["Detector", "pod_before_image"]


#: annotations that may hold credentials beyond what their name says: any "auth" state,
#: and kubectl's copy of the whole manifest (env included)
_SECRET_ANNOTATION = re.compile(r"auth|last-applied-configuration", re.IGNORECASE)


def pod_before_image(pod: dict[str, Any]) -> dict[str, Any]:
    """What the audit log keeps of a pod it deletes: what an undo or an inquiry needs.

    Identity, owner, labels, the scheduling and image of each container, its volumes by
    claim, status and timestamps. Never env values (``JUPYTERHUB_API_TOKEN`` is in every
    user pod's env), command lines, secret volumes' items, or annotations whose names say
    they hold credentials.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not (names_a_secret(str(k)) or _SECRET_ANNOTATION.search(str(k)))}
    containers = [
        {"name": c.get("name"), "image": c.get("image"), "resources": c.get("resources"),
         "env_names": sorted(str(e.get("name")) for e in c.get("env") or []
                             if isinstance(e, dict))}
        for c in spec.get("containers") or [] if isinstance(c, dict)]
    volumes = [
        {"name": v.get("name"),
         "claim": (v.get("persistentVolumeClaim") or {}).get("claimName"),
         "kind": next((k for k in v if k != "name"), None)}
        for v in spec.get("volumes") or [] if isinstance(v, dict)]
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels",
                                              "ownerReferences", "creationTimestamp",
                                              "deletionTimestamp")} | {
            "annotations": annotations},
        "spec": {"nodeName": spec.get("nodeName"),
                 "serviceAccountName": spec.get("serviceAccountName"),
                 "containers": containers, "volumes": volumes},
        "status": {k: status.get(k) for k in ("phase", "reason", "message", "podIP",
                                              "startTime")} | {
            "containerStatuses": [
                {k: c.get(k) for k in ("name", "ready", "restartCount", "state")}
                for c in status.get("containerStatuses") or [] if isinstance(c, dict)]},
    }


class Detector:
    """The state of one ``detect()`` call: the findings and marks it builds up.

    Each check subclasses it with its own judging methods; this part is the same for all:
    findings are keyed by the check and the snapshot's target, and a mark remembers when a
    condition was first seen (marks not set again this pass are forgotten by the store).
    """

    def __init__(self, check: str, snapshot: Snapshot, now: datetime) -> None:
        self.check = check
        self.snapshot = snapshot
        self.now = now
        self.findings: list[Finding] = []
        self.marks: set[str] = set()

    def finding(self, kind: str, subject: str, severity: Severity, message: str,
                evidence: dict[str, Any], action: Action | None = None) -> None:
        """Report one finding of this target."""
        self.findings.append(Finding(self.check, self.snapshot.target, kind, subject, severity,
                                     message, evidence, action))

    def seen_since(self, mark: str) -> datetime:
        """When this exact condition was first seen (now, the first time); keeps the mark."""
        self.marks.add(mark)
        return self.snapshot.marks.get(mark, self.now)
