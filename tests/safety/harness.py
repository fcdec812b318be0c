"""Watching the real engine from outside: every call it makes, checked against the world.

The safety properties are checked against what *really* happened, not against what the
engine says happened:

* :class:`RecordingSources` hands the engine taps around the real adapters; every read
  (with its result or exception) and every action call is recorded with the pass number.
* :class:`Referee` compares, after every pass, the recorded calls, the audit log, the
  report and the world's *truth* (an oracle computed from the simulators' own state, never
  from watchdogd's code) and collects violations:

  I1  a read that succeeded returned exactly what a fault-free read returned before the
      pass (a source never returns a partial list when a fault hit it);
  I2  every action is justified: its check target's reads all succeeded in that pass, the
      oracle says the subject really has the problem the action fixes, and the finding was
      reported in ``confirm_after`` complete passes in a row (counted here, from reports);
  I3  destructive actions stay within ``max_per_pass`` and the sliding ``max_per_hour``,
      and none runs for a check target whose confirmed destructive plans trip the breaker;
  I5  every action has its intent and its result in the audit log, one row per call, and
      no mutating request reached a simulator without an action call behind it.

The truth at the start of a pass cannot judge what changes in its middle (a pod recreated
under the same name after the list was read): the world models also watch every mutating
request as it arrives at a simulator and report *harm* done at that moment (a running pod
deleted, a referenced volume deleted, a live server stopped); :class:`Driver` hands those to
the referee as unjustified actions.

:class:`Driver` runs refereed passes with faults armed; :func:`converge` then runs
fault-free passes and checks I4: convergence within a bound, and no flapping after it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tests.safety.stats import STATS
from watchdogd.checks import CheckSpec
from watchdogd.config import Config, RemediationConfig
from watchdogd.engine import Engine
from watchdogd.model import CheckTarget, Need
from watchdogd.report import PassReport
from watchdogd.sources import Sources
from watchdogd.store import ActionRecord, Store

__all__ = [
    "ACTION_CALLS",
    "DESTRUCTIVE",
    "Call",
    "Driver",
    "FastSources",
    "Recorder",
    "RecordingSources",
    "Referee",
    "Truth",
    "converge",
    "convergence_bound",
    "hasten",
]

#: adapter methods that change the world (everything else is a read)
ACTION_CALLS = frozenset({"stop_server", "sync_routes", "delete_pod", "delete_attachment",
                          "reset_volume_status", "quarantine_volume", "delete_volume"})
#: action names that are destructive by the design (what counts against budgets and breaker)
DESTRUCTIVE = frozenset({"stop-server", "delete-pod", "restart-hub", "delete-attachment",
                         "reset-volume-status", "delete-orphan-volume"})

CallKey = tuple[str, str, str, tuple[tuple[str, Any], ...]]


def call_key(source: str, target: str, call: str, params: dict[str, Any]) -> CallKey:
    """What identifies a fetch, whatever key a check gives it."""
    return (source, target, call, tuple(sorted(params.items())))


def need_key(need: Need) -> CallKey:
    """The :func:`call_key` of a need."""
    return (need.source, need.target, need.call, need.params)


@dataclass
class Call:
    """One call the engine made on an adapter."""

    pass_no: int
    source: str
    target: str
    call: str
    params: dict[str, Any]
    action: bool
    ok: bool = False
    error: str | None = None
    result: Any = None
    #: a read made after an action of the same pass (a re-read right before the next
    #: action): the world has moved on since the pass's lists, so I1 does not compare it
    after_action: bool = False

    @property
    def key(self) -> CallKey:
        return call_key(self.source, self.target, self.call, self.params)


class Recorder:
    """Every adapter call of a process, in order (thread-safe: collect is concurrent)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.pass_no = 0
        self._lock = threading.Lock()
        #: run once per pass right before its first action (end of collect)
        self.before_first_action: list[Callable[[], None]] = []
        self._acted_in: int | None = None

    def begin(self, call: Call) -> None:
        if not call.action:
            with self._lock:
                call.after_action = self._acted_in == self.pass_no
        if call.action:
            with self._lock:
                first = self._acted_in != self.pass_no
                self._acted_in = self.pass_no
            if first:
                for hook in self.before_first_action:
                    hook()
        with self._lock:
            self.calls.append(call)

    def of_pass(self, pass_no: int) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.pass_no == pass_no]


