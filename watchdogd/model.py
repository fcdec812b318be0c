"""Plain domain types shared by every layer: data only, no I/O.

A pass of a check turns a :class:`Snapshot` (what the sources observed) into
:class:`Finding` objects; a finding may carry a planned :class:`Action`. The
engine, the policy and the store only ever see these types, which is what lets
a check be a pure function that a unit test can feed with a hand-built snapshot.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from watchdogd.ports import Call

__all__ = [
    "Action",
    "ActionStatus",
    "CheckTarget",
    "ClaimRecord",
    "Detection",
    "Finding",
    "ImplausibleData",
    "MissingObservation",
    "Need",
    "PreconditionFailed",
    "Resolved",
    "Severity",
    "Silence",
    "Snapshot",
    "SourceError",
    "Tracked",
]


class Severity(enum.IntEnum):
    """How urgent a finding is; ordered so that ``max()`` picks the worst."""

    INFO = 10
    WARNING = 20
    CRITICAL = 30

    @property
    def label(self) -> str:
        """The lowercase name used in JSON, metrics and notification tags."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Severity:
        """Read a severity from its label (``"warning"``)."""
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {value!r}") from None


class ActionStatus(enum.StrEnum):
    """What happened to a planned action in one pass (the report's ``action.status``)."""

    DONE = "done"
    PLANNED = "planned"
    DRY_RUN = "dry-run"
    UNCONFIRMED = "unconfirmed"
    OVER_BUDGET = "over-budget"
    BREAKER_OPEN = "breaker-open"
    DISABLED = "disabled"
    FAILED = "failed"
    SKIPPED = "skipped"  # the world changed under us; the precondition no longer held
    #: acted on too often in a window: watchdogd's picture is probably wrong
    HELD = "held"
    #: an operator's silence covers the finding and does not allow actions
    SILENCED = "silenced"
    #: the subject is exempt from actions (``[exclusions]`` or the ignore annotation)
    EXCLUDED = "excluded"


class SourceError(Exception):
    """An outside system could not give a complete answer.

    Sources raise this instead of returning partial data. The message names the
    source, the target and the cause, and never contains a secret.
    """

    def __init__(self, source: str, target: str, cause: str) -> None:
        self.source = source
        self.target = target
        self.cause = cause
        super().__init__(f"{source} {target}: {cause}")


class PreconditionFailed(Exception):
    """An action found the world no longer as the finding described it.

    Raised by a source right before it would change something (the volume is no
    longer ``reserved``, the pod has been replaced). The engine records the
    action as ``skipped``: acting on stale data is exactly what we refuse to do.
    """


class ImplausibleData(Exception):
    """The observations are complete but cannot be true (no hub pod, a hub DB without users).

    A check raises it from ``detect()``; the engine reports the target as
    ``error`` and acts on nothing, exactly as for a failed source. With
    ``notify`` set, the engine also tracks one ``view-implausible`` finding for the
    target (announced, reminded and resolved like any other, never acted on), so a
    view that hides most of a hub pages someone instead of failing silently.
    """

    def __init__(self, message: str, *, notify: bool = False) -> None:
        super().__init__(message)
        self.notify = notify


class MissingObservation(KeyError):
    """A check asked the snapshot for an observation that was not collected."""


@dataclass(frozen=True)
class Need:
    """One observation a check needs for a target.

    ``source`` and ``target`` pick a configured adapter (``kube`` of cluster
    ``js2``), ``call`` is the adapter method and ``params`` its keyword
    arguments. Needs are hashable so that two checks asking for the same list in
    one pass share one request.
    """

    key: str
    source: str
    target: str
    call: str
    params: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def of(key: str, source: str, target: str, call: str, **params: Any) -> Need:
        """Build a need by names (sorted parameters, so equal needs compare equal).

        Checks use :meth:`bind` with a typed :func:`watchdogd.ports.call` instead; this
        form is for engines' own tests with made-up sources.
        """
        return Need(key, source, target, call, tuple(sorted(params.items())))

    @staticmethod
    def bind(key: str, bound: Call) -> Need:
        """The observation ``key``: what ``bound`` (a :func:`watchdogd.ports.call`) returns."""
        return Need(key, bound.source, bound.target, bound.method, bound.params)


