"""One pass: collect, detect, track, decide, act, notify, record.

The engine owns the order of things and the safety rules; checks own what is
wrong, sources own how to talk to the world, the policy owns whether to act.
Read :meth:`Engine.run_pass` top to bottom: it is the design's diagram.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from watchdogd.checks import REGISTRY, CheckSpec
from watchdogd.config import CheckConfig, Config
from watchdogd.maintenance import window_silences
from watchdogd.model import (
    Action,
    ActionStatus,
    CheckTarget,
    Detection,
    Finding,
    ImplausibleData,
    Need,
    PreconditionFailed,
    Resolved,
    Severity,
    Silence,
    Snapshot,
    SourceError,
    Tracked,
)
from watchdogd.notify import Notifier
from watchdogd.policy import Budget, decide
from watchdogd.report import CheckResult, FindingResult, PassReport
from watchdogd.sources import Sources
from watchdogd.sources.base import counting, server_dates
from watchdogd.sources.bounded import pass_deadline
from watchdogd.store import LockHold, Store, StoreError
from watchdogd.text import safe_text, store_key
from watchdogd.times import format_duration, iso, utcnow

__all__ = ["Engine"]

log = structlog.get_logger("watchdogd.engine")

#: The finding kinds the engine itself tracks for a target that did not complete.
IMPLAUSIBLE = "view-implausible"
FAILING = "check-failing"

COLLECT_WORKERS = 8
#: the store's marks remember which maintenance windows were open (check name of the marks)
WINDOW_MARKS = "maintenance"
#: Objects a check may ask to read one by one in a pass before the view is implausible.
MAX_LOOKUPS = 50


class Engine:
    """Runs passes of the configured checks against the configured world."""

    def __init__(
        self,
        config: Config,
        store: Store,
        sources: Sources,
        *,
        notifier: Notifier | None = None,
        dry_run: bool | None = None,
        clock: Callable[[], datetime] = utcnow,
        registry: dict[str, CheckSpec] | None = None,
        acting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.store = store
        self.sources = sources
        self.notifier = notifier
        self.dry_run = config.remediation.dry_run if dry_run is None else dry_run
        self.clock = clock
        self.registry = REGISTRY if registry is None else registry
        #: (the configuration, the registry, their checks' settings): the objects are kept,
        #: not their ids, so a replaced configuration is never mistaken for a new one
        self._settings: tuple[object, object, dict[str, CheckConfig]] = (None, None, {})
        # Followers of a leader election detect (for metrics) but never act or notify.
        self.acting = acting
        self.listeners: list[Callable[[PassReport], None]] = []
        # Actions of this process whose result the store could not take: action id ->
        # finding key. They are settled as interrupted before the next pass does anything.
        self._unfinished: dict[int, str] = {}

    @property
    def settings(self) -> dict[str, CheckConfig]:
        """Each check's own validated settings: all a check ever sees of the configuration.

        Validated again only when the configuration or the registry is replaced (a reload).
        """
        config, registry, settings = self._settings
        if config is not self.config or registry is not self.registry:
            settings = {name: spec.settings(self.config.checks)
                        for name, spec in self.registry.items()}
            self._settings = (self.config, self.registry, settings)
        return settings

    # -- what to run -------------------------------------------------------------

    def plan(self, only: Iterable[str] | None = None,
             target: str | None = None) -> list[tuple[CheckSpec, CheckTarget]]:
        """The check targets a pass would run, after ``--only`` / ``--target``."""
        wanted = set(only) if only else None
        result = []
        for name, spec in self.registry.items():
            if wanted is not None and name not in wanted:
                continue
            if not self.settings[name].enabled and wanted is None:
                continue
            for check_target in spec.targets(self.settings[name], self.config.inventory):
                if target is None or check_target.name == target:
                    result.append((spec, check_target))
        return result

    # -- the pass ------------------------------------------------------------------

    def run_pass(self, only: Iterable[str] | None = None, target: str | None = None) -> PassReport:
        """One pass of the selected checks: the whole pipeline of DESIGN.md.

        Only one process acts on a state store at a time: the pass holds the store's
        lock from before the first read to after the last notice. A pass that cannot
        take it (another process is mid-pass), or a replica that is not the leader,
        detects and reports but writes nothing and acts on nothing.
        """
        # Every call of the pass, in any thread, ends by the pass timeout (bounded.py): no
        # collect thread or socket outlives its pass, however a peer trickles.
        with pass_deadline(self.config.daemon.pass_timeout.total_seconds()):
            if not self.acting():
                return self._run_pass(only, target, LockHold(False, reason=(
                    "this replica is not the leader; it detects and reports but does not "
                    "act")))
            with self.store.pass_lock() as hold:
                return self._run_pass(only, target, hold)

    def _run_pass(self, only: Iterable[str] | None, target: str | None,
                  hold: LockHold) -> PassReport:
        started = self.clock()
        pass_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        acting = hold.held
        if acting:
            self._settle_unfinished()
            if hold.fresh:
                self._recover()
        else:
            log.warning("not acting", reason=hold.reason)
        planned = self.plan(only, target)
        # The operator's silences, the open maintenance windows and the acknowledgements,
        # read once for the whole pass.
        controls = Controls(
            self.store.silences(started) + window_silences(self.config.maintenance, started),
            self.store.acks())
        observations, errors, need_requests, clocks = self._collect(planned)
        budget = Budget(
            per_pass=self.config.remediation.max_per_pass,
            per_hour=max(0, self.config.remediation.max_per_hour - self.store.actions_since(
                started - timedelta(hours=1))),
        )
        results = []
        for spec, check_target in planned:
            results.append(self._run_target(spec, check_target, observations, errors,
                                            need_requests, clocks, budget, pass_id, acting,
                                            controls))
        if acting:
            self._close_windows(started, controls)
        if self.notifier is not None and acting:
            self.notifier.deliver(self.store, self.clock())
        report = PassReport(started, self.clock(), self.dry_run, results, acting=acting,
                            not_acting_reason=None if acting else (
                                hold.reason or "this replica lost the lead during the pass"))
        for listener in self.listeners:
            listener(report)
        return report

    def _collect(
        self, planned: list[tuple[CheckSpec, CheckTarget]]
    ) -> tuple[dict[Need, Any], dict[Need, str], dict[Need, int], dict[Need, datetime]]:
        """Gather every distinct need of the pass concurrently.

        Two check targets asking for the same list share one fetch. A need that
        raises anything but SourceError is still recorded as failed: a bug in a
        source must not turn into "no pods".
        """
        # Needs are fetched once per (source, target, call, params): the key is only
        # the name a check gives the observation in its snapshot.
        wanted = list(dict.fromkeys(need for _, t in planned for need in t.needs))
        fetches: dict[tuple[Any, ...], Need] = {}
        for need in wanted:
            fetches.setdefault(_fetch_id(need), need)
        needs = list(fetches.values())
        observations: dict[Need, Any] = {}
        errors: dict[Need, str] = {}
        requests: dict[Need, int] = {}
        clocks: dict[Need, datetime] = {}
        if not needs:
            return observations, errors, requests, clocks

        def fetch(need: Need) -> tuple[Any, int, datetime | None]:
            with counting() as counter, server_dates() as dates:
                adapter = self.sources.adapter(need.source, need.target)
                value = getattr(adapter, need.call)(**dict(need.params))
            return value, counter[0], dates[0] if dates else None

        timeout = self.config.daemon.pass_timeout.total_seconds()
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(COLLECT_WORKERS, len(needs)), thread_name_prefix="collect")
        try:
            futures = {
                pool.submit(contextvars.copy_context().run, fetch, need): need for need in needs
            }
            done, not_done = concurrent.futures.wait(futures, timeout=timeout)
            for future in not_done:
                need = futures[future]
                errors[need] = f"{need.source} {need.target}: no answer within the pass timeout"
            for future in done:
                need = futures[future]
                try:
                    observations[need], requests[need], date = future.result()
                    if date is not None:
                        clocks[need] = date
                except SourceError as exc:
                    errors[need] = str(exc)
                    log.warning("source error", source=need.source, target=need.target,
                                need=need.key, error=str(exc))
                except Exception as exc:  # a bug in an adapter
                    errors[need] = f"{need.source} {need.target}: {type(exc).__name__}: {exc}"
                    log.error("source failed unexpectedly", source=need.source,
                              target=need.target, need=need.key,
                              error=errors[need], traceback=traceback.format_exc())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for need in wanted:  # the same observation under every key that asked for it
            first = fetches[_fetch_id(need)]
            if first in observations:
                observations[need] = observations[first]
                requests[need] = requests.get(first, 0)
                if first in clocks:
                    clocks[need] = clocks[first]
            elif first in errors:
                errors[need] = errors[first]
        return observations, errors, requests, clocks

    def _run_target(
        self,
        spec: CheckSpec,
        check_target: CheckTarget,
        observations: dict[Need, Any],
        errors: dict[Need, str],
        need_requests: dict[Need, int],
        clocks: dict[Need, datetime],
        budget: Budget,
        pass_id: str,
        acting: bool,
        controls: Controls,
    ) -> CheckResult:
        clock = time.monotonic()
        started = self.clock()
        result = CheckResult(spec.name, check_target.name)
        result.requests = sum(need_requests.get(n, 0) for n in check_target.needs)
        snapshot = Snapshot(
            check=spec.name, target=check_target.name,
            observations={n.key: observations[n] for n in check_target.needs
                          if n in observations},
            errors={n.key: errors[n] for n in check_target.needs if n in errors},
            settings=check_target.settings,
            marks=self.store.marks(spec.name, check_target.name),
            server_now={n.key: clocks[n] for n in check_target.needs if n in clocks},
            optional=check_target.optional,
        )
        implausible: ImplausibleData | None = None
        try:
            if not snapshot.complete:
                # The first rule: incomplete data never causes an action, and it
                # proves nothing about which findings went away.
                raise ImplausibleData("; ".join(sorted(set(snapshot.errors.values()))))
            detection = spec.detect(snapshot, started)
            if detection.lookups:
                detection = self._detect_with_lookups(spec, snapshot, detection, started,
                                                      result)
        except ImplausibleData as exc:
            result.status, result.error = "error", str(exc)
            implausible = exc if exc.notify else None
        except Exception as exc:
            result.status = "error"
            result.error = f"check {spec.name} failed: {type(exc).__name__}: {exc}"
            log.error("check failed", check=spec.name, target=check_target.name,
                      error=result.error, traceback=traceback.format_exc())
        if result.status == "error":
            log.warning("check target not completed", check=spec.name,
                        target=check_target.name, error=result.error)
            if implausible is not None:
                self._track_implausible(spec, check_target, implausible, result, acting, started,
                                        controls)
            else:
                self._track_failing(spec, check_target, errors, result, acting, started,
                                    controls)
        else:
            self._handle(spec, check_target, detection, result, budget, pass_id, acting,
                         started, controls)
        result.duration_s = time.monotonic() - clock
        if acting:
            self.store.record_pass(pass_id + "-" + spec.name + "-" + check_target.name,
                                   spec.name, check_target.name, started, self.clock(),
                                   result.status, result.error)
        return result

    def _close_windows(self, now: datetime, controls: Controls) -> None:
        """Remember which maintenance windows are open; summarise each one that closed.

        A window's notices were muted while it was open: when it closes, one notice lists
        what is open in its scope now, so nothing it muted is lost. The memory is a mark in
        the store, so a window that closes between two CronJob runs is summarised too.
        """
        open_now = {s.window for s in controls.silences if s.window is not None}
        for name, window in self.config.maintenance.items():
            was_open = bool(self.store.marks(WINDOW_MARKS, name))
            if name in open_now and not was_open:
                self.store.set_marks(WINDOW_MARKS, name, {"open"}, now)
                log.info("maintenance window opened", window=name)
            elif name not in open_now and was_open:
                self.store.set_marks(WINDOW_MARKS, name, set(), now)
                log.info("maintenance window closed", window=name)
                if self.notifier is not None:
                    rows = [r for r in self.store.findings(status="open")
                            if (not window.checks or r["check"] in window.checks)
                            and (not window.targets or r["target"] in window.targets)]
                    self.store.enqueue(self.notifier.window_summary(name, rows), now)

    def _detect_with_lookups(self, spec: CheckSpec, snapshot: Snapshot, detection: Detection,
                             now: datetime, result: CheckResult) -> Detection:
        """Read the objects a check asked for by name, then detect again with them.

        A pod that the hub's spawner state places outside the listed namespace or
        selector is not absent because the list lacks it: it is looked up. A lookup
        that fails leaves the target in ``error``, like any failed source.
        """
        needs = [n for n in detection.lookups if n.key not in snapshot.observations]
        if len(needs) > MAX_LOOKUPS:
            raise ImplausibleData(
                f"{len(needs)} objects would have to be looked up one by one (at most "
                f"{MAX_LOOKUPS}): the listed scope misses most of them", notify=True)
        for need in needs:
            try:
                with counting() as counter:
                    snapshot.observations[need.key] = self._read(need)
            except SourceError as exc:
                raise ImplausibleData(f"lookup {need.key}: {exc}") from None
            finally:
                result.requests += counter[0]
        again = spec.detect(snapshot, now)
        if any(n.key not in snapshot.observations for n in again.lookups):
            raise ImplausibleData(f"check {spec.name} asked for lookups twice")
        return again

    def _read(self, need: Need) -> Any:
        """One targeted read (a lookup or a re-read before an action)."""
        adapter = self.sources.adapter(need.source, need.target)
        return getattr(adapter, need.call)(**dict(need.params))

    def _track_implausible(self, spec: CheckSpec, check_target: CheckTarget,
                           exc: ImplausibleData, result: CheckResult, acting: bool,
                           now: datetime, controls: Controls) -> None:
        """Track one ``view-implausible`` finding so a view that hides a hub pages someone.

        Nothing else of the target is resolved or acted on: the pass saw too little.
        """
        finding = Finding(spec.name, check_target.name, IMPLAUSIBLE, check_target.name,
                          Severity.CRITICAL, str(exc), {"error": str(exc)})
        policy = self.config.remediation
        if not acting:
            return
        silence = controls.silence_for(finding)
        tracked, _ = self.store.track(spec.name, check_target.name, [finding], now,
                                      announce_after=policy.confirm_after,
                                      repeat_after=self.config.notify.repeat_after,
                                      resolve=False, muted={finding.key} if silence else (),
                                      acked=controls.acks)
        result.findings.append(FindingResult(tracked[0], silence=silence,
                                             acked=store_key(finding.key) in controls.acks))
        if self.notifier is not None:
            self.store.enqueue(self.notifier.notices(result, [], None), now)

    def _track_failing(self, spec: CheckSpec, check_target: CheckTarget,
                       errors: dict[Need, str], result: CheckResult, acting: bool,
                       now: datetime, controls: Controls) -> None:
        """Track ``check-failing`` once the target has been in error long enough.

        Silence must never mean "the hub is down". The passes come from the store (every
        acting pass records one), so one ``watchdogd check`` per interval counts the
        processes before it. ``notify.error_after_passes`` failed passes in a row *and*
        ``notify.error_after`` since the first: a blip of one pass never pages. Never
        acted on; resolved by the next pass that completes.
        """
        notify = self.config.notify
        before, first = self.store.failing_since(spec.name, check_target.name)
        passes, since = before + 1, first if first is not None else now
        if passes < notify.error_after_passes or now - since < notify.error_after:
            return
        failed = [n for n in check_target.needs if n in errors]
        if failed:
            what = "could not read " + ", ".join(
                f"{n.key} ({n.source} {n.target})" for n in failed)
        elif result.error and result.error.startswith(f"check {spec.name} failed"):
            what = "the check itself failed"
        else:
            what = "what it read could not be trusted"
        error = safe_text(result.error or "", 500)
        finding = Finding(
            spec.name, check_target.name, FAILING, check_target.name, spec.failing_severity,
            f"{spec.name} of {check_target.name} has not completed in {passes} passes "
            f"since {since:%Y-%m-%d %H:%M:%S} UTC ({format_duration((now - since).total_seconds())}"
            f"): it {what}; nothing of it is checked or repaired meanwhile. Last error: {error}",
            {"failed": [{"need": n.key, "source": n.source, "target": n.target}
                        for n in failed],
             "error": error, "passes": passes, "since": iso(since)})
        silence = controls.silence_for(finding)
        # The threshold is the confirmation: announced at once, reminded after repeat_after.
        tracked, _ = self.store.track(spec.name, check_target.name, [finding], now,
                                      announce_after=1, repeat_after=notify.repeat_after,
                                      resolve=False, write=acting,
                                      muted={finding.key} if silence else (),
                                      acked=controls.acks)
        result.findings.append(FindingResult(tracked[0], silence=silence,
                                             acked=store_key(finding.key) in controls.acks))
        if self.notifier is not None and acting:
            self.store.enqueue(self.notifier.notices(result, [], None), now)

    def _handle(self, spec: CheckSpec, check_target: CheckTarget, detection: Detection,
                result: CheckResult, budget: Budget, pass_id: str, acting: bool,
                now: datetime, controls: Controls) -> None:
        policy = self.config.remediation
        findings = _unique(detection.findings, spec.name, check_target.name)
        subjects = detection.subjects
        # Silenced findings are tracked and reported like any other; they are not notified,
        # and acted on only where their silence allows it.
        silenced = {f.key: s for f in findings if (s := controls.silence_for(f)) is not None}
        tracked, resolved = self.store.track(
            spec.name, check_target.name, findings, now,
            announce_after=policy.confirm_after, repeat_after=self.config.notify.repeat_after,
            resolve=not detection.partial, write=acting, muted=silenced.keys(),
            acked=controls.acks, resolve_kinds=(FAILING, IMPLAUSIBLE))
        result.status = "findings" if findings else "ok"
        result.resolved = [r.key for r in resolved]
        done_before = self.store.done_actions_by_finding(now - policy.repeat_window)
        repeats = {t.finding.key: done_before.get(store_key(t.finding.key), 0) for t in tracked}
        spaced = [t.finding.key for t in tracked
                  if t.finding.action is not None and t.finding.action.min_interval]
        last_done = self.store.last_done_by_finding(spaced) if spaced else {}
        decisions, breaker = decide(tracked, policy=policy, dry_run=self.dry_run,
                                    subjects=subjects, budget=budget, now=now, repeats=repeats,
                                    acting=acting, last_done=last_done,
                                    exclusions=self.config.exclusions,
                                    silenced={
                                        key: s.describe() for key, s in silenced.items()
                                        if not s.allow_actions})
        marks = set(detection.marks)
        previous_marks = self.store.marks(spec.name, check_target.name)
        for held in decisions:
            if held.status is ActionStatus.HELD:
                # One critical notice when a subject is first held, not one a pass.
                mark = f"held:{held.tracked.finding.key}"
                marks.add(mark)
                held.notify = mark not in previous_marks
        if acting:
            self.store.set_marks(spec.name, check_target.name, marks, now)
            if detection.records is not None and not detection.partial:
                # Only here: the snapshot was complete and detect() judged all of it, so a
                # claim missing from this map is really gone, not unseen.
                self.store.record_disks(spec.name, check_target.name, detection.records, now)
        result.breaker = breaker
        by_key = {d.tracked.finding.key: d for d in decisions}
        done: dict[tuple[Any, ...], str] = {}
        acted: list[str] = []
        for item in tracked:
            decision = by_key.get(item.finding.key)
            entry = FindingResult(item, decision, silence=silenced.get(item.finding.key),
                                  acked=store_key(item.finding.key) in controls.acks)
            if decision is not None:
                entry.action_status, entry.action_detail = decision.status, decision.detail
                entry.notify_held = decision.notify
                if decision.status is ActionStatus.PLANNED:
                    with counting() as counter:
                        status, detail, entry.shared = self._act(spec, item, pass_id, done)
                    result.requests += counter[0]
                    entry.action_status, entry.action_detail = status, detail
                    if status is ActionStatus.DONE:
                        acted.append(item.finding.key)
            result.findings.append(entry)
        # After an action its finding proves itself again from scratch: a user who
        # restarted is not stopped again on the first sighting of a new problem.
        if acting:
            self.store.reset_sightings(acted, now)
            # An acknowledgement lasts until its finding resolves or escalates past it.
            ended = [r.key for r in resolved] + [
                store_key(t.finding.key) for t in tracked if t.event == "escalated"]
            if any(key in controls.acks for key in ended):
                self.store.clear_acks(key for key in ended if key in controls.acks)
        if self.notifier is not None and acting:
            audible = [r for r in resolved if controls.silence_for(r) is None]
            self.store.enqueue(self.notifier.notices(result, audible, breaker), now)

    def _act(self, spec: CheckSpec, item: Tracked, pass_id: str,
             done: dict[tuple[Any, ...], str]) -> tuple[ActionStatus, str, bool]:
        """Verify, then run one action with its intent and result in the audit log."""
        finding = item.finding
        action = finding.action
        assert action is not None
        if not self.acting():
            # The lease was lost during this pass: another replica may act now.
            return ActionStatus.SKIPPED, "not done: this replica is no longer the leader", False
        if not self.store.lock_held():
            # The lock went with its database session: another process may be acting.
            return ActionStatus.SKIPPED, "not done: the state store's lock was lost", False
        identity = _identity(action)
        if identity in done:
            # Several findings can share one remedy (one route sync for a hub).
            return ActionStatus.DONE, f"done once for this pass ({done[identity]})", True
        action_id = self.store.begin_action(pass_id, finding, action, self.clock())
        log.info("action started", action=action.name, target=action.target,
                 finding=finding.key, params=dict(action.params))
        try:
            self._verify(spec, item)
            adapter = self.sources.adapter(action.source, action.target)
            detail = str(getattr(adapter, action.call)(**dict(action.params)))
            status = ActionStatus.DONE
            done[identity] = detail
        except PreconditionFailed as exc:
            status, detail = ActionStatus.SKIPPED, f"not done: {exc}"
        except SourceError as exc:
            status, detail = ActionStatus.FAILED, str(exc)
        except Exception as exc:
            status, detail = ActionStatus.FAILED, f"{type(exc).__name__}: {exc}"
            log.error("action crashed", action=action.name, traceback=traceback.format_exc())
        try:
            self.store.finish_action(action_id, status.value, detail, self.clock())
        except StoreError:
            # The action may have changed the world and the store did not take the result:
            # remember it, so that the next pass settles it before anything else is done.
            self._unfinished[action_id] = finding.key
            raise
        log.info("action finished", action=action.name, target=action.target,
                 finding=finding.key, status=status.value, detail=detail)
        return status, detail, False

    def _verify(self, spec: CheckSpec, item: Tracked) -> None:
        """Re-read by name what the finding rests on; raise PreconditionFailed if it changed.

        The pass's lists are a picture taken moments or minutes ago, through whatever
        namespace, selector and context the configuration gives. Right before changing
        the world, the objects themselves are read again and the check judges them.
        """
        action = item.finding.action
        assert action is not None
        if not action.verify:
            return
        if spec.verify is None:
            raise PreconditionFailed(f"check {spec.name} cannot judge its re-reads")
        reads: dict[str, Any] = {}
        for need in action.verify:
            try:
                reads[need.key] = self._read(need)
            except SourceError as exc:
                raise PreconditionFailed(f"could not re-read {need.key}: {exc}") from None
        reason = spec.verify(item.finding, reads, item.first_seen)
        if reason:
            raise PreconditionFailed(reason)

    def _settle_unfinished(self) -> None:
        """Record actions whose result a store failure swallowed as ``interrupted``.

        A long-running daemon does not restart after a store failure in the middle of an
        action, so :meth:`recover` never sees that intent row: without this it would stay
        ``started`` (an action without a result) and its finding would go on counting the
        sightings from before, so it could be retried without a fresh confirmation.
        """
        if not self._unfinished:
            return
        now = self.clock()
        for action_id, key in list(self._unfinished.items()):
            self.store.finish_action(action_id, "interrupted",
                                     "the state store failed before the result was written; "
                                     "the world is checked again before any retry", now)
            log.warning("interrupted action settled", action_id=action_id, finding=key)
        self.store.reset_sightings(self._unfinished.values())
        self._unfinished.clear()

    # -- start-up -------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Deal with actions a crash interrupted between intent and result.

        We cannot know whether such an action reached the world, so it is marked
        ``interrupted`` and its finding must be confirmed again from fresh
        observations before anything is tried again. Only the holder of the store's
        lock may judge a ``started`` row: another process's may be an action in
        flight. Every pass that takes the lock first does this itself.
        """
        with self.store.pass_lock() as hold:
            if not hold.fresh:
                return []
            return self._recover()

    def _recover(self) -> list[str]:
        interrupted = self.store.interrupted_actions()
        now = self.clock()
        for record in interrupted:
            self.store.finish_action(record.id, "interrupted",
                                     "watchdogd stopped between intent and result; "
                                     "the world is checked again before any retry", now)
            log.warning("interrupted action found", action=record.name, target=record.target,
                        finding=record.finding_key, started_at=iso(record.started_at))
        self.store.reset_sightings(r.finding_key for r in interrupted)
        return [r.finding_key for r in interrupted]