class _Tap:
    """An adapter seen through the recorder."""

    def __init__(self, adapter: Any, recorder: Recorder, source: str, target: str) -> None:
        self._adapter = adapter
        self._recorder = recorder
        self._source = source
        self._target = target

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._adapter, name)
        if name.startswith("_") or name == "close" or not callable(real):
            return real

        def tapped(**params: Any) -> Any:
            call = Call(self._recorder.pass_no, self._source, self._target, name, dict(params),
                        name in ACTION_CALLS)
            self._recorder.begin(call)
            try:
                result = real(**params)
            except BaseException as exc:
                call.error = f"{type(exc).__name__}: {exc}"
                raise
            call.ok, call.result = True, result
            return result

        return tapped


def hasten(adapter: Any, factor: float = 0.1) -> None:
    """Shorten an adapter's retry backoff (only the waiting; every retry still happens).

    The randomized worlds take hundreds of faults; at full backoff a refused connection
    costs 1.2 s of sleeping, which is all the suite would do.
    """
    for holder in (adapter, getattr(adapter, "http", None)):
        if holder is not None and callable(getattr(holder, "_sleep", None)):
            real = holder._sleep
            holder._sleep = lambda seconds, real=real: real(seconds * factor)


class FastSources(Sources):
    """Sources whose retry backoff is shortened by :func:`hasten`."""

    def adapter(self, source: str, target: str) -> Any:
        key = (source, target)
        fresh = key not in self._adapters
        real = super().adapter(source, target)
        if fresh:
            hasten(real)
        return real


class RecordingSources(FastSources):
    """The real adapters, each behind a :class:`_Tap`."""

    def __init__(self, config: Config, recorder: Recorder) -> None:
        super().__init__(config)
        self.recorder = recorder
        self._taps: dict[tuple[str, str], _Tap] = {}

    def adapter(self, source: str, target: str) -> Any:
        real = super().adapter(source, target)
        key = (source, target)
        if key not in self._taps:
            self._taps[key] = _Tap(real, self.recorder, source, target)
        return self._taps[key]


class Truth:
    """What an oracle knows about the world at the start of a pass.

    Subclasses (one per family of checks) answer :meth:`justify` for an action row and
    :meth:`subjects` for a check target, from the simulators' own state.
    """

    def justify(self, row: ActionRecord) -> str | None:
        """None when the action is justified by the world; else why it is not."""
        raise NotImplementedError

    def subjects(self, check: str, target: str) -> int | None:
        """How many subjects the check target has (None: unknown, skip the fraction rule)."""
        return None


@dataclass
class PassFacts:
    """What one pass did, gathered for the referee."""

    pass_no: int
    started: datetime
    report: PassReport
    calls: list[Call]
    rows: list[ActionRecord]
    truth: Truth
    truth_reads: dict[CallKey, Any]
    #: reads whose data may legitimately differ from the truth read (a mid-pass change)
    unstable: set[CallKey] = field(default_factory=set)
    #: mutating requests the simulators received during the pass, by source name
    mutations: dict[str, int] = field(default_factory=dict)


