"""Scale benchmark of the ``volumes`` and ``orphans`` checks, against the runbook way.

The world: one simulated cloud (Keystone + Cinder) with 20,000 volumes and 5,000 attachments,
and three simulated Kubernetes clusters with 7,000 PVs (and their claims) each. Planted in it:
volumes stuck ``reserved`` and ``error_deleting``, reservations dangling beside attached
attachments, ``FailedAttachVolume`` events for them, 150 orphaned ``pvc-*`` volumes and
Released PVs.

Measured, each as its own process so that peak RSS is the client's alone:

* watchdogd: ``watchdogd check --only volumes --only orphans --json`` (dry run), twice: the
  first pass observes, the second also judges what it has seen twice (the stuck volumes).
* the runbook: the ``openstack`` CLI and ``kubectl`` commands an operator runs for the same
  answers (volume list, attachment list, ``volume show`` for every volume in a transitional
  status to read ``updated_at``, the PVs of every cluster, the attach events and the claim
  behind each), then the same comparison done in Python.

Printed: wall time, requests (counted by the simulators), peak RSS, the ratio, and whether
both found the same things. Targets: watchdogd at least 10x faster than the runbook, at most
ceil(n / page) + 10 requests per listing, and within 1.5x the wall time and the peak RSS of
the floor: the same GETs as watchdogd's cold pass (read back from the simulators' logs) made
with http.client and json.loads, every answer kept. watchdogd's bytecode is compiled before
anything is measured, as pip compiles an installed package's.

    .venv/bin/python bench/volumes.py [--volumes 20000 --attachments 5000 --pvs 7000]
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from watchdogd.sim.kube import KubeSim  # noqa: E402
from watchdogd.sim.objects import (  # noqa: E402
    failed_attach_event,
    pv_for_volume,
    pvc_for_user,
)
from watchdogd.sim.openstack import OpenStackSim  # noqa: E402

BIN = Path(sys.executable).parent
STUCK_STATUSES = ("reserved", "attaching", "detaching", "deleting", "error_deleting")
CLUSTERS = ("c1", "c2", "c3")
CINDER_PAGE = 1000
KUBE_PAGE = 500


@dataclass
class Run:
    """One client process: wall time and peak RSS."""

    argv: list[str]
    wall: float
    rss_mb: float
    stdout: str


@dataclass
class Planted:
    stuck: set[str] = field(default_factory=set)
    dangling: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)


def run(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Run one command; its wall time and its own peak RSS (wait4's rusage of that child)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out: list[bytes] = []
    err: list[bytes] = []
    assert proc.stdout is not None and proc.stderr is not None
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read())),  # type: ignore[union-attr]
               threading.Thread(target=lambda: err.append(proc.stderr.read()))]  # type: ignore[union-attr]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for reader in readers:
        reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({proc.returncode}): "
                         f"{b''.join(err).decode(errors='replace')[-2000:]}")
    return Run(argv, wall, usage.ru_maxrss / 1024, b"".join(out).decode())


class Child:
    """A simulator in its own process (as the real services are): commands on stdin, one JSON
    answer line each, so that serving does not share a GIL with anything measured."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.ready = self.read()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"simulator process {self.proc.args!r} died")
        return json.loads(line)

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _serve(counts: Any, reset: Any, stop: Any, ready: dict[str, Any], log: Any) -> None:
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "count":
            print(json.dumps(counts()), flush=True)
        elif command == "reset":
            reset()
            print("{}", flush=True)
        elif command == "log":
            print(json.dumps(log()), flush=True)
    stop()


