"""Scale benchmark of the ``labs`` check: one pass over a Nublado hub of 10,000 users.

The world (``watchdogd.sim``, a :class:`~watchdogd.sim.parts.NubladoPart` beside the world's
own hub): a Nublado hub whose database holds 10,000 users and 3,000 running labs (rows
written in bulk), 3,000 lab namespaces ``nublado-<user>`` and lab pods with Nublado's labels
in the Kubernetes simulator, and the lab controller's memory holding the same 3,000 labs as
running. Everything agrees, so a pass must find nothing and look nothing up by name: any
finding, lookup or error aborts the benchmark.

Measured in this process, after one cold pass (adapters built, connections opened):
``--repeat`` rounds of one warm ``Engine.run_pass(only=["labs"])`` (dry-run, the real
sources) and one warm *floor* (the same requests through ``requests`` and ``json.loads``,
concurrently, one thread per list, as the engine collects), alternating which goes first;
median wall times and their ratio; HTTP requests per pass per source, counted by the
simulators as they arrive. Targets: requests <= ceil(n/500) + 10 per source (n = users),
wall ratio <= 3. The simulators serve from this process, so CPU time and peak RSS are not
watchdogd's alone and are not judged here (``bench/sessions.py`` measures them for the same
sources in a fresh process). Exit 0 when every target is met, 1 when one is missed, 2 when
the benchmark could not run.

    .venv/bin/python bench/labs.py [--users 10000 --running 3000 --repeat 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import render_table, request_bound, verdict  # noqa: E402

RATIO_TARGET = 3.0
HUB_PAGE = 200


class BenchError(Exception):
    """The benchmark could not run (exit 2)."""


def build(world: Any, users: int, running: int) -> list[str]:
    """Fill the Nublado part in bulk: hub rows, namespaces, pods, the controller's memory."""
    from watchdogd.sim.hub import ServerInfo, route_key
    from watchdogd.sim.parts import NubladoPart

    part = world.parts["nublado"]
    assert isinstance(part, NubladoPart)
    hub, ctl = part.hub, part.controller
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    run_at = {int(k * users / running) for k in range(running)} if running else set()
    names = [f"user-{i:05d}" for i in range(users)]
    db = sqlite3.connect(hub.db_path, isolation_level=None)
    objects: list[dict[str, Any]] = []
    running_names: list[str] = []
    try:
        db.execute("BEGIN IMMEDIATE")
        server_id = 0
        for i, name in enumerate(names):
            user_id = i + 1
            stamp = (now - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
            db.execute("INSERT INTO users (id, name, admin, created, last_activity, cookie_id) "
                       "VALUES (?, ?, 0, ?, ?, ?)", (user_id, name, stamp, stamp, f"c{i}"))
            if i not in run_at:
                db.execute("INSERT INTO spawners (user_id, state, name, display_name) "
                           "VALUES (?, '{}', '', '')", (user_id,))
                continue
            server_id += 1
            ip = f"10.{1 + server_id // 62500}.{(server_id // 250) % 250}.{server_id % 250 + 2}"
            client = f"jupyterhub-user-{name}"
            db.execute("INSERT INTO servers (id, proto, ip, port, base_url, cookie_name) "
                       "VALUES (?, 'http', ?, 8888, ?, 'cookie')",
                       (server_id, ip, f"/user/{name}/"))
            db.execute("INSERT INTO oauth_clients (identifier, description, secret, "
                       "redirect_uri, allowed_scopes) VALUES (?, 'lab', 'x', 'x', '[]')",
                       (client,))
            db.execute("INSERT INTO spawners (user_id, server_id, state, name, display_name, "
                       "started, last_activity, oauth_client_id) VALUES (?, ?, '{}', '', '', "
                       "?, ?, ?)", (user_id, server_id, stamp, stamp, client))
            namespace, pod_name = ctl.names(name)
            info = ServerInfo(name, "", namespace, pod_name, ip, 8888, route_key(name))
            objects.append(hub._pod(info, "nublado", hub.kubespawner_version, "Running",
                                    f"node-{server_id % 3 + 1}", now.replace(tzinfo=UTC)))
            objects.append({"kind": "Namespace", "apiVersion": "v1",
                            "metadata": {"name": namespace, "labels": {
                                "nublado.lsst.io/category": "lab",
                                "nublado.lsst.io/user": name}},
                            "spec": {"finalizers": ["kubernetes"]},
                            "status": {"phase": "Active"}})
            running_names.append(name)
        db.execute("COMMIT")
    finally:
        db.close()
    world.kube.put_many(objects)
    for name in running_names:
        ctl.remember(name)
    return running_names


class Floor:
    """The labs check's four lists with no processing beyond ``json.loads``."""

    def __init__(self, config: Any, hub_name: str) -> None:
        import requests
        import yaml

        hub = config.hubs[hub_name]
        cluster = config.clusters[hub.cluster]
        self.timeout = hub.timeout.total_seconds()
        self.selector = hub.user_pod_selector()
        self.api_url, self.nublado_url = hub.api_url, hub.nublado_url
        self.hub = requests.Session()
        self.hub.headers.update({"Authorization": f"token {hub.api_token.get_secret_value()}",
                                 "Accept": "application/jupyterhub-pagination+json"})
        self.ctl = requests.Session()
        self.ctl.headers["Authorization"] = f"Bearer {hub.nublado_token.get_secret_value()}"
        with open(cluster.kubeconfig, encoding="utf-8") as fh:
            kubeconfig = yaml.safe_load(fh)
        context = next(c["context"] for c in kubeconfig["contexts"]
                       if c["name"] == cluster.context)
        server = next(c["cluster"] for c in kubeconfig["clusters"]
                      if c["name"] == context["cluster"])
        user = next(u["user"] for u in kubeconfig["users"] if u["name"] == context["user"])
        # The simulator serves http and https on one port; the floor skips TLS, which only
        # makes the floor cheaper than the pass (a stricter target).
        self.kube_url = server["server"].rstrip("/").replace("https://", "http://")
        self.kube = requests.Session()
        self.kube.headers["Authorization"] = f"Bearer {user['token']}"

    def hub_users(self) -> int:
        offset, count = 0, 0
        while True:
            page = json.loads(self.hub.get(f"{self.api_url}/users", params={
                "state": "active", "offset": offset, "limit": HUB_PAGE},
                timeout=self.timeout).content)
            count += len(page["items"])
            nxt = page["_pagination"]["next"]
            if not nxt:
                return count
            offset = nxt["offset"]

    def labs(self) -> int:
        return len(json.loads(self.ctl.get(f"{self.nublado_url}/spawner/v1/labs",
                                           timeout=self.timeout).content))

    def kube_list(self, path: str, selector: str | None) -> int:
        token, count = "", 0
        while True:
            params: dict[str, Any] = {"limit": 500}
            if selector:
                params["labelSelector"] = selector
            if token:
                params["continue"] = token
            page = json.loads(self.kube.get(f"{self.kube_url}{path}", params=params,
                                            timeout=self.timeout).content)
            count += len(page["items"])
            token = page["metadata"].get("continue") or ""
            if not token:
                return count

    def run(self) -> None:
        calls: list[Callable[[], int]] = [
            self.hub_users, self.labs,
            lambda: self.kube_list("/api/v1/pods", self.selector),
            lambda: self.kube_list("/api/v1/namespaces", None)]
        with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
            for future in [pool.submit(c) for c in calls]:
                future.result()


def counts(world: Any) -> dict[str, int]:
    part = world.parts["nublado"]
    return {"hubapi": len(part.hub.requests), "nublado": len(part.controller.requests),
            "kube": len(world.kube.requests)}


def run(args: argparse.Namespace) -> int:
    from watchdogd.sim.parts import NubladoPart
    from watchdogd.sim.world import World

    with World(parts=[NubladoPart()], timeout="30s") as world:
        started = time.monotonic()
        running = build(world, args.users, args.running)
        print(f"world: {args.users} users, {len(running)} running labs "
              f"({time.monotonic() - started:.1f}s to build)", file=sys.stderr)
        engine = world.engine(dry_run=True)
        config = world.load_config()

        def one_pass() -> dict[str, Any]:
            report = engine.run_pass(only=["labs"]).as_json()
            [check] = [c for c in report["checks"] if c["check"] == "labs"]
            if check["status"] != "ok" or check["findings"]:
                raise BenchError(f"the pass was not clean: {check['status']} "
                                 f"{check['error']} {len(check['findings'])} finding(s)")
            return check

        one_pass()  # cold
        floor = Floor(config, "rsp")
        floor.run()  # cold
        passes: list[float] = []
        floors: list[float] = []
        requests_per_pass: dict[str, int] = {}
        for round_no in range(args.repeat):
            order = ("pass", "floor") if round_no % 2 == 0 else ("floor", "pass")
            for what in order:
                before = counts(world)
                t0 = time.perf_counter()
                if what == "pass":
                    one_pass()
                    passes.append(time.perf_counter() - t0)
                    after = counts(world)
                    requests_per_pass = {k: after[k] - before[k] for k in before}
                else:
                    floor.run()
                    floors.append(time.perf_counter() - t0)
    wall, base = statistics.median(passes), statistics.median(floors)
    bound = request_bound(args.users)
    rows = [["wall (median)", f"{wall * 1000:.0f} ms", f"floor {base * 1000:.0f} ms",
             f"ratio {wall / base:.2f} <= {RATIO_TARGET:g}", verdict(wall / base <= RATIO_TARGET)]]
    ok = wall / base <= RATIO_TARGET
    for source, n in requests_per_pass.items():
        rows.append([f"requests {source}", str(n), "", f"<= {bound}", verdict(n <= bound)])
        ok = ok and n <= bound
    print(render_table(["measure", "pass", "", "target", ""], rows))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--running", type=int, default=3_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if not 0 <= args.running <= args.users or args.repeat < 1:
        parser.error("need --running <= --users and --repeat >= 1")
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench/labs.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