class Referee:
    """Collects violations of I1, I2, I3 and I5 over the passes of one world."""

    def __init__(self, config: Config, plan: list[tuple[CheckSpec, CheckTarget]]) -> None:
        self.config = config
        self.policy: RemediationConfig = config.remediation
        self.plan = plan
        self.violations: list[str] = []
        self.unjustified = 0
        #: finding key -> consecutive sightings in complete passes (our own count)
        self.tally: dict[str, int] = {}
        #: (time, count) of destructive action calls, for the sliding hour
        self.destructive_history: list[tuple[datetime, int]] = []
        self.breaker_seen = False
        self.actions = 0
        self.errors = 0
        self._needs = {(spec.name, t.name): [need_key(n) for n in t.needs] for spec, t in plan}

    # -- helpers -----------------------------------------------------------------------------

    def violate(self, text: str, *, unjustified: bool = False) -> None:
        self.violations.append(text)
        if unjustified:
            self.unjustified += 1
            STATS.add("unjustified_actions")
        else:
            STATS.add("violations")

    def _update_tally(self, report: PassReport) -> None:
        for result in report.checks:
            if result.status == "error":
                continue  # an incomplete pass proves nothing: sightings stay as they were
            prefix = f"{result.check}/{result.target}/"
            seen = {f.tracked.finding.key for f in result.findings}
            for key in [k for k in self.tally if k.startswith(prefix) and k not in seen]:
                del self.tally[key]
            for key in seen:
                self.tally[key] = self.tally.get(key, 0) + 1

    # -- the pass -----------------------------------------------------------------------------

    def judge(self, facts: PassFacts) -> None:
        """Check one pass; violations accumulate in :attr:`violations`."""
        where = f"pass {facts.pass_no}"
        report = facts.report
        self.errors += report.errors
        STATS.add("source_errors", report.errors)
        self._update_tally(report)
        reads = [c for c in facts.calls if not c.action]
        actions = [c for c in facts.calls if c.action]
        failed_reads = {c.key for c in reads if not c.ok}

        # I1: a successful read is complete.
        for call in reads:
            if (not call.ok or call.after_action or call.key in facts.unstable
                    or call.key not in facts.truth_reads):
                continue
            if call.result != facts.truth_reads[call.key]:
                self.violate(f"{where}: {call.source} {call.target} {call.call}{call.params} "
                             "returned data that differs from a fault-free read")

        # I5: one audit row per action call, intent and result both written.
        if len(facts.rows) != len(actions):
            self.violate(f"{where}: {len(actions)} action call(s) but {len(facts.rows)} audit "
                         f"row(s): {[(c.call, c.params) for c in actions]} vs "
                         f"{[(r.name, r.params) for r in facts.rows]}")
        for call, row in zip(actions, facts.rows, strict=False):
            if row.params != call.params:
                self.violate(f"{where}: audit row {row.id} params {row.params} != call "
                             f"{call.params}")
            if row.status == "started" or row.finished_at is None:
                self.violate(f"{where}: audit row {row.id} ({row.name}) has no result")
            if row.destructive != (row.name in DESTRUCTIVE):
                self.violate(f"{where}: audit row {row.id} ({row.name}) destructive flag "
                             f"{row.destructive}")
        for source, count in facts.mutations.items():
            calls = sum(1 for c in actions if c.source == source)
            if count and not calls:
                self.violate(f"{where}: {count} mutating request(s) reached {source} without "
                             "any action call")

        # I2: every action is justified.
        by_target: dict[tuple[str, str], list[ActionRecord]] = {}
        for row in facts.rows:
            check, target = row.finding_key.split("/")[:2]
            by_target.setdefault((check, target), []).append(row)
            self.actions += 1
            STATS.add("actions_checked")
            failed = [k for k in self._needs.get((check, target), []) if k in failed_reads]
            if failed:
                self.violate(f"{where}: {row.name} {row.params} ran although {check}/{target} "
                             f"read {failed[0][:3]} failed", unjustified=True)
            status = next((c.status for c in report.checks
                           if (c.check, c.target) == (check, target)), None)
            if status in (None, "error"):
                self.violate(f"{where}: {row.name} {row.params} ran for {check}/{target} whose "
                             f"status is {status}", unjustified=True)
            sightings = self.tally.get(row.finding_key, 0)
            if sightings < self.policy.confirm_after:
                self.violate(f"{where}: {row.name} for {row.finding_key} after {sightings} "
                             f"sighting(s), confirm_after = {self.policy.confirm_after}",
                             unjustified=True)
            reason = facts.truth.justify(row)
            if reason is not None:
                self.violate(f"{where}: {row.name} {row.params} for {row.finding_key} is not "
                             f"justified by the world: {reason}", unjustified=True)

        # I3: budgets and the breaker.
        destructive = [r for r in facts.rows if r.name in DESTRUCTIVE]
        if len(destructive) > self.policy.max_per_pass:
            self.violate(f"{where}: {len(destructive)} destructive actions, max_per_pass = "
                         f"{self.policy.max_per_pass}")
        self.destructive_history.append((facts.started, len(destructive)))
        window = sum(n for t, n in self.destructive_history
                     if t >= facts.started - timedelta(hours=1))
        if window > self.policy.max_per_hour:
            self.violate(f"{where}: {window} destructive actions within an hour, max_per_hour "
                         f"= {self.policy.max_per_hour}")
        for result in report.checks:
            if result.status == "error":
                continue
            candidates = [
                f for f in result.findings
                if f.tracked.finding.action is not None
                and f.tracked.finding.action.name in self.policy.enabled
                and f.tracked.finding.action.name in DESTRUCTIVE
                and self.tally.get(f.tracked.finding.key, 0) >= self.policy.confirm_after
            ]
            subjects = facts.truth.subjects(result.check, result.target)
            trips = len(candidates) > self.policy.breaker_max or (
                subjects is not None and subjects >= self.policy.breaker_min_subjects
                and len(candidates) > self.policy.breaker_fraction * subjects)
            ran = [r for r in by_target.get((result.check, result.target), [])
                   if r.name in DESTRUCTIVE]
            if (trips or result.breaker) and ran:
                self.violate(f"{where}: {len(ran)} destructive action(s) for "
                             f"{result.check}/{result.target} with the breaker open "
                             f"({len(candidates)} confirmed plans, {subjects} subjects)")
            if trips or result.breaker:
                self.breaker_seen = True
            if trips and not result.breaker:
                self.violate(f"{where}: {len(candidates)} confirmed destructive plans for "
                             f"{result.check}/{result.target} ({subjects} subjects) should "
                             "open the breaker, the report says it did not")

    # -- convergence --------------------------------------------------------------------------

    @staticmethod
    def remediable(report: PassReport) -> list[str]:
        """Findings that still have a remediation this configuration could run."""
        return [f.tracked.finding.key for c in report.checks for f in c.findings
                if f.tracked.finding.action is not None and f.action_status != "disabled"]

    def converged(self, report: PassReport) -> bool:
        """A complete pass with nothing left to remediate."""
        return report.errors == 0 and not self.remediable(report)