def serve_openstack(args: argparse.Namespace, workdir: Path) -> None:
    """Child: the cloud. Writes clouds.yaml and world.json (what the clusters and the parent
    need to know), then serves."""
    sim = OpenStackSim(page_max=CINDER_PAGE).start()
    per_cluster = args.pvs - args.nfs_pvs
    used_count = per_cluster * 3
    orphan_count, other_count = 150, args.volumes - used_count - 150
    if other_count < 0:
        raise SystemExit("more PVs than volumes: raise --volumes or --nfs-pvs")
    used = sim.add_volumes(used_count - 3 * args.stuck, age=timedelta(days=30))
    stuck_ids: list[tuple[str, str]] = []  # (volume id, kind)
    dangling: set[str] = set()
    for _i in range(args.stuck):
        stuck_ids.append((sim.inject_stuck_volume(status="reserved")["id"], "reserved"))
        stuck_ids.append((sim.inject_stuck_volume(status="error_deleting")["id"], "deleting"))
        volume, attachment = sim.inject_dangling_attachment()
        stuck_ids.append((volume["id"], "dangling"))
        dangling.add(attachment["id"])
    dangling |= {a["id"] for vid, kind in stuck_ids if kind == "reserved"
                 for a in sim.attachments(vid)}
    reserved_like = sum(1 for _, kind in stuck_ids if kind in ("reserved", "dangling"))
    attached_bulk = args.attachments - reserved_like - args.stuck  # dangling ones: 2 each
    sim.add_attachments(used[:attached_bulk], status="attached")
    orphans = sim.add_volumes(orphan_count, age=timedelta(days=40))
    sim.add_volumes(other_count, prefix="boot-", age=timedelta(days=50))
    all_used = [vid for vid, _ in stuck_ids] + used
    sim.write_clouds_yaml(workdir / "clouds.yaml", "bench")
    (workdir / "world.json").write_text(json.dumps({
        "used": [[vid, (sim.volume(vid) or {})["name"]] for vid in all_used],
        "stuck": [vid for vid, _ in stuck_ids], "dangling": sorted(dangling),
        "orphans": orphans, "attachments": len(sim.attachments())}))

    def counts() -> dict[str, int]:
        volumes = sim.count("cinder", r"/volumes/detail")
        attachments = sim.count("cinder", r"/attachments")
        return {"cinder volumes": volumes, "cinder attachments": attachments,
                "cinder other": sim.count("cinder") - volumes - attachments,
                "keystone": sim.count("keystone")}

    def log() -> list[list[str]]:
        return [[service, path] for service, method, path in sim.requests if method == "GET"]

    _serve(counts, sim.reset_requests, sim.stop,
           {"cinder": sim.cinder_url, "keystone": sim.keystone.base_url}, log)


def serve_kube(name: str, workdir: Path) -> None:
    """Child: one cluster, filled from objects-NAME.json."""
    kube = KubeSim(page_max=KUBE_PAGE).start()
    kube.put_many(json.loads((workdir / f"objects-{name}.json").read_text()))
    kube.write_kubeconfig(workdir / f"kube-{name}", context=name)

    def counts() -> dict[str, int]:
        pvs = sum(1 for _, p in kube.requests if "/persistentvolumes" in p)
        pvcs = sum(1 for _, p in kube.requests if "/persistentvolumeclaims" in p)
        return {f"{name} pvs": pvs, f"{name} pvcs": pvcs,
                f"{name} other": len(kube.requests) - pvs - pvcs}

    def log() -> list[str]:
        return [path for method, path in kube.requests if method == "GET"]

    _serve(counts, kube.reset_requests, kube.stop, {"kube": kube.url, "name": name}, log)


def build(args: argparse.Namespace, workdir: Path) -> tuple[list[Child], Planted, int]:
    """Start the simulator processes; return them, what was planted, the attachment count."""
    common = ["--volumes", str(args.volumes), "--attachments", str(args.attachments),
              "--pvs", str(args.pvs), "--nfs-pvs", str(args.nfs_pvs),
              "--stuck", str(args.stuck), "--workdir", str(workdir)]
    cloud = Child(["--serve", "openstack", *common])
    world = json.loads((workdir / "world.json").read_text())
    stuck = set(world["stuck"])
    planted = Planted(stuck=stuck, dangling=set(world["dangling"]),
                      orphans=set(world["orphans"]))
    now = datetime.now(UTC)
    used = world["used"]
    for index, cluster in enumerate(CLUSTERS):
        chunk = used[index::len(CLUSTERS)]
        objects: list[dict[str, Any]] = []
        for n, (vid, name) in enumerate(chunk):
            user = f"user-{index}-{n}"
            released = n >= len(chunk) - args.released  # never a stuck one (those come first)
            volume = {"id": vid, "name": name, "size": 1}
            objects.append(pv_for_volume(volume, claim_namespace="jhub",
                                         claim_name=f"claim-{user}",
                                         phase="Released" if released else "Bound"))
            if released:
                planted.released.add(f"{cluster}/{name}")
            else:
                objects.append(pvc_for_user(user, name))
            if vid in stuck:
                objects.append(failed_attach_event("jhub", f"jupyter-{user}", name, when=now))
        for n in range(args.nfs_pvs):
            objects.append({"apiVersion": "v1", "kind": "PersistentVolume",
                            "metadata": {"name": f"nfs-{cluster}-{n}"},
                            "spec": {"nfs": {"server": "10.0.0.2", "path": f"/srv/{n}"},
                                     "capacity": {"storage": "1Gi"},
                                     "accessModes": ["ReadWriteMany"]},
                            "status": {"phase": "Available"}})
        (workdir / f"objects-{cluster}.json").write_text(json.dumps(objects))
    kubes = [Child(["--serve", "kube", "--cluster", c, "--workdir", str(workdir)])
             for c in CLUSTERS]
    return [cloud, *kubes], planted, int(world["attachments"])


