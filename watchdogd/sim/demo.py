"""``watchdogd demo``: the real engine against a simulated deployment, explained as it goes.

A newcomer should see in a few seconds what watchdogd is for: a small deployment (12 users,
8 running servers on a Kubernetes cluster with an OpenStack cloud under it) with one problem
of each kind every check knows planted in it, then a few passes of the real
:class:`~watchdogd.engine.Engine`, with remediation on, each printed check by check as what
was found (kind, subject, why), what was done (action, result) and what was held back and
why. At the end a last detection pass, in dry-run, shows that the world converged: per
planted problem, fixed (gone, or for an orphaned volume quarantined), left to people (the
kinds watchdogd only reports, each with the reason), or not settled yet.

The world is a :class:`~watchdogd.sim.world.World` (Kubernetes, the proxy and JupyterHub)
with two parts: :class:`~watchdogd.sim.parts.CloudPart` (Keystone and Cinder: the
``volumes`` and ``orphans`` checks) and :class:`~watchdogd.sim.parts.ClusterPart` (nodes,
failed pods, namespaces, TLS secrets and an HTTPS endpoint: the ``nodes`` and ``certs``
checks). Simulated time moves five minutes per pass (a
:class:`~watchdogd.sim.world.SimClock` shared by the simulators and the engine), so "a stop
pending for 10 minutes" happens in a second. The gates that hold actions back (confirmation,
``stuck_after``, ``failed_pod_min_age``, ``quarantine_days``) are set so that everything a
demo can fix is fixed within the default four passes, and the output says which gate holds
what until when.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from watchdogd.diskmap import map_table
from watchdogd.sim.parts import CloudPart, ClusterPart, CullerPart, NubladoPart
from watchdogd.sim.seed import DEMO_USERS
from watchdogd.sim.world import SimClock, World

if TYPE_CHECKING:
    from watchdogd.config import Config

__all__ = [
    "CHECKS",
    "FAILED_POD_MINUTES",
    "LEFT_TO_PEOPLE",
    "MINUTES_PER_PASS",
    "Demo",
    "DemoWorld",
    "Outcome",
    "Problem",
    "build_world",
    "run_demo",
]

MINUTES_PER_PASS = 5
HEALTHY_USERS = 12
HEALTHY_RUNNING = 8
#: the healthy labs of the Nublado hub that runs beside the KubeSpawner one
NUBLADO_HEALTHY = ("vera", "rubin", "annie")
WIDTH = 100
#: The demo's ``checks.nodes.failed_pod_min_age`` (1 hour by default, time to read the logs)
#: and how long the planted failed pod has been failed at the first pass: it becomes
#: deletable in pass 3, so the gate is seen holding the delete back, then letting it through.
FAILED_POD_MIN_AGE_MINUTES = 10
FAILED_POD_MINUTES = 3

#: the culler the Nublado hub is said to have, and does not list (culler-missing)
DEMO_CULLER = "jupyterhub-idle-culler"

#: whose stop never finishes (left to people; repair-session is shown refused on her)
STUCK_STOP_USER = "sophie"

#: The checks in the order the demo tells about them, and what each looks at.
CHECKS = {
    "sessions": "does the hub's database agree with the pods and the proxy's routes?",
    "culler": "is the idle culler stopping idle servers? (report only)",
    "labs": "on the Nublado hub: does the lab controller's memory agree with the hub and "
            "Kubernetes?",
    "probes": "does the hub answer its users, through the proxy, while its pod runs?",
    "volumes": "Cinder volumes stuck half way, dangling attachments, expiring credentials",
    "orphans": "volumes no PV uses, released PVs, claims of users who left",
    "quotas": "the project's Cinder and Nova quotas: what runs out first, before a create fails",
    "certs": "certificates wherever they live (TLS secrets, served endpoints); report only",
    "nodes": "node health and disk, failed pods, misplaced core pods, stuck namespaces",
}

#: Why watchdogd leaves a problem open, for the kinds it only reports (or fixes opt-in).
LEFT_TO_PEOPLE = {
    "culler-overdue": "report only: stopping idle servers is the culler's job; find out why it "
                      "does not (its log, a token without delete:servers, a dead loop)",
    "hub-unresponsive": "restart-hub is opt-in (add it to remediation.enabled; then at most "
                        "once an hour): the message says what to look at first, the hub's "
                        "log and its database",
    "check-failing": "report only, never acted on: nothing of that target is checked or "
                     "repaired until its source answers again; the message names the source "
                     "and its last error",
    "stuck-stop": "restart-hub is opt-in (add it to remediation.enabled): only a hub restart "
                  "clears a stop that never finishes, and restarting a hub is an operator's "
                  "call",
    "invalid-username-label": "no automatic fix exists: rename the user, or move to "
                              "KubeSpawner 7's safe slug scheme",
    "volume-attach-failed": "report only: the volume is attached to another node, usually a "
                            "dead one; detach it there (nova) and Kubernetes retries the attach",
    "credential-expiring": "report only: create a new application credential and replace its "
                           "secret wherever it is used; credentials are an operator's to issue",
    "released-pv": "report only: deleting the PV and its volume, or binding it again, decides "
                   "about someone's data",
    "foreign-volume": "report only, never quarantined or deleted: another cluster on the "
                      "same cloud made it; add that cluster to clouds.X.clusters if watchdogd "
                      "should judge it",
    "culler-missing": "report only: the hub is said to have a culler (culler_service) and "
                      "lists none; add the culler service to the hub (z2jh: cull.enabled)",
    "pvc-stuck-terminating": "report only: the claim goes once the pods that mount it stop; "
                             "stopping a user's pod is the user's or an operator's call",
    "quota-near": "report only: raising a quota is the cloud operators' call; free unused "
                  "volumes or ask them for more before new users' volumes fail",
    "quota-exhausted": "report only: raising a quota is the cloud operators' call; until it "
                       "is raised or something is freed, every create fails",
    "node-pressure": "report only: the kubelet is already evicting pods to relieve the node; "
                     "free disk or memory there",
    "node-not-ready": "report only: a node that stopped working needs a person (or the "
                      "autoscaler) to repair, reboot or replace it",
    "node-shelved": "report only (info): shelved on purpose by the runbook's soft scaling; "
                    "unshelve its server and uncordon it when the capacity is needed",
    "image-cache-pressure": "report only: prune images (crictl rmi --prune) or grow the disk "
                            "before the next upgrade pulls a new image",
    "core-pod-misplaced": "report only: moving the hub or the proxy interrupts every user; "
                          "delete the pod at a quiet moment and it is placed on a core node",
    "namespace-stuck-terminating": "report only: forcing finalizers off can leak what they "
                                   "protect (here a claim's volume); see what holds it first",
    "cert-expiring": "the certs check only reports: renewing a certificate is an operator's "
                     "job (or cert-manager's, once it works again)",
    "cert-hostname-mismatch": "the certs check only reports: issue a certificate whose "
                              "subjectAltNames cover the name (or address) clients use",
    "cert-unreadable": "the certs check only reports: replace the broken secret with a valid "
                       "certificate",
    "controller-lost-lab": "report only: the hub stops the server at its next poll of the lab "
                           "controller, which no longer knows the lab (this simulated hub does "
                           "not poll)",
    "lab-stuck": "report only: an operation is in progress in the controller (a DELETE would "
                 "be refused with 409); it finishes, or restarting the controller clears it",
    "lab-namespace-orphan": "report only: the controller's next reconcile adopts a complete "
                            "lab namespace or deletes an incomplete one; watchdogd never "
                            "deletes namespaces",
}

#: Actions after which their problem stays reported, and why (a format string).
STAYS_AFTER = {
    "quarantine": "quarantined ({detail}); it stays reported, and the volume is deleted only "
                  "after checks.orphans.quarantine_days = {quarantine_days} days, by "
                  "delete-orphan-volume, which the demo leaves off (deleting data is an "
                  "operator's call)",
    "quarantine-extra-pvc": "marked ({detail}); it stays reported, and delete-extra-pvc "
                            "deletes the claim only after checks.orphans.quarantine_days = "
                            "{quarantine_days} days on the API server's clock and on "
                            "watchdogd's, while no pod mounts it, its PV switched to Retain "
                            "first so the disk survives (watchdogd undo recreates the claim)",
}

_HELD = {
    "unconfirmed": "held back, not confirmed yet",
    "disabled": "held back, not enabled",
    "over-budget": "held back, budget spent",
    "breaker-open": "held back, breaker open",
    "dry-run": "dry run, not done",
}


@dataclass(frozen=True)
class Problem:
    """One problem planted in the demo world, and the check that should find it."""

    check: str
    kind: str
    subject: str
    story: str  # what was done to the world, in words

    @property
    def label(self) -> str:
        return f"{self.kind} {self.subject}"


@dataclass(frozen=True)
class Outcome:
    """What became of one planted problem: ``fixed``, ``left to people`` or ``pending``."""

    problem: Problem
    verdict: str
    reason: str


class DemoWorld(World):
    """The demo's world: a :class:`World` that remembers every planted problem of every
    check (sessions problems live in :attr:`World.planted`, those of the parts here)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.problems: list[Problem] = []

    def plant(self, check: str, kind: str, subject: str, story: str) -> str:
        """Record a problem an injector planted; returns its subject."""
        self.problems.append(Problem(check, kind, subject, story))
        return subject

    @property
    def cloud(self) -> CloudPart:
        """The OpenStack part."""
        part = self.parts["openstack"]
        assert isinstance(part, CloudPart)
        return part

    @property
    def nublado(self) -> NubladoPart:
        """The Nublado hub beside the KubeSpawner one, with its lab controller."""
        part = self.parts["nublado"]
        assert isinstance(part, NubladoPart)
        return part

    @property
    def cluster(self) -> ClusterPart:
        """The nodes, pods, namespaces and certificates part."""
        part = self.parts["cluster"]
        assert isinstance(part, ClusterPart)
        return part

    def config_data(self) -> dict[str, Any]:
        """The world's configuration, and the Nublado hub said to have an idle culler."""
        data = super().config_data()
        hub = data["hubs"].get(NubladoPart().hub_name)
        if hub is not None:
            hub["culler_service"] = DEMO_CULLER
        return data

    def all_problems(self) -> list[Problem]:
        """Every planted problem, grouped by check in the order of :data:`CHECKS`."""
        every = [Problem("sessions", p.kind, p.subject, p.story) for p in self.planted]
        every += self.problems
        order = {name: i for i, name in enumerate(CHECKS)}
        return sorted(every, key=lambda p: order.get(p.check, len(order)))