def converge(driver: Driver, bound: int, *, quiet: int = 2, after: int = 2,
             world: Callable[[], object] = lambda: "",
             pending: Callable[[], list[str]] = list) -> str:
    """Fault-free passes until ``quiet`` in a row are converged; then ``after`` more stay so.

    One quiet pass is not enough: some conditions are only judged once watchdogd has seen
    them for a while (a reservation must be *observed* as old, not only be old), so a
    problem planted just before the faults stopped may surface a pass later. Returns
    ``"converged"`` or ``"breaker"`` (the breaker held: by design nothing converges then);
    a failure to converge or a flap after convergence is a violation. ``pending`` names
    what the world still holds that a remediation will deal with later by design (an
    orphan waiting out its quarantine): the world is not converged while it is non-empty.
    """
    referee = driver.referee
    held = False
    calm = 0
    for _ in range(bound):
        first = len(driver.recorder.calls)
        report = driver.run()
        held = held or any(c.breaker for c in report.checks)
        acted = any(c.action for c in driver.recorder.calls[first:])
        calm = calm + 1 if referee.converged(report) and not acted and not pending() else 0
        if calm >= quiet:
            break
    else:
        if not held:
            referee.violate(f"not converged after {bound} fault-free passes: "
                            f"{referee.remediable(driver.reports[-1])}; {world()}")
        STATS.add("breaker_held")
        return "breaker"
    STATS.add("converged")
    for _ in range(after):
        first = len(driver.recorder.calls)
        report = driver.run()
        moves = [c for c in driver.recorder.calls[first:] if c.action]
        if referee.remediable(report) or moves:
            referee.violate(f"flapping after convergence: {referee.remediable(report)}, "
                            f"actions {[(c.call, c.params) for c in moves]}")
    return "converged"


def convergence_bound(policy: RemediationConfig, destructive: int, passes_per_hour: int) -> int:
    """Passes a fault-free world may need: confirmation, then the budgets' pace, then slack."""
    per_pass = max(1, policy.max_per_pass)
    by_pass = math.ceil(destructive / per_pass)
    by_hour = math.ceil(destructive / max(1, policy.max_per_hour)) * (passes_per_hour + 1)
    return policy.confirm_after + max(by_pass, by_hour) + 6


