"""Scale benchmark of the ``certs`` and ``nodes`` checks: one pass over a big cluster.

The simulated cluster (500 nodes with 50 images each, 20,000 pods of which 2,000 Failed,
2,000 TLS secrets) runs in a child process, so the peak RSS printed is watchdogd's alone.
One engine pass of both checks (collect, detect, track in SQLite, decide in dry-run) is
timed, then the *floor*: the same list requests fetched and ``json.loads``-ed with
``requests``, nothing else. Target: pass / floor <= 3 and peak RSS <= 300 MB.

    .venv/bin/python bench/cluster.py [--nodes 500 --pods 20000 --failed 2000 --secrets 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def serve(args: argparse.Namespace) -> None:
    """Child: build the world, say where it is, serve until stdin closes."""
    from watchdogd.sim.kube import KubeSim
    from watchdogd.sim.seed import populate_scale

    sim = KubeSim().start()
    started = time.perf_counter()
    populate_scale(sim, nodes=args.nodes, images_per_node=args.images, pods=args.pods,
                   failed=args.failed, secrets=args.secrets)
    sim.write_kubeconfig(args.kubeconfig, context="bench")
    print(json.dumps({"url": sim.https_url, "token": sim.token, "ca": sim.ca_pem,
                      "build_s": round(time.perf_counter() - started, 2)}), flush=True)
    sys.stdin.read()
    sim.stop()


def floor(url: str, token: str, ca_file: Path, lists: list[tuple[str, dict[str, str]]],
          page: int) -> tuple[float, int, int]:
    """Fetch every list page by page (over the same TLS) and parse it: the least any
    client can do."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"

    started = time.perf_counter()
    count = items = 0
    for path, params in lists:
        cont = None
        while True:
            query = {**params, "limit": str(page)}
            if cont:
                query["continue"] = cont
            # verify per request: a REQUESTS_CA_BUNDLE in the environment beats session.verify
            response = session.get(url + path, params=query, timeout=60, verify=str(ca_file))
            response.raise_for_status()
            count += 1
            data = json.loads(response.content)
            items += len(data["items"])
            cont = data["metadata"].get("continue")
            if not cont:
                break
    return time.perf_counter() - started, count, items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--pods", type=int, default=20_000)
    parser.add_argument("--failed", type=int, default=2_000)
    parser.add_argument("--secrets", type=int, default=2_000)
    parser.add_argument("--passes", type=int, default=2, help="passes to time (first is cold)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="watchdogd-bench-cluster-") as tmp:
        return measure(args, Path(tmp))


def measure(args: argparse.Namespace, workdir: Path) -> int:
    """Start the cluster child with its kubeconfig in ``workdir``; run the pass and floor."""
    kubeconfig = workdir / "kubeconfig"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--kubeconfig", str(kubeconfig),
         "--nodes", str(args.nodes), "--images", str(args.images), "--pods", str(args.pods),
         "--failed", str(args.failed), "--secrets", str(args.secrets)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        info: dict[str, Any] = json.loads(child.stdout.readline())
        print(f"world: {args.nodes} nodes x {args.images} images, {args.pods} pods "
              f"({args.failed} failed), {args.secrets} TLS secrets; built in "
              f"{info['build_s']}s (child process)")
        return run(args, workdir, kubeconfig, info)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)


def run(args: argparse.Namespace, workdir: Path, kubeconfig: Path, info: dict[str, Any]) -> int:
    # Process start-up is not part of a pass: a daemon imports the sources once. The kube
    # source lists by path through ApiClient (raw JSON), never CoreV1Api, so nothing here
    # imports it either. The first pass still pays for connections, kubeconfig loading and
    # a cold state store.
    import watchdogd.sources.kube
    import watchdogd.sources.tls  # noqa: F401
    from watchdogd.app import build
    from watchdogd.config import Config

    config = Config.model_validate({
        "state": {"url": f"sqlite:///{workdir}/state.db"},
        "remediation": {"dry_run": True, "enabled": ["delete-pod"]},
        "daemon": {"pass_timeout": "10m"},
        "clusters": {"bench": {"kubeconfig": str(kubeconfig), "context": "bench",
                               "timeout": "60s"}},
        "checks": {"certs": {"secrets_clusters": ["bench"]},
                   "nodes": {"clusters": ["bench"], "dedicated_core": True}},
    })
    page = config.clusters["bench"].page_size
    app = build(config, notify=False)
    engine = app.engine
    results = []
    for n in range(args.passes):
        started = time.perf_counter()
        report = engine.run_pass(only=["certs", "nodes"])
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        requests = sum(c.requests for c in report.checks)
        findings = {f"{c.check}/{c.target}": (c.status, len(c.findings), c.error)
                    for c in report.checks}
        kinds: dict[str, int] = {}
        for check in report.checks:
            for f in check.findings:
                kind = f.tracked.finding.kind
                kinds[kind] = kinds.get(kind, 0) + 1
        results.append((wall, requests, peak_mb))
        print(f"pass {n + 1} ({'cold store' if n == 0 else 'warm store'}): {wall:.2f}s wall, "
              f"{requests} requests, peak RSS {peak_mb:.0f} MB")
        print(f"  targets: {findings}")
        print(f"  findings: {dict(sorted(kinds.items()))}")
    app.close()

    lists = [
        ("/api/v1/nodes", {}),
        ("/api/v1/namespaces", {"fieldSelector": "status.phase=Terminating"}),
        ("/api/v1/pods", {"fieldSelector": "status.phase=Failed"}),
        ("/api/v1/pods", {"labelSelector": "component in (hub,proxy)"}),
        ("/api/v1/secrets", {"fieldSelector": "type=kubernetes.io/tls"}),
    ]
    ca_file = workdir / "sim-ca.pem"
    ca_file.write_text(info["ca"])
    floors = [floor(info["url"], info["token"], ca_file, lists, page) for _ in range(3)]
    floor_s = min(f[0] for f in floors)
    print(f"floor (the same {floors[0][1]} requests, {floors[0][2]} items, fetch + json.loads, "
          f"sequential, best of 3): {floor_s:.2f}s")
    ok = True
    for n, (wall, _requests, peak_mb) in enumerate(results):
        ratio = wall / floor_s
        print(f"pass {n + 1}: ratio {ratio:.2f} (target <= 3), peak RSS {peak_mb:.0f} MB "
              "(target <= 300)")
        ok = ok and ratio <= 3 and peak_mb <= 300
    print("OK" if ok else "OVER TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