def build_world(passes: int = 4) -> DemoWorld:
    """The demo deployment: 12 users (8 running), a cloud and a cluster under them, and one
    problem of each kind every check knows.

    Its clock starts ``passes`` pass intervals in the past, so that the last look at the
    world happens at about the real time (and ``--keep`` can hand over to real passes).
    """
    clock = SimClock(datetime.now(UTC) - timedelta(minutes=MINUTES_PER_PASS * passes))
    cloud = CloudPart()
    cluster = ClusterPart(nodes=("node-1", "node-2", "node-3", "node-4"), checks={"nodes": {
        "failed_pod_min_age": f"{FAILED_POD_MIN_AGE_MINUTES}m"}})
    # A spawn is judged stuck on watchdogd's own sightings as well as the hub's clock: the
    # demo's 5 minutes (15 by default) let the planted one be seen for long enough.
    world = DemoWorld(clock=clock, parts=[cloud, cluster, CullerPart(), NubladoPart()],
                      probes=True,
                      sessions={"stuck_spawn_after": f"{MINUTES_PER_PASS}m"})
    world.start()
    try:
        _plant_sessions(world)
        _plant_culler(world)
        _plant_cloud(world)
        _plant_cluster(world)
        _plant_nublado(world)
    except BaseException:
        world.stop()
        raise
    return world