class Driver:
    """Runs passes of a real :class:`Engine` on a world, faults armed, every pass refereed.

    ``truth`` builds the oracle's view at the start of each pass; ``mutations`` counts, per
    source name, the mutating requests a simulator has received so far; ``harms`` drains
    what the simulators' own watchers saw done to the world at the moment a mutating request
    arrived (the truth at the start of a pass cannot judge a change in its middle); ``settle`` lets
    the world finish what an action set off (a hub restarting after its pod was deleted)
    so that the next truth is not taken in the middle of it.
    """

    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime],
        only: list[str],
        truth: Callable[[], Truth],
        mutations: dict[str, Callable[[], int]],
        *,
        advance: Callable[[], object],
        settle: Callable[[], object] = lambda: None,
        harms: Callable[[], list[str]] = list,
        notifier: Any = None,
        state_url: str | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.only = only
        self.truth = truth
        self.mutations = mutations
        self.advance = advance
        self.settle = settle
        self.harms = harms
        self.recorder = Recorder()
        self.sources = RecordingSources(config, self.recorder)
        self.plain = FastSources(config)
        self.store = Store(state_url or config.state.resolved_url())
        self.engine = Engine(config, self.store, self.sources, notifier=notifier, clock=clock)
        self.plan = self.engine.plan(only)
        self.referee = Referee(config, self.plan)
        self.reports: list[PassReport] = []
        self._current: list[Any] = []
        self.recorder.before_first_action.append(self._end_of_collect)

    def close(self) -> None:
        self.sources.close()
        self.plain.close()
        self.store.close()

    def _end_of_collect(self) -> None:
        for fault in self._current:
            if fault.collect_only:
                fault.disarm()

    def truth_reads(self) -> dict[CallKey, Any]:
        """Every need of the plan, read once without faults (the reference for I1)."""
        reads: dict[CallKey, Any] = {}
        for _, target in self.plan:
            for need in target.needs:
                key = need_key(need)
                if key in reads:
                    continue
                try:
                    adapter = self.plain.adapter(need.source, need.target)
                    reads[key] = getattr(adapter, need.call)(**dict(need.params))
                except Exception:  # noqa: S112 - no reference: I1 is skipped for it
                    continue
        return reads

    def run(self, faults: Iterable[Any] = ()) -> PassReport:
        """One refereed pass with ``faults`` armed; the clock advances afterwards."""
        faults = list(faults)
        self.recorder.pass_no += 1
        truth = self.truth()
        reference = self.truth_reads()
        before = {name: count() for name, count in self.mutations.items()}
        last_id = last_row_id(self.store)
        started = self.clock()
        self._current = faults
        unstable = any(f.unstable for f in faults)
        try:
            for fault in faults:
                fault.arm()
                STATS.add("faults_injected")
            report = self.engine.run_pass(self.only)
        finally:
            for fault in reversed(faults):
                fault.disarm()
            self._current = []
        STATS.add("faults_fired", sum(1 for f in faults if f.fired()))
        STATS.add("passes")
        calls = self.recorder.of_pass(self.recorder.pass_no)
        facts = PassFacts(
            self.recorder.pass_no, started, report, calls, new_rows(self.store, last_id),
            truth, reference,
            unstable={c.key for c in calls} if unstable else set(),
            mutations={name: count() - before[name] for name, count in self.mutations.items()},
        )
        self.referee.judge(facts)
        for harm in self.harms():
            self.referee.violate(f"pass {self.recorder.pass_no}: harm done to the world: {harm}",
                                 unjustified=True)
        self.reports.append(report)
        self.settle()
        self.advance()
        return report


def new_rows(store: Store, after_id: int) -> list[ActionRecord]:
    """Audit rows written after ``after_id``, oldest first."""
    rows = store.actions(limit=10_000)
    return sorted((r for r in rows if r.id > after_id), key=lambda r: r.id)


def last_row_id(store: Store) -> int:
    rows = store.actions(limit=1)
    return rows[0].id if rows else 0

