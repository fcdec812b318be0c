"""The remediation policy: whether a planned action may run, and if not, why.

The gates apply in a fixed order an operator can predict: enabled, not excluded
(``[exclusions]``, or a pod or claim annotated ``watchdogd.io/ignore``), not silenced
(an operator's silence that does not allow actions), not held (acted on too often
lately), confirmed (sightings and age), the breaker, dry-run, the action's own minimum
interval (a hub restart at most once an hour), the budgets. Every refusal carries a
one-line reason that ends up in the report and the logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from watchdogd.config import IGNORE_ANNOTATION, ExclusionsConfig, RemediationConfig
from watchdogd.model import Action, ActionStatus, Tracked
from watchdogd.times import format_duration

__all__ = ["Budget", "Decision", "breaker_trips", "decide", "exclusion"]


@dataclass
class Decision:
    """The verdict on one finding's planned action."""

    tracked: Tracked
    status: ActionStatus
    detail: str
    #: for a held action: whether this pass owes the one critical notice
    notify: bool = False


@dataclass
class Budget:
    """Destructive actions left in this pass and in the sliding hour.

    One budget is shared by every check target of a pass, so ten hubs cannot
    each spend the per-pass allowance.
    """

    per_pass: int
    per_hour: int

    def take(self) -> str | None:
        """Use one unit; return why not when the budget is spent."""
        if self.per_pass <= 0:
            return "per-pass budget spent (remediation.max_per_pass)"
        if self.per_hour <= 0:
            return "hourly budget spent (remediation.max_per_hour)"
        self.per_pass -= 1
        self.per_hour -= 1
        return None


def exclusion(action: Action, rules: ExclusionsConfig) -> str | None:
    """Why ``[exclusions]`` (or the ignore annotation) exempt what ``action`` touches, or None.

    Judged on the action's parameters (``user``, ``server_name``, ``namespace``,
    ``volume_id``) and on what the check says it touches (``about``: the pod's or claim's
    annotations, the volume's metadata), so one rule covers every check's actions.
    """
    params = action.params
    annotations = action.about.get("annotations") or {}
    if str(annotations.get(IGNORE_ANNOTATION, "")).strip().lower() == "true":
        return f'annotated {IGNORE_ANNOTATION}: "true"'
    for param, patterns, key in (("user", rules.users, "users"),
                                 ("server_name", rules.server_names, "server_names"),
                                 ("namespace", rules.namespaces, "namespaces")):
        value = params.get(param)
        if isinstance(value, str) and value and any(fnmatchcase(value, p) for p in patterns):
            return f"{param.replace('_', ' ')} {value!r} is excluded (exclusions.{key})"
    volume = params.get("volume_id")
    if isinstance(volume, str) and volume in rules.volume_ids:
        return f"volume {volume} is excluded (exclusions.volume_ids)"
    metadata = action.about.get("volume_metadata") or {}
    for key, value in rules.volume_metadata.items():
        if str(metadata.get(key)) == value:
            return f"volume metadata {key}={value} is excluded (exclusions.volume_metadata)"
    return None


def breaker_trips(planned: int, subjects: int, policy: RemediationConfig) -> str | None:
    """Why the breaker opens for ``planned`` destructive actions among ``subjects``, or None.

    The fraction rule only applies from ``breaker_min_subjects`` on: two stops
    among five users is routine, 2,000 among 5,000 is an outage of our own data.
    """
    if planned > policy.breaker_max:
        return (f"{planned} destructive actions planned, more than "
                f"remediation.breaker_max = {policy.breaker_max}")
    if subjects >= policy.breaker_min_subjects and planned > policy.breaker_fraction * subjects:
        return (f"{planned} destructive actions planned for {subjects} subjects, more than "
                f"remediation.breaker_fraction = {policy.breaker_fraction:g}")
    return None