def _plant_sessions(world: DemoWorld) -> None:
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
    world.stuck_stop(STUCK_STOP_USER)
    # An ingress in front of the proxy gives up on the hub's pages (504), while the hub's
    # API, which watchdogd reads inside the cluster, still answers.
    world.chp.public.fail(504, path="^/hub/")
    world.plant("probes", "hub-unresponsive", world.hub_name,
                "the ingress in front of the proxy answers 504 Gateway Timeout for the hub's "
                "pages while the hub pod runs")


def _plant_culler(world: DemoWorld) -> None:
    part = world.parts["culler"]
    assert isinstance(part, CullerPart)
    users, idle = ("hedy", "alonzo", "robin"), (3, 5, 9)
    world.plant("culler", "culler-overdue",
                part.idle_servers(users, [timedelta(hours=h) for h in idle]),
                f"servers of {', '.join(users)}, idle for {', '.join(map(str, idle))} hours: "
                "the culler (jupyterhub-idle-culler, --timeout=3600) runs, but its token "
                "may not delete servers")


def _plant_cloud(world: DemoWorld) -> None:
    """CloudPart's seed_cloud already planted the stuck volume, the dangling attachment and
    the orphans when the part started; record them, and add what it does not plant."""
    cloud = world.cloud
    injected = cloud.injected
    first, second = DEMO_USERS[0], DEMO_USERS[1]
    world.plant("volumes", "volume-stuck", injected["stuck"][0],
                f"{first}'s home volume, left reserved 2 hours ago by an attach that never "
                "finished (FailedAttachVolume events on her pod)")
    world.plant("volumes", "attachment-stale", injected["dangling"][0],
                f"{second}'s home volume: a reserved attachment beside the attached one (a "
                "move to node-2 that died half way)")
    ken = "ken"  # a user of healthy() without a running server: his new pod cannot start
    world.plant("volumes", "volume-attach-failed", cloud.attach_failed(ken),
                f"{ken}'s home volume is still attached on node-gone, which died without "
                "detaching it: Multi-Attach errors for his new pod")
    world.plant("volumes", "credential-expiring", cloud.expiring_credential("ci-deploy", days=5),
                "application credential 'ci-deploy' of the cloud's user expires in 5 days")
    world.plant("orphans", "orphan-volume", injected["orphans"][0],
                "an available pvc-* volume, 30 days old, that no PV references")
    released = injected["released"][0]
    world.plant("orphans", "released-pv", f"{world.cluster_name}/{released}",
                "a PV left Released: its claim jhub/claim-departed was deleted")
    assert cloud.sim is not None
    foreign = cloud.sim.inject_orphan_volume(
        metadata={"cinder.csi.openstack.org/cluster": "other-team"})
    world.plant("orphans", "foreign-volume", foreign["id"],
                "a pvc-* volume no PV here references, made by cinder-csi of cluster "
                "'other-team', which shares the cloud")
    world.plant("quotas", "quota-near", cloud.quota_near(limit_gb=200, left_gb=15),
                "the project's 200 GiB volume quota is 92% used (a scratch volume took most "
                "of it): 15 GiB left, room for one more 10 GiB user volume")
    for claim in injected["extra_pvcs"]:
        user = claim.rsplit("-", 1)[-1]
        world.plant("orphans", "orphan-extra-pvc", f"{world.cluster_name}/{claim}",
                    f"claim {claim} of '{user}', who is no longer a user of the hub")