def write_config(workdir: Path) -> Path:
    clusters = []
    for name in CLUSTERS:
        clusters.append(f'[clusters.{name}]\nkubeconfig = "{workdir / f"kube-{name}"}"\n'
                        f'context = "{name}"\ntimeout = "60s"\npage_size = {KUBE_PAGE}\n')
    (workdir / "state-url").write_text(f"sqlite:///{workdir / 'state.db'}\n")
    config = workdir / "watchdogd.toml"
    config.write_text(
        f'[state]\nurl_file = "{workdir / "state-url"}"\n\n'
        '[remediation]\ndry_run = true\n\n'
        '[daemon]\npass_timeout = "10m"\n\n'
        + "\n".join(clusters)
        + f'\n[clouds.bench]\ncloud = "bench"\nclouds_yaml = "{workdir / "clouds.yaml"}"\n'
          f'clusters = {json.dumps(list(CLUSTERS))}\ntimeout = "60s"\n'
          f'page_size = {CINDER_PAGE}\n'
        # Both passes run seconds apart in real time: judge after one second, not minutes.
        '\n[checks.volumes]\nstuck_after = "1s"\nattachment_stale_after = "1s"\n'
        '\n[checks.orphans]\nmin_volume_age = "1h"\n'
        '\n[checks.sessions]\nenabled = false\n[checks.certs]\nenabled = false\n'
        '[checks.nodes]\nenabled = false\n')
    return config