def decide(
    tracked: list[Tracked],
    *,
    policy: RemediationConfig,
    dry_run: bool,
    subjects: int,
    budget: Budget,
    now: datetime,
    repeats: Mapping[str, int] | None = None,
    acting: bool = True,
    silenced: Mapping[str, str] | None = None,
    exclusions: ExclusionsConfig | None = None,
    last_done: Mapping[str, datetime] | None = None,
) -> tuple[list[Decision], str | None]:
    """Decide every planned action of one check target's pass.

    ``repeats`` counts, per finding key, the actions done on it within
    ``remediation.repeat_window``. ``acting=False`` (a standby, or a process without
    the store's lock) decides like a dry run and says why. ``silenced`` maps the keys of
    findings whose silence forbids actions to that silence's description. ``last_done``
    says, per finding key, when its action was last done: an action with a
    ``min_interval`` is refused (``over-budget``) within that span of it. Returns the
    decisions and,
    when the breaker opened, the reason (the caller sends one critical notice for it).
    """
    repeats = repeats or {}
    silenced = silenced or {}
    decisions: list[Decision] = []
    candidates: list[Decision] = []
    for item in tracked:
        action = item.finding.action
        if action is None:
            continue
        if action.name not in policy.enabled:
            decisions.append(Decision(item, ActionStatus.DISABLED,
                                      f"{action.name} is not in remediation.enabled"))
            continue
        excluded = exclusion(action, exclusions) if exclusions is not None else None
        if excluded:
            decisions.append(Decision(item, ActionStatus.EXCLUDED,
                                      f"{excluded}: reported, never acted on"))
            continue
        if item.finding.key in silenced:
            decisions.append(Decision(item, ActionStatus.SILENCED,
                                      f"{silenced[item.finding.key]} (no actions)"))
            continue
        done = repeats.get(item.finding.key, 0)
        if done >= policy.max_repeats:
            decisions.append(Decision(item, ActionStatus.HELD, (
                f"{action.name} already done {done} times in "
                f"{format_duration(policy.repeat_window.total_seconds())} "
                f"(remediation.max_repeats = {policy.max_repeats}): the problem keeps coming "
                "back, so watchdogd's picture of it may be wrong; no more automatic action")))
            continue
        if item.sightings < policy.confirm_after:
            decisions.append(Decision(item, ActionStatus.UNCONFIRMED,
                                      f"seen in {item.sightings} of {policy.confirm_after} "
                                      "passes needed"))
            continue
        age = now - item.first_seen
        if age < policy.min_age:
            decisions.append(Decision(item, ActionStatus.UNCONFIRMED,
                                      f"seen for {format_duration(age.total_seconds())} of "
                                      f"{format_duration(policy.min_age.total_seconds())} needed"))
            continue
        decision = Decision(item, ActionStatus.PLANNED, f"would run {action.name}")
        decisions.append(decision)
        candidates.append(decision)

    destructive = [d for d in candidates if d.tracked.finding.action
                   and d.tracked.finding.action.destructive]
    breaker = breaker_trips(len(destructive), subjects, policy)
    if breaker:
        for decision in destructive:
            decision.status = ActionStatus.BREAKER_OPEN
            decision.detail = breaker
    for decision in candidates:
        if decision.status is not ActionStatus.PLANNED:
            continue
        action = decision.tracked.finding.action
        assert action is not None
        if dry_run or not acting:
            decision.status = ActionStatus.DRY_RUN
            decision.detail = (f"{'dry run' if acting else 'not acting'}: "
                               f"would run {action.name}")
            continue
        previous = (last_done or {}).get(decision.tracked.finding.key)
        if action.min_interval is not None and previous is not None \
                and now - previous < action.min_interval:
            decision.status = ActionStatus.OVER_BUDGET
            decision.detail = (
                f"{action.name} was already done for this at {previous:%Y-%m-%d %H:%M:%S} "
                f"UTC; at most once every "
                f"{format_duration(action.min_interval.total_seconds())}, so not before "
                f"{previous + action.min_interval:%H:%M:%S} UTC")
            continue
        if action.destructive:
            refusal = budget.take()
            if refusal:
                decision.status = ActionStatus.OVER_BUDGET
                decision.detail = refusal
    return decisions, breaker