@dataclass(frozen=True)
class CheckTarget:
    """One thing a check looks at in a pass: a hub, a cloud, a cluster, a set of certificates."""

    name: str
    needs: tuple[Need, ...]
    settings: Any = None
    #: keys of needs that only enrich the verdicts: when one fails the target is still
    #: judged (its ``detect()`` finds the cause in ``snapshot.errors`` and must say so);
    #: every other need failing leaves the target in ``error``, as always
    optional: frozenset[str] = frozenset()


@dataclass
class Snapshot:
    """What the sources saw for one check target, taken at one moment.

    ``errors`` maps a need's key to why it could not be collected; a check run
    on a snapshot with errors is reported as ``error`` and acts on nothing, unless
    every failed need is one of the target's ``optional`` ones.
    """

    check: str
    target: str
    observations: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    settings: Any = None
    marks: dict[str, datetime] = field(default_factory=dict)
    #: each observation's server clock (the first ``Date`` of its answer), when it sent one
    server_now: dict[str, datetime] = field(default_factory=dict)
    #: the target's optional needs (:attr:`CheckTarget.optional`)
    optional: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Any:
        if key in self.errors:
            raise MissingObservation(f"{key}: {self.errors[key]}")
        try:
            return self.observations[key]
        except KeyError:
            raise MissingObservation(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        """Return an observation, or ``default`` if it was not asked for."""
        return self.observations.get(key, default)

    @property
    def complete(self) -> bool:
        """True when every observation was collected but perhaps optional ones."""
        return not set(self.errors) - self.optional


@dataclass(frozen=True)
class Action:
    """A remediation planned for a finding.

    The engine runs it as ``getattr(adapter(source, target), call)(**params)``.
    ``destructive`` actions count against the breaker and the budgets;
    ``before`` is the before-image written to the audit log so that a human can
    undo what was done.

    ``about`` and the parameters (``user``, ``server_name``, ``namespace``, ``volume_id``)
    are what the operator's ``[exclusions]`` are judged on.

    ``verify`` names the targeted re-reads (by name: one pod, one user's server)
    that the engine makes right before acting; the check's ``verify()`` function
    then says whether the finding still holds on them. An action is never run on
    the pass's lists alone when its check can say what to re-read.
    """

    name: str
    source: str
    target: str
    call: str
    params: Mapping[str, Any] = field(default_factory=dict)
    destructive: bool = True
    before: Mapping[str, Any] = field(default_factory=dict)
    verify: tuple[Need, ...] = ()
    #: what the action touches beyond its parameters, for the operator's exclusions:
    #: ``annotations`` (of the pod or claim), ``volume_metadata`` (of the Cinder volume)
    about: Mapping[str, Any] = field(default_factory=dict)
    #: at most one ``done`` run of this action for its finding within this span (a hub
    #: restart at most once an hour); the policy refuses more as ``over-budget``
    min_interval: timedelta | None = None

    @staticmethod
    def bind(name: str, bound: Call, *, destructive: bool = True,
             before: Mapping[str, Any] | None = None, verify: tuple[Need, ...] = (),
             about: Mapping[str, Any] | None = None,
             min_interval: timedelta | None = None) -> Action:
        """The remediation ``name``, run as ``bound`` (a :func:`watchdogd.ports.call`)."""
        return Action(name, bound.source, bound.target, bound.method, dict(bound.params),
                      destructive, before or {}, verify, about or {}, min_interval)


@dataclass
class Finding:
    """Something wrong, seen in one pass.

    Identity is the stable key ``check/target/kind/subject``: the store matches
    findings across passes by it, and notifications deduplicate on it.
    """

    check: str
    target: str
    kind: str
    subject: str
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    action: Action | None = None

    @property
    def key(self) -> str:
        """The stable identity ``check/target/kind/subject``."""
        return f"{self.check}/{self.target}/{self.kind}/{self.subject}"


@dataclass(frozen=True)
class ClaimRecord:
    """One line of the map of users' disks: a claim, the PV bound to it, the Cinder volume.

    ``cluster``, ``namespace`` and ``claim`` identify it; the rest is what the claim is
    bound to, as a pass saw it. ``manifest`` holds what the PV and PVC manifests that bind
    the volume to its claim again need (access modes, storage class, the CSI driver, its
    volume attributes and fsType, the claim's labels and hub annotations), never a secret.
    """

    cluster: str
    namespace: str
    claim: str
    pv: str
    volume_id: str
    #: the hub user, or None when nothing names one
    user: str | None
    #: where ``user`` was read: ``annotation``, ``label``, ``namespace`` or ``claim-name``
    user_source: str | None
    size: str | None
    reclaim_policy: str | None
    manifest: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Detection:
    """What ``detect()`` returns: the findings and how many subjects were examined.

    The subject count is the denominator of the breaker's fraction rule: ten
    planned stops are routine for 5,000 users and alarming for 12.
    """

    findings: list[Finding]
    subjects: int
    marks: set[str] = field(default_factory=set)
    #: True when only some subjects could be judged (a credential was refused):
    #: the findings it has are tracked, but none that are missing count as resolved.
    partial: bool = False
    #: Objects to read by name before anything can be judged (a pod that the hub's
    #: spawner state places outside the listed namespace or selector). The engine
    #: fetches them and calls ``detect()`` once more with them in the snapshot.
    lookups: tuple[Need, ...] = ()
    #: The map of users' disks this pass saw (the orphans check), for the store to keep
    #: as a new version when it changed; None when the check records nothing. The engine
    #: stores it only for a complete, non-partial pass of the acting process.
    records: list[ClaimRecord] | None = None


@dataclass
class Tracked:
    """A finding after tracking: its history and whether people should hear about it."""

    finding: Finding
    first_seen: datetime
    sightings: int
    event: str | None  # "new", "escalated", "reminder" or None


@dataclass
class Resolved:
    """A finding that was open and was not seen in a complete pass."""

    key: str
    check: str
    target: str
    kind: str
    subject: str
    severity: Severity
    message: str
    notified: bool


@dataclass(frozen=True)
class Silence:
    """An operator's "I know, stop paging me" for the findings it matches, until it expires.

    Every field that is set must match: ``check``, ``target`` and ``kind`` exactly,
    ``subject`` as a shell-style pattern (``alice*``, ``pvc-?1*``), case-sensitive. A
    silenced finding is still tracked and reported; it is never notified, and its action
    runs only when ``allow_actions`` says so.
    """

    id: int
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    check: str | None = None
    target: str | None = None
    kind: str | None = None
    subject: str | None = None
    allow_actions: bool = False
    expired_at: datetime | None = None
    expired_by: str | None = None
    #: the ``[maintenance.NAME]`` window this silence stands for (None: an operator's)
    window: str | None = None

    def matches(self, check: str, target: str, kind: str, subject: str) -> bool:
        """Whether a finding with this identity falls under the silence (ignoring time)."""
        return ((self.check is None or self.check == check)
                and (self.target is None or self.target == target)
                and (self.kind is None or self.kind == kind)
                and (self.subject is None or fnmatchcase(subject, self.subject)))

    def active(self, now: datetime) -> bool:
        """Not expired by time nor by hand at ``now``."""
        return self.expired_at is None and now < self.expires_at

    def describe(self) -> str:
        """``silence #3 until 2026-12-08T03:00Z by ana: the reason``, or the window's name."""
        if self.window is not None:
            return (f"maintenance window {self.window!r} until "
                    f"{self.expires_at:%Y-%m-%dT%H:%MZ}" + (f": {self.reason}" if self.reason
                                                           else ""))
        return (f"silence #{self.id} until {self.expires_at:%Y-%m-%dT%H:%MZ} by "
                f"{self.created_by}: {self.reason}")