def requests_of(children: list[Child]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for child in children:
        counts.update(child.ask("count"))
    return counts


def reset(children: list[Child]) -> None:
    for child in children:
        child.ask("reset")


def watchdogd_way(config: Path, between: Any = None) -> tuple[list[Run], dict[str, Any]]:
    argv = [str(BIN / "watchdogd"), "check", "-c", str(config), "--only", "volumes",
            "--only", "orphans", "--json"]
    runs = [run(argv)]
    if between is not None:
        between()
    runs.append(run(argv))
    report = json.loads(runs[-1].stdout)
    errors = [c["error"] for c in report["checks"] if c["error"]]
    if errors:
        raise SystemExit(f"watchdogd pass failed: {errors}")
    found: dict[str, set[str]] = {}
    for check in report["checks"]:
        for finding in check["findings"]:
            found.setdefault(finding["kind"], set()).add(finding["subject"])
            found.setdefault("affected-users", set()).update(
                str(a["user"]) for a in finding["evidence"].get("affected", []) if a["user"])
    return runs, found


FLOOR = r"""
import http.client, json, ssl, sys
from urllib.parse import urlsplit
spec = json.load(open(sys.argv[1]))
kept, conns = [], {}
def get(url, headers, body=None, method="GET"):
    parts = urlsplit(url)
    key = (parts.scheme, parts.netloc)
    if key not in conns:
        if parts.scheme == "https":
            conns[key] = http.client.HTTPSConnection(
                parts.netloc, context=ssl._create_unverified_context())
        else:
            conns[key] = http.client.HTTPConnection(parts.netloc)
    conn = conns[key]
    conn.request(method, url[len(parts.scheme) + 3 + len(parts.netloc):] or "/", body, headers)
    answer = conn.getresponse()
    data = answer.read()
    if answer.status >= 300:
        raise SystemExit(f"{method} {url}: {answer.status}")
    return answer, data
auth, _ = get(spec["keystone"] + "/v3/auth/tokens", {"Content-Type": "application/json"},
              json.dumps(spec["auth"]), "POST")
token = auth.getheader("X-Subject-Token")
for service, path in spec["openstack"]:
    base = spec[service]
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": "volume 3.27"}
    kept.append(json.loads(get(base + path, headers)[1] or b"null"))
for cluster in spec["kube"]:
    for path in cluster["paths"]:
        if "continue=" in path:
            continue  # continue tokens expire: each list is paged again from its first page
        page = path
        while page:
            answer = json.loads(get(cluster["server"] + page,
                                    {"Authorization": "Bearer " + cluster["token"]})[1])
            kept.append(answer)
            token_ = (answer.get("metadata") or {}).get("continue")
            page = f"{path}&continue={token_}" if token_ else ""
print(len(kept))
"""


def floor_spec(workdir: Path, children: list[Child]) -> dict[str, Any]:
    """What watchdogd's cold pass read, from the simulators' logs, and the credentials."""
    spec: dict[str, Any] = {"kube": []}
    for child in children:
        log = child.ask("log")
        if "cinder" in child.ready:
            spec.update(cinder=child.ready["cinder"], keystone=child.ready["keystone"],
                        openstack=[[s, p] for s, p in log
                                   if not p.rstrip("/").endswith(("/v3", "/auth/tokens"))])
        else:
            kubeconfig = json.loads((workdir / f"kube-{child.ready['name']}").read_text())
            spec["kube"].append({"server": kubeconfig["clusters"][0]["cluster"]["server"],
                                 "token": kubeconfig["users"][0]["user"]["token"],
                                 "paths": log})
    cloud = json.loads((workdir / "clouds.yaml").read_text())["clouds"]["bench"]["auth"]
    spec["auth"] = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": cloud["username"], "domain": {"name": cloud["user_domain_name"]},
        "password": cloud["password"]}}}, "scope": {"project": {
            "name": cloud["project_name"], "domain": {"name": cloud["project_domain_name"]}}}}}
    return spec


def floor_way(workdir: Path, spec: dict[str, Any]) -> Run:
    """The same GETs with http.client and json.loads, every answer kept as watchdogd keeps
    its lists: what any client of these APIs must at least spend."""
    (workdir / "floor.json").write_text(json.dumps(spec))
    return run([sys.executable, "-c", FLOOR, str(workdir / "floor.json")])