@dataclass(frozen=True)
class Controls:
    """What operators said for this pass: silences in force, acknowledged findings."""

    silences: list[Silence]
    #: stored finding key -> the severity acknowledged
    acks: dict[str, int]

    def silence_for(self, finding: Finding | Resolved) -> Silence | None:
        """The first silence in force that covers this finding, if any."""
        return next((s for s in self.silences if s.matches(
            finding.check, finding.target, finding.kind, finding.subject)), None)


def _fetch_id(need: Need) -> tuple[Any, ...]:
    return (need.source, need.target, need.call, need.params)


def _unique(findings: list[Finding], check: str, target: str) -> list[Finding]:
    """One finding per key: the first wins, the others wait for the next pass.

    Two findings with one key (two orphan pods of one user) would be one row in
    the store; acting on the second before the first is resolved gains nothing.
    """
    seen: dict[str, Finding] = {}
    for finding in findings:
        if finding.key in seen:
            log.info("duplicate finding key; handled next pass", check=check, target=target,
                     key=finding.key)
            continue
        seen[finding.key] = finding
    return list(seen.values())


def _identity(action: Action) -> tuple[Any, ...]:
    return (action.name, action.source, action.target, action.call,
            tuple(sorted((k, repr(v)) for k, v in action.params.items())))