def _plant_cluster(world: DemoWorld) -> None:
    part = world.cluster
    world.plant("certs", "cert-expiring",
                part.tls_secret("hub-tls", days=5,
                                annotations={"cert-manager.io/certificate-name": "hub-tls"}),
                "the hub's TLS secret (a cert-manager certificate) expires in 5 days")
    world.plant("certs", "cert-hostname-mismatch", part.hostname_mismatch("hub.example.org"),
                "an HTTPS endpoint, watched by its address, serves a certificate for "
                "hub.example.org only")
    world.plant("certs", "cert-unreadable", part.broken_secret("broken-tls"),
                "a TLS secret whose tls.crt is garbage")
    world.plant("nodes", "node-pressure", part.node_pressure("node-1", "DiskPressure"),
                "node-1's kubelet reports DiskPressure")
    # The cloud under the cluster: every node is a Nova server (spec.providerID).
    world.cloud.servers_for_nodes()
    world.plant("nodes", "node-not-ready", part.node_not_ready("node-2"),
                "node-2 went NotReady: its Nova server crashed into ERROR")
    world.cloud.server_state("node-2", "error")
    world.plant("nodes", "node-shelved", world.cloud.shelved_node("node-4"),
                "node-4 was scaled down the runbook's way: cordoned, its server shelved "
                "(`openstack server shelve`)")
    world.plant("quotas", "quota-exhausted", world.cloud.quota_exhausted(),
                "the project may run exactly as many servers as its nodes: the autoscaler's "
                "next node fails to be created (Nova answers 403)")
    world.plant("nodes", "image-cache-pressure", part.image_cache_pressure("node-3"),
                "node-3's images fill 80 of its 100 GiB: the next 8 GiB image would cross "
                "the kubelet's eviction threshold")
    for subject in part.failed_pods(1, failed_for=timedelta(minutes=FAILED_POD_MINUTES)):
        world.plant("nodes", "failed-pods", subject,
                    f"a pod evicted for disk on node-1 {FAILED_POD_MINUTES} minutes ago")
    world.plant("nodes", "core-pod-misplaced", part.core_pod_misplaced("proxy", "node-1"),
                "the proxy runs on user node node-1, though core pods must run on core nodes")
    world.plant("nodes", "namespace-stuck-terminating", part.stuck_namespace("nublado-carol"),
                "a namespace Terminating for 2 hours, held by a protected claim")
    world.plant("orphans", "pvc-stuck-terminating", part.claim_stuck_terminating(),
                "a scratch claim deleted half an hour ago, kept by kubernetes.io/pvc-protection "
                "because the pod that mounts it still runs")
    world.plant("nodes", "check-failing", part.unreachable_cluster("edge"),
                "a second cluster, edge, whose API server answers 503 throughout: the nodes "
                "check cannot complete there")
    world.plant("orphans", "check-failing", "edge",
                "the same dead API server, seen by the orphans check, which reads the PVs of "
                "every cluster no cloud lists")


def _plant_nublado(world: DemoWorld) -> None:
    part = world.nublado
    part.healthy(NUBLADO_HEALTHY)
    world.plant("labs", "controller-stale-lab", part.stale_lab("rachel"),
                "the Nublado hub stopped rachel's lab while the lab controller was restarting "
                "(its DELETE never arrived) and a node drain took the pod: the controller's "
                "memory says running until its hourly reconcile")
    world.plant("labs", "lab-pod-missing", part.lab_pod_missing("sam"),
                "sam's lab pod was deleted behind the backs of both the hub and the controller")
    world.plant("labs", "controller-lost-lab", part.lost_lab("tess"),
                "the controller lost its record of tess's running lab")
    world.plant("labs", "lab-stuck", part.stuck_lab("uma"),
                "a delete of uma's lab that never finishes: the controller holds it as "
                "terminating")
    world.plant("labs", "lab-namespace-orphan", part.namespace_orphan("vic"),
                "a namespace nublado-vic that neither the hub nor the controller has a lab for")
    world.plant("culler", "culler-missing", DEMO_CULLER,
                f"hub {part.hub_name} is configured with culler_service = "
                f"\"{DEMO_CULLER}\", and its services list none")


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
            return Demo(world, stream, as_json).run(passes, keep)
        finally:
            world.stop()
    finally:
        structlog.configure(**saved)


