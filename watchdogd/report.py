"""The pass report: what one pass did, as the stable ``--json`` contract and as text.

The engine fills these types; the notifier, the metrics, the daemon and the CLI only
read them, so none of those need the engine to understand a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from watchdogd import __version__
from watchdogd.model import ActionStatus, Silence, Tracked
from watchdogd.policy import Decision
from watchdogd.text import safe_text, without_secrets
from watchdogd.times import iso

__all__ = ["CheckResult", "FindingResult", "PassReport", "render_report"]


@dataclass
class FindingResult:
    """A finding as it appears in the report."""

    tracked: Tracked
    decision: Decision | None = None
    action_status: str | None = None
    action_detail: str | None = None
    #: a held action's one critical notice is due this pass
    notify_held: bool = False
    #: the remedy was one run shared with an earlier finding of the pass (one route sync)
    shared: bool = False
    #: the operator's silence that covers it: reported, never notified
    silence: Silence | None = None
    #: acknowledged: no reminders until it escalates or resolves
    acked: bool = False

    def as_json(self) -> dict[str, Any]:
        """The report's finding object."""
        finding = self.tracked.finding
        action = None
        if finding.action is not None:
            action = {"name": finding.action.name, "status": self.action_status,
                      "detail": self.action_detail}
        return {
            "key": finding.key, "kind": finding.kind, "subject": finding.subject,
            "severity": finding.severity.label, "message": finding.message,
            "evidence": without_secrets(finding.evidence),
            "first_seen": iso(self.tracked.first_seen),
            "sightings": self.tracked.sightings, "action": action,
            "silenced": None if self.silence is None else {
                "id": self.silence.id or None, "window": self.silence.window,
                "until": iso(self.silence.expires_at), "by": self.silence.created_by,
                "reason": self.silence.reason, "allow_actions": self.silence.allow_actions},
            "acked": self.acked,
        }


@dataclass
class CheckResult:
    """One check target's part of a pass."""

    check: str
    target: str
    status: str = "ok"
    error: str | None = None
    duration_s: float = 0.0
    requests: int = 0
    findings: list[FindingResult] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    breaker: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The report's check object."""
        return {
            "check": self.check, "target": self.target, "status": self.status,
            "error": self.error, "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "findings": [f.as_json() for f in self.findings],
            "resolved": self.resolved,
            "breaker": self.breaker,
        }


@dataclass
class PassReport:
    """Everything one pass did: the ``--json`` report."""

    started_at: datetime
    finished_at: datetime
    dry_run: bool
    checks: list[CheckResult]
    #: whether this pass could act (it held the store's lock, and the Lease if elected)
    acting: bool = True
    not_acting_reason: str | None = None

    @property
    def errors(self) -> int:
        """How many check targets could not complete."""
        return sum(1 for c in self.checks if c.status == "error")

    @property
    def findings(self) -> int:
        """How many findings the pass reported."""
        return sum(len(c.findings) for c in self.checks)

    @property
    def actions_done(self) -> int:
        """How many actions ran successfully: a run shared by several findings counts once,
        as the audit log has it."""
        return sum(1 for c in self.checks for f in c.findings
                   if f.action_status == ActionStatus.DONE and not f.shared)

    def as_json(self) -> dict[str, Any]:
        """The stable JSON report of DESIGN.md."""
        return {
            "version": __version__,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "dry_run": self.dry_run,
            "acting": self.acting,
            "not_acting_reason": self.not_acting_reason,
            "checks": [c.as_json() for c in self.checks],
            "summary": {"findings": self.findings, "actions_done": self.actions_done,
                        "errors": self.errors},
        }


_MARK = {"ok": "ok", "findings": "!!", "error": "ERROR"}


def render_report(report: dict[str, Any]) -> str:
    """A readable summary of a JSON report.

    Every name in it comes from the outside world (volumes, users, servers): each is
    shown through :func:`safe_text`, so none can move the cursor or forge a line.
    """
    t = safe_text
    lines = []
    mode = "dry run" if report["dry_run"] else "remediation on"
    lines.append(f"watchdogd {report['version']} pass at {report['started_at']} ({mode})")
    if not report.get("acting", True):
        lines.append(f"  NOT ACTING: {t(report['not_acting_reason'])}")
    for check in report["checks"]:
        head = (f"  {_MARK[check['status']]:5} {t(check['check'])}/{t(check['target'])}: "
                f"{len(check['findings'])} finding(s), {check['requests']} request(s), "
                f"{check['duration_s']:.2f}s")
        lines.append(head)
        if check["error"]:
            lines.append(f"        error: {t(check['error'])}")
        if check.get("breaker"):
            lines.append(f"        BREAKER OPEN: {t(check['breaker'])}")
        for finding in check["findings"]:
            lines.append(f"        [{finding['severity']}] {t(finding['kind'])} "
                         f"{t(finding['subject'])}: {t(finding['message'])}")
            action = finding["action"]
            if action:
                lines.append(f"            -> {t(action['name'])}: {t(action['status'])}"
                             + (f" ({t(action['detail'])})" if action["detail"] else ""))
        for key in check.get("resolved", []):
            lines.append(f"        resolved: {t(key)}")
    summary = report["summary"]
    lines.append(f"  summary: {summary['findings']} finding(s), {summary['actions_done']} "
                 f"action(s) done, {summary['errors']} error(s)")
    return "\n".join(lines)
