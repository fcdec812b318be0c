"""``watchdogd demo``: the real engine against a simulated JupyterHub, explained as it goes.

A newcomer should see in a few seconds what watchdogd is for: a small deployment (12 users,
8 running servers) with one of each session problem planted in it, then a few passes of the
real :class:`~watchdogd.engine.Engine`, with remediation on, each printed as what was found
(kind, subject, why), what was done (action, result) and what was held back and why. At the
end a last detection pass, in dry-run, shows that the world converged: the fixable problems
are gone, the notify-only ones remain, each with the reason watchdogd leaves it to people.

Simulated time moves five minutes per pass (a :class:`~watchdogd.sim.world.SimClock` shared
by the simulators and the engine), so "a stop pending for 10 minutes" happens in a second.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import structlog

from watchdogd.sim.world import SimClock, World

__all__ = ["LEFT_TO_PEOPLE", "MINUTES_PER_PASS", "build_world", "run_demo"]

MINUTES_PER_PASS = 5
HEALTHY_USERS = 12
HEALTHY_RUNNING = 8
WIDTH = 100

#: Why watchdogd leaves a problem open, for the kinds it only reports (or fixes opt-in).
LEFT_TO_PEOPLE = {
    "stuck-stop": "restart-hub is opt-in (add it to remediation.enabled): only a hub restart "
                  "clears a stop that never finishes, and restarting a hub is an operator's "
                  "call",
    "invalid-username-label": "no automatic fix exists: rename the user, or move to "
                              "KubeSpawner 7's safe slug scheme",
}

_HELD = {
    "unconfirmed": "held back, not confirmed yet",
    "disabled": "held back, not enabled",
    "over-budget": "held back, budget spent",
    "breaker-open": "held back, breaker open",
    "dry-run": "dry run, not done",
}


def build_world(passes: int = 4) -> World:
    """The demo deployment: 12 users (8 running) and one of each sessions problem.

    Its clock starts ``passes`` pass intervals in the past, so that the last look at the
    world happens at about the real time (and ``--keep`` can hand over to real passes).
    """
    clock = SimClock(datetime.now(UTC) - timedelta(minutes=MINUTES_PER_PASS * passes))
    world = World(clock=clock).start()
    try:
        world.healthy(users=HEALTHY_USERS, running=HEALTHY_RUNNING)
        # The deployment still runs KubeSpawner 6.2 (its escape slug scheme), which is what
        # makes "_alice" a user whose pod can never be created.
        world.invalid_username("_alice", kubespawner_version="6.2.0")
        world.stale_session("niklaus")
        world.dead_session("radia", reason="Evicted")
        world.orphan_pod("tim")
        world.missing_route("guido")
        world.stale_route("bjarne")
        world.route_mismatch("larry")
        world.stuck_spawn("donald", minutes=30)
        world.stuck_stop("sophie")
    except BaseException:
        world.stop()
        raise
    return world


def run_demo(passes: int = 4, as_json: bool = False, keep: bool = False,
             out: TextIO | None = None) -> int:
    """Build the world, run ``passes`` passes with remediation on, explain; exit code."""
    from watchdogd import logs  # noqa: PLC0415

    stream = out or sys.stdout
    if passes < 1:
        print("watchdogd demo: --passes must be at least 1", file=sys.stderr)
        return 64
    # Quiet logs (warnings only, on stderr) while the demo speaks on stdout; the previous
    # logging setup comes back afterwards, so an embedding process keeps its own.
    saved = structlog.get_config()
    logs.configure(json_lines=False, level="WARNING")
    try:
        world = build_world(passes)
        try:
            return _Demo(world, stream, as_json).run(passes, keep)
        finally:
            world.stop()
    finally:
        structlog.configure(**saved)


class _Demo:
    """One run of the demo: the passes, what they did, and the explanation."""

    def __init__(self, world: World, out: TextIO, as_json: bool) -> None:
        self.world = world
        self.out = out
        self.as_json = as_json
        self.clock: Callable[[], datetime] = world.clock
        self.start = world.clock()
        #: finding key -> the action that was done for it (name, detail)
        self.done: dict[str, tuple[str, str]] = {}
        self.errors = 0

    def say(self, text: str = "", indent: int = 0) -> None:
        """Print a paragraph, wrapped."""
        if self.as_json:
            return
        if not text:
            print(file=self.out)
            return
        prefix = " " * indent
        print(textwrap.fill(text, WIDTH, initial_indent=prefix,
                            subsequent_indent=prefix + "  "), file=self.out)

    def run(self, passes: int, keep: bool) -> int:
        config = self.world.load_config()
        only = self.world.checks_in_play
        self.introduce(config.remediation.model_dump())
        engine = self.world.engine()
        for number in range(1, passes + 1):
            report = engine.run_pass(only=only).as_json()
            self.errors += report["summary"]["errors"]
            self.record(report)
            if self.as_json:
                print(json.dumps(report, default=str), file=self.out)
            else:
                self.show_pass(number, passes, report)
            self.advance()
        final = self.world.engine(dry_run=True).run_pass(only=only).as_json()
        self.errors += final["summary"]["errors"]
        if not self.as_json:
            self.summarize(passes, final)
        if keep:
            self.keep()
        return 2 if self.errors else 0

    def advance(self) -> None:
        clock = self.world.clock
        if isinstance(clock, SimClock):
            clock.advance(minutes=MINUTES_PER_PASS)

    def record(self, report: dict[str, Any]) -> None:
        for check in report["checks"]:
            for finding in check["findings"]:
                action = finding["action"]
                if action and action["status"] == "done":
                    self.done.setdefault(finding["key"], (action["name"], action["detail"] or ""))

    # -- the story ---------------------------------------------------------------------------

    def introduce(self, remediation: dict[str, Any]) -> None:
        world = self.world
        self.say("watchdogd demo: a small JupyterHub on Kubernetes, simulated on this machine")
        self.say("=" * 78)
        self.say("The world runs on free ports of 127.0.0.1: a Kubernetes API server "
                 f"({world.kube.url}), configurable-http-proxy's API ({world.chp.url}) and a "
                 f"JupyterHub REST API with its database ({world.hub.api_url}). watchdogd "
                 "talks to them exactly as it would to the real ones.")
        self.say()
        self.say(f"{HEALTHY_USERS} users, {HEALTHY_RUNNING} of them with a healthy server "
                 "(the hub database, the pod and the proxy route agree). Then one problem of "
                 "each kind the sessions check knows was planted, each for a user of its own:")
        for planted in world.planted:
            self.say(f"{planted.kind:<23} {planted.subject:<9} {planted.story}", indent=2)
        from watchdogd.checks import sessions  # noqa: PLC0415

        stuck_after = sessions.settings(self.world.load_config()).stuck_stop_after
        if stuck_after:
            minutes = int(stuck_after.total_seconds() // 60)
            first = minutes // MINUTES_PER_PASS + 1
            self.say(f"(A stop only counts as stuck once it has been pending for "
                     f"checks.sessions.stuck_stop_after = {minutes} minutes: watch for "
                     f"stuck-stop from pass {first} on.)")
        self.say()
        enabled = ", ".join(remediation["enabled"])
        confirm = remediation["confirm_after"]
        self.say(f"Remediation is ON: dry_run = false; confirm_after = {confirm} (a problem "
                 f"must be seen in {confirm} passes before anything is done about it); "
                 f"min_age = 0s; enabled actions: {enabled}. restart-hub stays off.")
        self.say(f"Simulated time: one pass every {MINUTES_PER_PASS} minutes.")

    def show_pass(self, number: int, passes: int, report: dict[str, Any]) -> None:
        minutes = int((self.clock() - self.start).total_seconds() // 60)
        self.say()
        self.say(f"--- pass {number} of {passes} (t+{minutes} min) " + "-" * 50)
        for check in report["checks"]:
            where = f"{check['check']}/{check['target']}"
            count = len(check["findings"])
            if check["status"] == "error":
                self.say(f"{where}: could not complete, so nothing was done: {check['error']}",
                         indent=2)
                continue
            self.say(f"{where}: {count} finding(s), {check['requests']} request(s) to the world",
                     indent=2)
            if check.get("breaker"):
                self.say(f"BREAKER OPEN, no destructive action taken: {check['breaker']}",
                         indent=4)
            for finding in check["findings"]:
                self.show_finding(finding)
            if check["resolved"]:
                gone = ", ".join(_short(key) for key in check["resolved"])
                self.say(f"gone since the previous pass (resolved): {gone}", indent=4)

    def show_finding(self, finding: dict[str, Any]) -> None:
        seen = finding["sightings"]
        self.say(f"{finding['kind']} {finding['subject']} [{finding['severity']}, seen "
                 f"{seen} time{'s' if seen != 1 else ''}]", indent=4)
        self.say(f"why:  {finding['message']}", indent=6)
        action = finding["action"]
        if action is None:
            self.say("plan: none; watchdogd only reports this one", indent=6)
            return
        status, detail = action["status"], action["detail"] or ""
        if status == "done":
            verdict = f"DONE: {_plain(detail)}"
        elif status in _HELD:
            verdict = f"{_HELD[status]}: {detail}"
        else:
            verdict = f"{status.upper()}: {detail}"
        self.say(f"plan: {action['name']} -> {verdict}", indent=6)

    def summarize(self, passes: int, final: dict[str, Any]) -> None:
        open_findings = {f["key"]: f for c in final["checks"] for f in c["findings"]}
        open_by_kind = {(f["kind"], f["subject"]): f for f in open_findings.values()}
        self.say()
        self.say(f"=== after {passes} pass(es) " + "=" * 60)
        self.say("A last detection pass (dry run, so it changes nothing) looks at the world "
                 "again:")
        fixed: list[str] = []
        left: list[str] = []
        pending: list[str] = []
        for planted in self.world.planted:
            key = f"sessions/{self.world.hub_name}/{planted.kind}/{planted.subject}"
            label = f"{planted.kind} {planted.subject}"
            if (planted.kind, planted.subject) not in open_by_kind:
                if key in self.done:
                    name, detail = self.done[key]
                    fixed.append(f"{label}: fixed by {name} ({_plain(detail)})")
                elif planted.kind in LEFT_TO_PEOPLE:
                    pending.append(f"{label}: not reported yet (it becomes a finding once it "
                                   "has lasted long enough; run more passes)")
                else:
                    pending.append(f"{label}: not seen any more")
                continue
            finding = open_by_kind[(planted.kind, planted.subject)]
            if planted.kind in LEFT_TO_PEOPLE:
                left.append(f"{label}: {LEFT_TO_PEOPLE[planted.kind]}")
            else:
                action = finding["action"] or {}
                pending.append(f"{label}: still open ({action.get('name')}: needs "
                               f"{self.world.remediation['confirm_after']} sightings before "
                               "acting; run more passes)")
        if fixed:
            self.say("Fixed, and gone:", indent=2)
            for line in fixed:
                self.say(line, indent=4)
        if left:
            self.say("Still open by design (watchdogd reports these and leaves the fix to "
                     "people):", indent=2)
            for line in left:
                self.say(line, indent=4)
        if pending:
            self.say("Not settled yet:", indent=2)
            for line in pending:
                self.say(line, indent=4)
        fixable = sum(1 for p in self.world.planted if p.kind not in LEFT_TO_PEOPLE)
        if len(fixed) == fixable and not pending:
            self.say(f"The world converged: {len(fixed)} of {fixable} fixable problems fixed "
                     f"through the Hub REST API and the Kubernetes API; {len(left)} left for "
                     "people, with notifications.")
        else:
            self.say(f"{len(fixed)} of {fixable} fixable problems fixed so far.")
        self.say("Every action is in the audit log (watchdogd actions), every finding in the "
                 "state store (watchdogd findings); with --keep the world stays up to try them.")

    def keep(self) -> None:
        clock = self.world.clock
        if isinstance(clock, SimClock):
            clock.run_free()
        path = self.world.config_path
        print(f"\nThe world keeps running. Try, in another shell:\n"
              f"  watchdogd check -c {path}\n"
              f"  watchdogd findings -c {path}\n"
              f"  watchdogd actions -c {path}\n"
              "Press Ctrl-C to stop it.", file=sys.stderr if self.as_json else self.out)
        done = threading.Event()
        previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, lambda *_: done.set())
        except ValueError:  # only the main thread may set handlers
            previous = None
        try:
            with contextlib.suppress(KeyboardInterrupt):
                done.wait()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _plain(detail: str) -> str:
    """The engine's "done once for this pass (X)" of a shared remedy, said plainly."""
    prefix = "done once for this pass ("
    if detail.startswith(prefix) and detail.endswith(")"):
        return f"the same run as above, shared by every finding it fixes: {detail[len(prefix):-1]}"
    return detail


def _short(key: str) -> str:
    """``sessions/main/stale-session/alice`` -> ``stale-session alice``."""
    parts = key.split("/", 3)
    return f"{parts[2]} {parts[3]}" if len(parts) == 4 else key