def _pass_reaching(minutes: float, already: float = 0) -> int:
    """The first pass (1-based) at which something ``already`` minutes old at pass 1 has
    lasted ``minutes``."""
    return max(1, math.ceil((minutes - already) / MINUTES_PER_PASS) + 1)


class Demo:
    """One run of the demo over a :class:`DemoWorld`: the passes, what they did, and the
    explanation. After :meth:`run`, :attr:`outcomes` says what became of each planted
    problem (the world is still up: the caller stops it)."""

    def __init__(self, world: DemoWorld, out: TextIO, as_json: bool) -> None:
        self.world = world
        self.out = out
        self.as_json = as_json
        self.clock: Callable[[], datetime] = world.clock
        self.start = world.clock()
        self.order = {name: i for i, name in enumerate(world.checks_in_play)}
        #: finding key -> the done action's name and detail, and the finding it was for
        self.done: dict[str, tuple[str, str, dict[str, Any]]] = {}
        #: (check, kind, subject) -> the finding as last reported, over every pass
        self.seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        #: finding key -> its message as last printed, digits blanked (see show_finding)
        self.told: dict[str, str] = {}
        self.outcomes: list[Outcome] = []
        self.errors = 0
        #: the map of users' disks after the last pass
        self.disks: list[dict[str, Any]] = []

    def say(self, text: str = "", indent: int = 0) -> None:
        """Print a paragraph, wrapped."""
        if self.as_json:
            return
        if not text:
            print(file=self.out)
            return
        prefix = " " * indent
        # Never break inside kind names, ids and flags ("volume-stuck", "--passes").
        print(textwrap.fill(text, WIDTH, initial_indent=prefix, subsequent_indent=prefix + "  ",
                            break_on_hyphens=False), file=self.out)

    def unplanned_errors(self, report: dict[str, Any]) -> int:
        """Check targets that did not complete, but for those planted to fail
        (``check-failing``): the demo's exit code is 2 only for a failure nobody planted."""
        planted = {(p.check, p.subject) for p in self.world.all_problems()
                   if p.kind == "check-failing"}
        return sum(1 for c in report["checks"]
                   if c["status"] == "error" and (c["check"], c["target"]) not in planted)

    def run(self, passes: int, keep: bool) -> int:
        config = self.world.load_config()
        only = self.world.checks_in_play
        self.introduce(config)
        engine = self.world.engine()
        for number in range(1, passes + 1):
            report = engine.run_pass(only=only).as_json()
            self.errors += self.unplanned_errors(report)
            self.record(report)
            if self.as_json:
                print(json.dumps(report, default=str), file=self.out)
            else:
                self.show_pass(number, passes, report)
            self.advance()
        final_engine = self.world.engine(dry_run=True)
        final = final_engine.run_pass(only=only).as_json()
        self.errors += self.unplanned_errors(final)
        self.disks = final_engine.store.disks()
        self.outcomes = self.judge(config, final)
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
                self.seen[(check["check"], finding["kind"], finding["subject"])] = finding
                action = finding["action"]
                if action and action["status"] == "done":
                    self.done.setdefault(finding["key"],
                                         (action["name"], action["detail"] or "", finding))

    def _checks(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        """The report's check targets, grouped by check in the order the demo tells them."""
        return sorted(report["checks"], key=lambda c: self.order.get(c["check"], len(self.order)))

    # -- the story ---------------------------------------------------------------------------

    def introduce(self, config: Config) -> None:
        world = self.world
        sim = world.cloud.sim
        assert sim is not None
        self.say("watchdogd demo: a small JupyterHub on Kubernetes and OpenStack, simulated on "
                 "this machine")
        self.say("=" * 78)
        self.say("The world runs on free ports of 127.0.0.1: a Kubernetes API server "
                 f"({world.kube.url}), configurable-http-proxy's API ({world.chp.url}), a "
                 f"JupyterHub REST API with its database ({world.hub.api_url}), OpenStack "
                 f"Keystone ({sim.keystone_url}) and Cinder ({sim.cinder_url}), and an HTTPS "
                 "endpoint; beside that hub a second one, Nublado's, with its own proxy and "
                 f"lab controller ({world.nublado.controller.url}). watchdogd talks to them "
                 "exactly as it would to the real ones.")
        self.say()
        self.say(f"{HEALTHY_USERS} users, {HEALTHY_RUNNING} of them with a healthy server "
                 "(the hub database, the pod and the proxy route agree), home volumes in "
                 f"Cinder, a core node and three user nodes; {len(NUBLADO_HEALTHY)} healthy labs "
                 "on the Nublado hub. Then one problem of each kind "
                 "every check knows was planted, grouped by the check that looks for it:")
        problems = world.all_problems()
        for check, about in CHECKS.items():
            mine = [p for p in problems if p.check == check]
            if not mine:
                continue
            self.say(f"{check}: {about}", indent=2)
            for problem in mine:
                self.say(f"{problem.kind:<27} {problem.subject}: {problem.story}", indent=4)
        self.say()
        for gate in self.gates(config):
            self.say(f"({gate})")
        self.say()
        remediation = config.remediation
        enabled = ", ".join(remediation.enabled)
        confirm = remediation.confirm_after
        self.say(f"Remediation is ON: dry_run = false; confirm_after = {confirm} (a problem "
                 f"must be seen in {confirm} passes before anything is done about it); "
                 f"min_age = 0s; max_per_pass = {remediation.max_per_pass} destructive "
                 f"actions; enabled actions: {enabled}. restart-hub and delete-orphan-volume "
                 "stay off: restarting a hub and deleting data are an operator's call.")
        self.say(f"Simulated time: one pass every {MINUTES_PER_PASS} minutes.")

    def gates(self, config: Config) -> list[str]:
        """One sentence per setting that holds a problem or its fix back, with its value
        and the pass from which it lets go."""
        from watchdogd.checks import nodes, orphans, sessions, volumes  # noqa: PLC0415

        confirm = config.remediation.confirm_after
        result = []
        stuck_after = sessions.Settings.section(config.checks, sessions.NAME).stuck_stop_after
        if stuck_after:
            minutes = int(stuck_after.total_seconds() // 60)
            result.append(f"A stop only counts as stuck once it has been pending for "
                          f"checks.sessions.stuck_stop_after = {minutes} minutes: watch for "
                          f"stuck-stop from pass {_pass_reaching(minutes)} on.")
        vol = volumes.Settings.section(config.checks, volumes.NAME)
        stuck = int(vol.stuck_after.total_seconds() // 60)
        stale = int(vol.attachment_stale_after.total_seconds() // 60)
        first = _pass_reaching(max(stuck, stale))
        result.append(
            "Every attach starts with a reservation, so a reserved volume or attachment "
            "only counts as stuck once both Cinder's updated_at and watchdogd's own sightings "
            f"span checks.volumes.stuck_after = {stuck} minutes (attachment_stale_after = "
            f"{stale}; the demo's values, 5 and 30 by default): watch for volume-stuck and "
            f"attachment-stale from pass {first}, and for delete-attachment, which frees the "
            f"volume too, in pass {first + confirm - 1}.")
        days = orphans.Settings.section(config.checks, orphans.NAME).quarantine_days
        result.append(
            "An orphaned volume is only quarantined (today's date in its metadata, from pass "
            f"{confirm}): deleting it waits checks.orphans.quarantine_days = {days} days and "
            "needs delete-orphan-volume, off here. An extra claim of a departed user is "
            "marked the same way (quarantine-extra-pvc, an annotation on the API server's "
            f"clock); delete-extra-pvc is on, and waits those {days} days too.")
        node_settings = nodes.Settings.section(config.checks, nodes.NAME)
        min_age = int(node_settings.failed_pod_min_age.total_seconds() // 60)
        ready = _pass_reaching(min_age, FAILED_POD_MINUTES)
        result.append(
            f"A failed pod is deleted only once it has been failed for "
            f"checks.nodes.failed_pod_min_age = {min_age} minutes (the demo's value; 1 hour by "
            f"default, time to read its logs): the one failed {FAILED_POD_MINUTES} minutes "
            f"before pass 1 is deleted in pass {max(ready, confirm)}.")
        return result

    def show_pass(self, number: int, passes: int, report: dict[str, Any]) -> None:
        minutes = int((self.clock() - self.start).total_seconds() // 60)
        self.say()
        self.say(f"--- pass {number} of {passes} (t+{minutes} min) " + "-" * 50)
        for check in self._checks(report):
            where = f"{check['check']}/{check['target']}"
            count = len(check["findings"])
            if check["status"] == "error":
                self.say(f"{where}: could not complete, so nothing was done: {check['error']}",
                         indent=2)
                # What the engine tracks for the failure itself (check-failing, once it has
                # lasted notify.error_after; view-implausible).
                for finding in check["findings"]:
                    self.show_finding(finding)
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
        """A finding: why the first time (and whenever its message says something new; only
        the numbers of ages changing does not count), then what is planned or done."""
        seen = finding["sightings"]
        head = (f"{finding['kind']} {finding['subject']} [{finding['severity']}, seen "
                f"{seen} time{'s' if seen != 1 else ''}]")
        gist = re.sub(r"\d[\d.]*[smhd]?", "#", finding["message"])
        told = self.told.get(finding["key"]) == gist
        self.told[finding["key"]] = gist
        action = finding["action"]
        # A kind that is only reported, or one whose fix is not due yet (a failed pod younger
        # than failed_pod_min_age, a stuck volume whose dangling attachment goes first).
        only_told = finding["kind"] in LEFT_TO_PEOPLE
        if told and action is None:
            self.say(f"{head}: still open, "
                     + ("reported only" if only_told else "nothing to do this pass")
                     + " (see above)", indent=4)
            return
        self.say(head, indent=4)
        if not told:
            self.say(f"why:  {finding['message']}", indent=6)
        if action is None:
            self.say("plan: none; watchdogd only reports this one" if only_told
                     else "plan: nothing this pass; the why says what it waits for", indent=6)
            return
        status, detail = action["status"], action["detail"] or ""
        if status == "done":
            verdict = f"DONE: {_plain(detail)}"
        elif status in _HELD:
            verdict = f"{_HELD[status]}: {detail}"
        else:
            verdict = f"{status.upper()}: {detail}"
        self.say(f"plan: {action['name']} -> {verdict}", indent=6)

    # -- the outcome ----------------------------------------------------------------------------

    def judge(self, config: Config, final: dict[str, Any]) -> list[Outcome]:
        """What became of each planted problem, from the last (dry-run) pass."""
        from watchdogd.checks import orphans  # noqa: PLC0415

        days = orphans.Settings.section(config.checks, orphans.NAME).quarantine_days
        confirm = config.remediation.confirm_after
        still = {(c["check"], f["kind"], f["subject"]): f
                 for c in final["checks"] for f in c["findings"]}
        outcomes = []
        for problem in self.world.all_problems():
            where = (problem.check, problem.kind, problem.subject)
            earlier = self.seen.get(where)
            mine = self.done.get(earlier["key"]) if earlier else None
            finding = still.get(where)
            if finding is None:
                if mine is not None:
                    name, detail, _ = mine
                    outcomes.append(Outcome(problem, "fixed", f"by {name} ({_plain(detail)})"))
                elif earlier is None:
                    outcomes.append(Outcome(problem, "pending", (
                        "not reported yet: it becomes a finding once it has lasted long "
                        "enough; run more passes")))
                elif (other := self.fixed_along(problem)) is not None:
                    outcomes.append(Outcome(problem, "fixed", other))
                else:
                    outcomes.append(Outcome(problem, "pending", "not seen any more"))
                continue
            if problem.kind in LEFT_TO_PEOPLE:
                outcomes.append(Outcome(problem, "left to people", LEFT_TO_PEOPLE[problem.kind]))
            elif mine is not None and mine[0] in STAYS_AFTER:
                name, detail, _ = mine
                outcomes.append(Outcome(problem, "fixed", STAYS_AFTER[name].format(
                    detail=detail, quarantine_days=days)))
            else:
                outcomes.append(Outcome(problem, "pending", _waiting(finding, confirm)))
        return outcomes

    def fixed_along(self, problem: Problem) -> str | None:
        """The done action of another finding of the same check that names this problem's
        subject (a stuck volume freed by deleting its dangling attachment), said plainly."""
        for name, detail, finding in self.done.values():
            if finding["subject"] == problem.subject and problem.check == "labs":
                # A Nublado user's row has one owner: the sessions check stops through the
                # hub a lab the labs check only reports (lab-pod-missing).
                return (f"by {name} of {finding['kind']} {finding['subject']} "
                        f"({finding['key'].split('/', 1)[0]}), which owns it ({_plain(detail)})")
            if not finding["key"].startswith(f"{problem.check}/"):
                continue
            if problem.subject in json.dumps(finding["evidence"], default=str):
                return (f"by {name} of {finding['kind']} {finding['subject']}, which held it "
                        f"({_plain(detail)})")
        return None

    def summarize(self, passes: int, final: dict[str, Any]) -> None:
        self.say()
        self.say(f"=== after {passes} pass(es) " + "=" * 60)
        self.say("A last detection pass (dry run, so it changes nothing) looks at the world "
                 "again. Per planted problem: fixed (gone; an orphaned volume quarantined), left "
                 "to people (watchdogd reports it and leaves the fix to people, for the reason "
                 "given), or pending (not settled yet):")
        for check in CHECKS:
            mine = [o for o in self.outcomes if o.problem.check == check]
            if not mine:
                continue
            counts = ", ".join(f"{n} {verdict}" for verdict in ("fixed", "left to people",
                                                                "pending")
                               if (n := sum(1 for o in mine if o.verdict == verdict)))
            self.say(f"{check} ({counts}):", indent=2)
            for outcome in sorted(mine, key=lambda o: ("fixed", "left to people",
                                                       "pending").index(o.verdict)):
                self.say(f"{outcome.verdict}: {outcome.problem.label}: {outcome.reason}",
                         indent=4)
        self.show_extras(final)
        fixable = [o for o in self.outcomes if o.problem.kind not in LEFT_TO_PEOPLE]
        fixed = [o for o in fixable if o.verdict == "fixed"]
        left = [o for o in self.outcomes if o.verdict == "left to people"]
        pending = [o for o in self.outcomes if o.verdict == "pending"]
        if len(fixed) == len(fixable) and not pending:
            self.say(f"The world converged: {len(fixed)} of {len(fixable)} fixable problems "
                     "fixed through the Hub REST API, the Kubernetes API and Cinder; "
                     f"{len(left)} left for people, with notifications.")
        else:
            self.say(f"{len(fixed)} of {len(fixable)} fixable problems fixed so far; "
                     f"{len(pending)} not settled yet (try --passes {max(4, passes + 1)}).")
        self.show_disks()
        self.show_repair_refused()
        self.say("Every action is in the audit log (watchdogd actions), every finding in the "
                 "state store (watchdogd findings); with --keep the world stays up to try them.")

    def show_repair_refused(self) -> None:
        """The runbook's last resort for the stuck stop, tried while the hub runs: refused.

        ``watchdogd repair-session`` edits the hub's database, so it refuses while the hub
        answers (the hub would write its memory back); the demo's hub runs, so this is what
        an operator sees before stopping it (``--stop-hub``).
        """
        from watchdogd.app import open_store  # noqa: PLC0415
        from watchdogd.repair import Console, Refused, RepairOptions, repair_session  # noqa: PLC0415

        user = STUCK_STOP_USER
        lines: list[str] = []
        config = self.world.load_config()
        store = open_store(config)
        try:
            repair_session(config, store, RepairOptions(hub=self.world.hub_name, user=user),
                           Console(echo=lines.append, ask=lambda _question: False))
            outcome = "repaired"
        except Refused as exc:
            outcome = f"exit {exc.code}, {exc}"
        finally:
            store.close()
        self.say(f"{user}'s stop never finishes; the runbook's last resort is the hub "
                 f"database: watchdogd repair-session {user} --hub {self.world.hub_name} "
                 "clears only her session's rows, archived for undo, and only while the hub is "
                 "down (--stop-hub scales it to 0 and back). With the hub running: "
                 + outcome)

    def show_disks(self) -> None:
        """The map of users' disks the orphans passes recorded (``watchdogd volumes map``)."""
        if not self.disks:
            return
        self.say(f"The map of users' disks (watchdogd volumes map): {len(self.disks)} claim(s), "
                 "each with its PV and Cinder volume, kept with its history by every orphans "
                 "pass. After a tear-down, watchdogd volumes manifests USER | kubectl apply -f - "
                 "binds a user's volume to their claim again.")
        for line in map_table(self.disks).splitlines():
            print("    " + line, file=self.out)

    def show_extras(self, final: dict[str, Any]) -> None:
        """Findings nobody planted: the same trouble seen from another side (a dead
        session's evicted pod is a failed pod too), and what became of them."""
        planted = {(p.check, p.kind, p.subject) for p in self.world.all_problems()}
        still = {(c["check"], f["kind"], f["subject"]) for c in final["checks"]
                 for f in c["findings"]}
        extras = [(where, f) for where, f in self.seen.items() if where not in planted]
        if not extras:
            return
        self.say("Found on the way, though not planted (a planted problem seen from another "
                 "side):", indent=2)
        for (check, kind, subject), finding in sorted(
                extras, key=lambda e: self.order.get(e[0][0], len(self.order))):
            related = self.related(finding)
            also = f"the same trouble as {related}; " if related else ""
            done = self.done.get(finding["key"])
            if (check, kind, subject) in still:
                fate = "still open"
            elif done is not None:
                fate = f"fixed by {done[0]} ({_plain(done[1])})"
            else:
                fate = "gone along with it" if related else "gone"
            self.say(f"{check}: {kind} {subject}: {also}{fate}", indent=4)

    def related(self, finding: dict[str, Any]) -> str | None:
        """The planted problem a finding nobody planted is about, if it names it."""
        text = finding["message"] + json.dumps(finding["evidence"], default=str)
        for problem in self.world.all_problems():
            if (len(problem.subject) >= 8 and problem.subject in text) or (
                    len(finding["subject"]) >= 8 and finding["subject"] in problem.story):
                return f"{problem.kind} {problem.subject} ({problem.check})"
        return None

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


def _waiting(finding: dict[str, Any], confirm: int) -> str:
    """Why a fixable problem is still open after the last pass, in one line."""
    action = finding["action"]
    if action is None:
        clause = finding["message"].rsplit("; ", 1)
        why = clause[-1] if len(clause) == 2 else "no action planned yet"
        return f"still open: {why}; run more passes"
    if action["status"] == "dry-run":
        return f"still open: {action['name']} would run in the next pass"
    return (f"still open ({action['name']}: needs {confirm} sightings before acting; run more "
            "passes)")


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