def runbook_way(workdir: Path) -> tuple[list[Run], float, dict[str, set[str]]]:
    """The commands of the runbook, then the comparison an operator's script would make."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(workdir / "clouds.yaml"), OS_CLOUD="bench")
    osc = str(BIN / "openstack")
    runs = [run([osc, "volume", "list", "--all-projects", "-f", "json", "-c", "ID",
                 "-c", "Name", "-c", "Status"], env),
            run([osc, "--os-volume-api-version", "3.27", "volume", "attachment", "list",
                 "--all-projects", "-f", "json"], env)]
    volumes = json.loads(runs[0].stdout)
    attachments = json.loads(runs[1].stdout)
    candidates = [v for v in volumes if v["Status"] in STUCK_STATUSES]
    updated: dict[str, str] = {}
    for volume in candidates:
        shown = run([osc, "volume", "show", volume["ID"], "-f", "json", "-c", "updated_at",
                     "-c", "status"], env)
        runs.append(shown)
        updated[volume["ID"]] = json.loads(shown.stdout)["updated_at"]
    pv_rows: list[tuple[str, str, str, str]] = []
    template = ('{range .items[*]}{.metadata.name}{"\\t"}{.status.phase}{"\\t"}'
                '{.spec.csi.volumeHandle}{.spec.cinder.volumeID}{"\\n"}{end}')
    events: list[tuple[str, dict[str, Any]]] = []
    for name in CLUSTERS:
        kubeconfig = str(workdir / f"kube-{name}")
        pvs = run(["kubectl", "--kubeconfig", kubeconfig, "get", "pv", "-o",
                   f"jsonpath={template}"])
        runs.append(pvs)
        for line in pvs.stdout.splitlines():
            pv_name, phase, handle = ([*line.split("\t"), "", ""])[:3]
            pv_rows.append((name, pv_name, phase, handle))
        for reason in ("FailedAttachVolume", "FailedMount"):
            listed = run(["kubectl", "--kubeconfig", kubeconfig, "get", "events", "-A",
                          "--field-selector", f"reason={reason}", "-o", "json"])
            runs.append(listed)
            events += [(name, e) for e in json.loads(listed.stdout)["items"]]
    users = {}
    for cluster, event in events:  # whose lab is it? the PV, then its claim
        kubeconfig = str(workdir / f"kube-{cluster}")
        pv_name = event["message"].split('"')[1]
        pv = run(["kubectl", "--kubeconfig", kubeconfig, "get", "pv", pv_name, "-o", "json"])
        claim = json.loads(pv.stdout)["spec"]["claimRef"]
        pvc = run(["kubectl", "--kubeconfig", kubeconfig, "get", "pvc", "-n",
                   claim["namespace"], claim["name"], "-o", "json"])
        runs += [pv, pvc]
        users[pv_name] = json.loads(pvc.stdout)["metadata"]["annotations"][
            "hub.jupyter.org/username"]

    started = time.perf_counter()
    now = datetime.now(UTC)
    found: dict[str, set[str]] = {}
    by_volume: dict[str, list[dict[str, Any]]] = {}
    for attachment in attachments:
        by_volume.setdefault(attachment["Volume ID"], []).append(attachment)
    for volume in candidates:
        age = now - datetime.fromisoformat(updated[volume["ID"]]).replace(tzinfo=UTC)
        if age < timedelta(seconds=1):
            continue
        atts = by_volume.get(volume["ID"], [])
        reserved = [a for a in atts if a["Status"] == "reserved"]
        found.setdefault("attachment-stale", set()).update(a["ID"] for a in reserved)
        found.setdefault("volume-stuck", set()).add(volume["ID"])
    handles = {row[3] for row in pv_rows if row[3]}
    names = {row[1] for row in pv_rows}
    found["orphan-volume"] = {v["ID"] for v in volumes if v["Name"].startswith("pvc-")
                              and v["ID"] not in handles and v["Name"] not in names}
    found["released-pv"] = {f"{c}/{n}" for c, n, phase, _ in pv_rows
                            if phase in ("Released", "Failed")}
    found["affected-users"] = set(users.values())
    return runs, time.perf_counter() - started, found


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--volumes", type=int, default=20_000)
    parser.add_argument("--attachments", type=int, default=5_000)
    parser.add_argument("--pvs", type=int, default=7_000, help="PVs per cluster (3 clusters)")
    parser.add_argument("--nfs-pvs", type=int, default=400,
                        help="of those, PVs that are not Cinder volumes")
    parser.add_argument("--released", type=int, default=30, help="Released PVs per cluster")
    parser.add_argument("--stuck", type=int, default=4,
                        help="stuck reserved, stuck error_deleting and dangling, each")
    parser.add_argument("--serve", choices=("openstack", "kube"), help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "openstack":
        serve_openstack(args, Path(args.workdir))
        return 0
    if args.serve == "kube":
        serve_kube(args.cluster, Path(args.workdir))
        return 0
    if not (BIN / "openstack").exists():
        raise SystemExit(f"no openstack CLI at {BIN}: pip install python-openstackclient")

    # An installed watchdogd has its bytecode compiled (pip does it); this worktree's may not
    # be, and PYTHONDONTWRITEBYTECODE keeps a run from writing it: without this the cold pass
    # would also measure the compiler on every watchdogd module. The floor has no package.
    compileall.compile_dir(ROOT / "watchdogd", quiet=1)
    with tempfile.TemporaryDirectory(prefix="watchdogd-bench-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        children, planted, attachments = build(args, workdir)
        try:
            config = write_config(workdir)
            print(f"world: {args.volumes} volumes, {attachments} attachments, "
                  f"{len(CLUSTERS)} clusters x {args.pvs} PVs, each simulator in its own "
                  f"process; built in {time.perf_counter() - started:.1f}s")
            reset(children)
            reset(children)
            spec: list[dict[str, Any]] = []
            wd_runs, wd_found = watchdogd_way(
                config, between=lambda: spec.append(floor_spec(workdir, children)))
            wd_requests = requests_of(children)
            floor = floor_way(workdir, spec[0])
            reset(children)
            rb_runs, rb_parse, rb_found = runbook_way(workdir)
            rb_requests = requests_of(children)
        finally:
            for child in children:
                child.close()

    wd_wall = wd_runs[0].wall  # the cold pass: a new process, auth, discovery, all lists
    rb_wall = sum(r.wall for r in rb_runs) + rb_parse
    print()
    print(f"{'':30} {'wall s':>8} {'requests':>9} {'peak RSS MB':>12}")
    print(f"{'watchdogd, first pass':30} {wd_runs[0].wall:8.2f} "
          f"{sum(wd_requests.values()) // 2:>9} {wd_runs[0].rss_mb:12.0f}")
    print(f"{'watchdogd, second pass':30} {wd_runs[1].wall:8.2f} {'':>9} "
          f"{wd_runs[1].rss_mb:12.0f}")
    print(f"{'runbook (' + str(len(rb_runs)) + ' commands)':30} {rb_wall:8.2f} "
          f"{sum(rb_requests.values()):>9} {max(r.rss_mb for r in rb_runs):12.0f}")
    print(f"{'floor (http.client + json)':30} {floor.wall:8.2f} {'':>9} {floor.rss_mb:12.0f}")
    print(f"\nratio runbook / watchdogd: {rb_wall / wd_wall:.1f}x (target >= 10x)")
    floor_ok = wd_wall <= 1.5 * floor.wall and wd_runs[0].rss_mb <= 1.5 * floor.rss_mb
    print(f"watchdogd / floor: wall {wd_wall / floor.wall:.2f}x, peak RSS "
          f"{wd_runs[0].rss_mb / floor.rss_mb:.2f}x (goal <= 1.5x both) "
          f"{'PASS' if floor_ok else 'MISS'}")
    print("\nrequests per listing, both watchdogd passes (limit: ceil(n/page) + 10 each):")
    n_cinder = args.volumes
    limits = {"cinder volumes": math.ceil(n_cinder / CINDER_PAGE) + 10,
              "cinder attachments": math.ceil(args.attachments / CINDER_PAGE) + 10}
    for name in CLUSTERS:
        limits[f"{name} pvs"] = math.ceil(args.pvs / KUBE_PAGE) + 10
        limits[f"{name} pvcs"] = math.ceil(args.pvs / KUBE_PAGE) + 10
    ok = True
    for key, count in wd_requests.items():
        per_pass = count / 2
        limit = limits.get(key)
        verdict = "" if limit is None else ("ok" if per_pass <= limit else "OVER")
        ok &= verdict != "OVER"
        print(f"  {key:22} {per_pass:6.0f} per pass" + (f"   (limit {limit}) {verdict}"
                                                           if limit else ""))
    print("\nfound (watchdogd second pass / runbook / planted):")
    checks = [("volume-stuck", planted.stuck), ("attachment-stale", planted.dangling),
              ("orphan-volume", planted.orphans), ("released-pv", planted.released)]
    same = True
    for kind, expected in checks:
        wd, rb = wd_found.get(kind, set()), rb_found.get(kind, set())
        agree = wd == rb == expected
        same &= agree
        print(f"  {kind:18} {len(wd):6} / {len(rb):6} / {len(expected):6}"
              + ("" if agree else "  DIFFERENT"))
    users_agree = wd_found.get("affected-users", set()) == rb_found["affected-users"]
    same &= users_agree
    print(f"  {'users blocked':18} {len(wd_found.get('affected-users', ())):6} / "
          f"{len(rb_found['affected-users']):6} /      -"
          + ("" if users_agree else "  DIFFERENT")
          + "   (the runbook: two kubectl calls per event)")
    print(f"\nsame detection: {'yes' if same else 'NO'}")
    return 0 if same and ok and floor_ok and rb_wall / wd_wall >= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
