"""Scale benchmark of the ``sessions`` check: one full pass over a hub of 10,000 users.

The world (``watchdogd.sim``): a hub database with 10,000 users and 3,000 running servers
(JupyterHub 6's tables: users, spawners with KubeSpawner state, servers, oauth_clients),
3,000 proxy routes in the CHP simulator, 3,000 user pods with KubeSpawner's names, labels
and annotations plus the hub pod in the Kubernetes simulator, and the Hub REST API serving
the same rows. The database is read twice over: from the hub's SQLite file, and from a
real PostgreSQL server holding a copy of the same rows (``tests/peers/postgres.py``); the
Hub API keeps answering from its SQLite copy in both cases. Everything agrees, so a pass
must find nothing: any finding or error aborts the benchmark (a pass that skipped work is
not a measurement).

Measured per backend, in a fresh process of its own (so that its peak RSS is watchdogd's,
not the simulators', which stay in this process):

* **pass**: the real ``Engine.run_pass(only=["sessions"])`` with the real sources,
  dry-run, on the world's configuration;
* **floor**: the same reads with no processing: the same Hub API pages (200 users each)
  and the CHP routes through ``requests``, the same pod list pages (500 each) and the hub
  pod list through ``urllib3`` (the transports the sources use), each body through
  ``json.loads``, and the same three SQL statements through the bare driver (``sqlite3``
  / ``psycopg``), fetched concurrently one thread per observation, as the engine does.

One cold pass and one cold floor first (adapters built, connections opened, the
Kubernetes client imported: what a CronJob run pays), then ``--repeat`` rounds of one
warm pass and one warm floor, alternating which goes first. Printed: median wall times,
their ratio, the median CPU time of the measuring process (``time.process_time``, all its
threads; the simulators run in the driver, so their CPU is not in it) for the pass and
the floor and that ratio, HTTP requests per pass per source (counted by the simulators
themselves; SQL statements by the hub DB engine), and peak RSS. Targets: wall ratio <= 3
and CPU ratio <= 3, requests <= ceil(n/500) + 10 per source, peak RSS <= 300 MB. Exit 0
when every target is met, 1 when one is missed, 2 when the benchmark could not run.

    .venv/bin/python bench/sessions.py [--users 10000 --running 3000 --repeat 5]
                                        [--backend sqlite --backend postgresql] [--no-tls]
                                        [--profile]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import cProfile
import io
import itertools
import json
import os
import pstats
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    own_peak_rss_mb,
    peak_rss_mb,
    render_table,
    request_bound,
    spawn_fresh,
    verdict,
)

RATIO_TARGET = 3.0
RSS_TARGET_MB = 300.0
SOURCES = ("hubapi", "proxy", "kube", "hubdb")
HUB_PAGE = 200  # the Hub API's maximum page, what the hubapi source asks for

# The statements HubDbSource.sessions() sends, written out for the bare drivers.
FLOOR_SQL = (
    "SELECT alembic_version.version_num FROM alembic_version",
    "SELECT users.name FROM users",
    'SELECT users.name AS "user", spawners.name AS server_name, spawners.server_id, '
    "spawners.state, spawners.started, spawners.last_activity, servers.proto, servers.ip, "
    "servers.port, servers.base_url FROM spawners JOIN users ON users.id = spawners.user_id "
    "LEFT OUTER JOIN servers ON servers.id = spawners.server_id "
    "WHERE spawners.server_id IS NOT NULL",
)

# JupyterHub 6's orm.py on PostgreSQL: the same tables and columns HubSim creates on SQLite.
PG_DDL = (
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
    "CREATE TABLE servers (id SERIAL NOT NULL, proto VARCHAR(15), ip VARCHAR(255), "
    "port INTEGER, base_url VARCHAR(255), cookie_name VARCHAR(255), "
    "CONSTRAINT pk_servers PRIMARY KEY (id))",
    "CREATE TABLE users (id SERIAL NOT NULL, name VARCHAR(255), user_info TEXT, "
    "admin BOOLEAN, created TIMESTAMP WITHOUT TIME ZONE, "
    "last_activity TIMESTAMP WITHOUT TIME ZONE, cookie_id VARCHAR(255) NOT NULL, state TEXT, "
    "encrypted_auth_state BYTEA, CONSTRAINT pk_users PRIMARY KEY (id), "
    "CONSTRAINT uq_users_name UNIQUE (name), CONSTRAINT uq_users_cookie_id UNIQUE (cookie_id))",
    "CREATE TABLE oauth_clients (id SERIAL NOT NULL, identifier VARCHAR(255), "
    "description VARCHAR(1023), secret VARCHAR(255), redirect_uri VARCHAR(1023), "
    "allowed_scopes TEXT, CONSTRAINT pk_oauth_clients PRIMARY KEY (id), "
    "CONSTRAINT uq_oauth_clients_identifier UNIQUE (identifier))",
    "CREATE TABLE spawners (id SERIAL NOT NULL, user_id INTEGER, server_id INTEGER, "
    "state TEXT, name VARCHAR(255), display_name VARCHAR(255), "
    "started TIMESTAMP WITHOUT TIME ZONE, last_activity TIMESTAMP WITHOUT TIME ZONE, "
    "user_options TEXT, oauth_client_id VARCHAR(255), CONSTRAINT pk_spawners PRIMARY KEY (id), "
    "CONSTRAINT fk_spawners_user_id_users FOREIGN KEY(user_id) REFERENCES users (id) "
    "ON DELETE CASCADE, CONSTRAINT fk_spawners_server_id_servers FOREIGN KEY(server_id) "
    "REFERENCES servers (id) ON DELETE SET NULL, CONSTRAINT "
    "fk_spawners_oauth_client_id_oauth_clients FOREIGN KEY(oauth_client_id) "
    "REFERENCES oauth_clients (identifier) ON DELETE SET NULL)",
)

INSERTS = {
    "users": "INSERT INTO users (id, name, admin, created, last_activity, cookie_id) "
             "VALUES (%s, %s, %s, %s, %s, %s)",
    "servers": "INSERT INTO servers (id, proto, ip, port, base_url, cookie_name) "
               "VALUES (%s, %s, %s, %s, %s, %s)",
    "oauth_clients": "INSERT INTO oauth_clients (identifier, description, secret, "
                     "redirect_uri, allowed_scopes) VALUES (%s, %s, %s, %s, %s)",
    "spawners": "INSERT INTO spawners (user_id, server_id, state, name, display_name, "
                "started, last_activity, oauth_client_id) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
}


class BenchError(Exception):
    """The benchmark could not run (exit 2), as opposed to a missed target (exit 1)."""


# ----------------------------------------------------------------------------------------
# The world (driver process)
# ----------------------------------------------------------------------------------------


@dataclass
class HubRows:
    """The hub database's rows, built once and written to SQLite and PostgreSQL alike.

    Timestamps are naive UTC ``datetime`` objects, as JupyterHub stores them.
    """

    users: list[tuple[Any, ...]] = field(default_factory=list)
    servers: list[tuple[Any, ...]] = field(default_factory=list)
    oauth_clients: list[tuple[Any, ...]] = field(default_factory=list)
    spawners: list[tuple[Any, ...]] = field(default_factory=list)

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """Table name -> rows, in foreign-key order."""
        return {"users": self.users, "servers": self.servers,
                "oauth_clients": self.oauth_clients, "spawners": self.spawners}


def user_name(i: int) -> str:
    """Mostly plain names; every tenth an e-mail address, which KubeSpawner 7's safe slug
    scheme must hash (``user9-example-org---1a2b3c4d``), as on real hubs."""
    return f"user{i}@example.org" if i % 10 == 9 else f"user-{i:05d}"


def build_world(world: Any, users: int, running: int) -> HubRows:
    """Fill the started ``world`` in bulk: hub DB rows, pods (``put_many``) and routes.

    Pods come from the hub simulator's own pod template and ``pod_location`` (KubeSpawner
    names, labels, annotations), so they are exactly what ``HubSim.start_server`` makes;
    building 3,000 servers one ``start_server`` at a time would only be slower.
    """
    from watchdogd.sim.hub import ServerInfo, route_key

    hub = world.hub
    now = datetime.now(UTC).replace(microsecond=0)
    naive_now = now.replace(tzinfo=None)
    run_at = {int(k * users / running) for k in range(running)} if running else set()
    rows = HubRows()
    pods: list[dict[str, Any]] = []
    server_id = 0
    for i in range(users):
        user_id = i + 1
        name = user_name(i)
        created = naive_now - timedelta(days=30 + i % 300)
        rows.users.append((user_id, name, False, created, naive_now, uuid.uuid4().hex))
        if i not in run_at:
            rows.spawners.append((user_id, None, "{}", "", "", None, created, None))
            continue
        server_id += 1
        ip = f"10.{1 + server_id // 62500}.{(server_id // 250) % 250}.{server_id % 250 + 2}"
        namespace, pod_name = hub.pod_location(name)
        base_url = f"/user/{name}/"
        client = f"jupyterhub-user-{name}"
        started = naive_now - timedelta(minutes=5 + i % 600)
        state = json.dumps({"kubespawner_version": hub.kubespawner_version,
                            "pod_name": pod_name, "namespace": namespace,
                            "dns_name": f"{pod_name}.{namespace}.svc.cluster.local"})
        rows.servers.append((server_id, "http", ip, 8888, base_url, "cookie"))
        rows.oauth_clients.append((client, f"Server at {base_url}", "sha512:sim",
                                   base_url + "oauth_callback",
                                   json.dumps([f"access:servers!server={name}/"])))
        rows.spawners.append((user_id, server_id, state, "", "", started, naive_now, client))
        info = ServerInfo(name, "", namespace, pod_name, ip, 8888, route_key(name))
        pods.append(hub._pod(info, "kubespawner", hub.kubespawner_version, "Running",
                             f"node-{server_id % 3 + 1}", started.replace(tzinfo=UTC)))
        world.chp.add_route(info.route, info.target, user=name, server_name="",
                            jupyterhub=True)
    write_sqlite(hub.db_path, rows)
    world.kube.put_many(pods)
    return rows


def _sqlite_value(value: Any) -> Any:
    """How SQLAlchemy stores a naive DateTime on SQLite (JupyterHub's own writes)."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def write_sqlite(path: Path, rows: HubRows) -> None:
    """Bulk-insert the rows into the hub simulator's SQLite file (one transaction)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        if db.execute("SELECT count(*) FROM users").fetchone()[0]:
            raise BenchError("the hub database is not empty")
        db.execute("BEGIN IMMEDIATE")
        for table, data in rows.tables().items():
            db.executemany(INSERTS[table].replace("%s", "?"),
                           [tuple(_sqlite_value(v) for v in row) for row in data])
        db.execute("COMMIT")
        db.execute("ANALYZE")
    finally:
        db.close()


def write_postgres(url: str, rows: HubRows) -> None:
    """Create the hub's tables in a fresh PostgreSQL database and copy the rows in."""
    import psycopg

    from watchdogd.sim.hub import ALEMBIC_6X

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        for ddl in PG_DDL:
            cur.execute(ddl)
        cur.execute("INSERT INTO alembic_version (version_num) VALUES (%s)", (ALEMBIC_6X,))
        cur.execute("INSERT INTO oauth_clients (identifier, description, secret, redirect_uri, "
                    "allowed_scopes) VALUES ('jupyterhub', 'JupyterHub', '', '', '[]')")
        for table, data in rows.tables().items():
            cur.executemany(INSERTS[table], data)
        conn.commit()
        cur.execute("ANALYZE")  # what autovacuum would have done on a hub this size
        conn.commit()


def backend_config(world: Any, backend: str, db_url: str) -> Path:
    """The world's configuration with this backend's hub DB URL and a state DB of its own."""
    from watchdogd.sim.world import dumps_toml

    def secret(name: str, value: str) -> str:
        path = Path(world.secrets_dir) / name
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        return str(path)

    data = world.config_data()
    data["hubs"][world.hub_name]["db_url_file"] = secret(f"hub_db_url_{backend}", db_url)
    data["state"] = {"url_file": secret(
        f"state_url_{backend}", f"sqlite:///{Path(world.workdir) / f'state-{backend}.db'}")}
    path = Path(world.workdir) / f"watchdogd-{backend}.toml"
    path.write_text("# bench/sessions.py\n" + dumps_toml(data), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------
# Driving a measuring child
# ----------------------------------------------------------------------------------------


def sim_counts(world: Any) -> dict[str, int]:
    """How many requests each simulator has received so far."""
    return {"hubapi": len(world.hub.requests), "proxy": len(world.chp.requests),
            "kube": len(world.kube.requests)}


def run_child(world: Any, config: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one backend in a fresh process; attribute the simulators' requests to phases.

    The child announces each phase (``@@mark LABEL``) and waits for ``go``; the driver
    notes how many requests each simulator had seen at that moment. Requests between two
    marks belong to the phase the first one opened, counted where they arrive.
    """
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(config),
            "--repeat", str(args.repeat)]
    if args.profile:
        argv.append("--profile")
    proc = spawn_fresh(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                       bufsize=1)
    assert proc.stdin is not None and proc.stdout is not None
    marks: list[tuple[str, dict[str, int]]] = []
    result: dict[str, Any] | None = None
    try:
        for line in proc.stdout:
            if line.startswith("@@mark "):
                marks.append((line[len("@@mark "):].strip(), sim_counts(world)))
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif line.startswith("@@result "):
                result = json.loads(line[len("@@result "):])
            else:
                sys.stderr.write(line)
    finally:
        proc.stdin.close()  # a child still waiting for "go" sees EOF and ends
        code = proc.wait()
    if code != 0 or result is None:
        raise BenchError(f"the measuring process failed (exit {code}); see above")
    phases: dict[str, dict[str, int]] = {}
    for (label, before), (_, after) in itertools.pairwise(marks):
        phases[label] = {k: after[k] - before[k] for k in before}
    result["phases"] = phases
    return result


# ----------------------------------------------------------------------------------------
# The measuring child
# ----------------------------------------------------------------------------------------


class Floor:
    """The same reads as one pass, with no processing beyond ``json.loads``.

    Built inside the cold measurement, as the engine builds its adapters in its first pass.
    """

    def __init__(self, config: Any, hub_name: str) -> None:
        import requests
        import sqlalchemy as sa
        import urllib3
        import yaml

        hub = config.hubs[hub_name]
        cluster = config.clusters[hub.cluster]
        self.timeout = hub.timeout.total_seconds()
        self.namespace = hub.namespace
        # The selectors the sessions check asks for (an empty one lists every pod).
        self.pod_selector: str | None = hub.user_pod_selector() or None
        self.hub_pod_selector: str | None = hub.hub_pod_selector or None
        self.api_url = hub.api_url
        self.proxy_url = hub.proxy_api_url
        self.hub_session = requests.Session()
        self.hub_session.headers.update({
            "Authorization": f"token {hub.api_token.get_secret_value()}",
            "Accept": "application/jupyterhub-pagination+json"})
        self.proxy_session = requests.Session()
        self.proxy_session.headers["Authorization"] = (
            f"token {hub.proxy_token.get_secret_value()}")
        with open(os.path.expanduser(cluster.kubeconfig), encoding="utf-8") as fh:
            kubeconfig = yaml.safe_load(fh)
        context = next(c["context"] for c in kubeconfig["contexts"]
                       if c["name"] == (cluster.context or kubeconfig["current-context"]))
        server = next(c["cluster"] for c in kubeconfig["clusters"]
                      if c["name"] == context["cluster"])
        user = next(u["user"] for u in kubeconfig["users"] if u["name"] == context["user"])
        self.kube_url = server["server"].rstrip("/")
        self.kube_headers = {"Authorization": f"Bearer {user['token']}",
                             "Accept": "application/json"}
        ca = server.get("certificate-authority-data")
        self.kube_tls = self.kube_url.startswith("https")
        # Two lists run at once (pods, hub pods): two pooled connections, as the client keeps.
        self.kube = (urllib3.PoolManager(maxsize=4, cert_reqs="CERT_REQUIRED",
                                         ca_cert_data=base64.b64decode(ca).decode())
                     if self.kube_tls and ca else urllib3.PoolManager(maxsize=4))
        self.db_url = sa.make_url(hub.db_url.get_secret_value())
        self._pg: Any = None

    def hub_users(self) -> int:
        """The Hub API's active users, page after page, as hubapi.active_servers asks."""
        pages: list[Any] = []
        offset, count = 0, 0
        while True:
            params: dict[str, str | int] = {"state": "active", "offset": offset,
                                            "limit": HUB_PAGE}
            response = self.hub_session.get(f"{self.api_url}/users", params=params,
                                            timeout=self.timeout)
            response.raise_for_status()
            page = json.loads(response.content)
            pages.append(page)
            count += len(page["items"])
            nxt = page["_pagination"]["next"]
            if not nxt:
                return count
            offset = nxt["offset"]

    def routes(self) -> int:
        """CHP's routing table."""
        response = self.proxy_session.get(f"{self.proxy_url}/api/routes", timeout=self.timeout)
        response.raise_for_status()
        return len(json.loads(response.content))

    def pods(self, selector: str | None) -> int:
        """Pods of the hub's namespace matching ``selector``, 500 a page."""
        import urllib3

        pages: list[Any] = []
        token, count = "", 0
        while True:
            query: dict[str, Any] = {"limit": 500}
            if selector:
                query["labelSelector"] = selector
            if token:
                query["continue"] = token
            response = self.kube.request(
                "GET", f"{self.kube_url}/api/v1/namespaces/{self.namespace}/pods?"
                + urlencode(query), headers=self.kube_headers,
                timeout=urllib3.Timeout(total=self.timeout))
            if response.status != 200:
                raise BenchError(f"floor: pod list answered {response.status}")
            page = json.loads(response.data)
            pages.append(page)
            count += len(page["items"])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return count

    def database(self) -> int:
        """The three statements of HubDbSource.sessions() in one read-only transaction."""
        url = self.db_url
        if url.get_backend_name() == "sqlite":
            # A fresh read-only connection each time, as the source's NullPool makes.
            conn = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True,
                                   isolation_level=None)
            try:
                conn.execute("BEGIN")
                results = [conn.execute(sql).fetchall() for sql in FLOOR_SQL]
                conn.execute("COMMIT")
            finally:
                conn.close()
        else:
            import psycopg

            if self._pg is None:  # kept open, as the source's connection pool does
                conninfo = url.set(drivername="postgresql").render_as_string(
                    hide_password=False)
                self._pg = psycopg.connect(conninfo, autocommit=True)
            self._pg.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            results = [self._pg.execute(sql).fetchall() for sql in FLOOR_SQL]
            self._pg.execute("COMMIT")
        return len(results[1]) + len(results[2])

    def run(self) -> dict[str, int]:
        """All five reads concurrently, one thread each, as the engine collects them."""
        jobs: dict[str, Callable[[], int]] = {
            "hub_db": self.database, "hub_api": self.hub_users, "routes": self.routes,
            "pods": lambda: self.pods(self.pod_selector),
            "hub_pods": lambda: self.pods(self.hub_pod_selector),
        }
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = {name: pool.submit(job) for name, job in jobs.items()}
            return {name: future.result() for name, future in futures.items()}


def mark(label: str) -> None:
    """Tell the driver a phase starts and wait until it has counted the requests so far."""
    sys.stdout.write(f"@@mark {label}\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        raise BenchError("the driver went away")


def child(config_path: str, repeat: int, profile: bool) -> int:
    """Measure passes and floors on one configuration; print one ``@@result`` JSON line."""
    import sqlalchemy as sa

    from watchdogd.app import build, load_config
    from watchdogd.logs import configure

    configure(level="WARNING")  # stderr; stdout carries the protocol
    config = load_config(config_path)
    hub_name = next(iter(config.hubs))
    app = build(config, dry_run=True, notify=False)
    engine, sources = app.engine, app.sources
    statements = [0]

    def count_statement(*_: Any) -> None:
        statements[0] += 1

    def one_pass() -> dict[str, Any]:
        before = statements[0]
        started, cpu_started = time.perf_counter(), time.process_time()
        report = engine.run_pass(only=["sessions"])
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        results = [c for c in report.checks if c.target == hub_name]
        if len(results) != 1 or results[0].status != "ok" or results[0].findings:
            got = [(c.target, c.status, c.error, len(c.findings)) for c in report.checks]
            raise BenchError(f"the pass did not see a healthy world: {got}")
        return {"wall": wall, "cpu": cpu, "counted": results[0].requests,
                "statements": statements[0] - before}

    def one_floor(floor: Floor) -> tuple[float, float, dict[str, int]]:
        started, cpu_started = time.perf_counter(), time.process_time()
        sizes = floor.run()
        return time.perf_counter() - started, time.process_time() - cpu_started, sizes

    # The hubdb adapter is built by the first pass; count its statements from then on.
    mark("engine-cold")
    cold = one_pass()
    hubdb_engine: sa.Engine = sources.adapter("hubdb", hub_name).engine
    sa.event.listen(hubdb_engine, "before_cursor_execute", count_statement)
    rss_first_pass = peak_rss_mb()

    mark("floor-cold")
    started = time.perf_counter()
    floor = Floor(config, hub_name)
    sizes = floor.run()
    floor_cold = time.perf_counter() - started

    passes: list[dict[str, Any]] = []
    floors: list[float] = []
    floor_cpus: list[float] = []
    for i in range(repeat):
        order = ("engine", "floor") if i % 2 == 0 else ("floor", "engine")
        for what in order:
            mark(f"{what}-{i}")
            if what == "engine":
                passes.append(one_pass())
            else:
                wall, cpu, sizes = one_floor(floor)
                floors.append(wall)
                floor_cpus.append(cpu)
    mark("end")
    result = {
        "pass_cold": cold["wall"], "floor_cold": floor_cold,
        "passes": passes, "floors": floors, "floor_cpus": floor_cpus, "sizes": sizes,
        "floor_statements": len(FLOOR_SQL),
        "rss_first_pass_mb": rss_first_pass, "rss_peak_mb": peak_rss_mb(),
        "vmhwm_mb": own_peak_rss_mb(),
    }
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one_pass()
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
        sys.stderr.write(out.getvalue())
    sys.stdout.write("@@result " + json.dumps(result) + "\n")
    sys.stdout.flush()
    app.close()
    return 0


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------


def evaluate(backend: str, result: dict[str, Any], users: int) -> tuple[list[list[str]],
                                                                         list[list[str]], bool]:
    """Rows of the timing table and of the request table for one backend; all targets met?"""
    walls = [p["wall"] for p in result["passes"]]
    pass_median = statistics.median(walls)
    floor_median = statistics.median(result["floors"])
    ratio = pass_median / floor_median
    # CPU of the measuring process alone (all its threads): the simulators serve from the
    # driver, so their work, which wall time shares with the client's, is not in it.
    pass_cpu = statistics.median(p["cpu"] for p in result["passes"])
    floor_cpu = statistics.median(result["floor_cpus"])
    cpu_ratio = pass_cpu / floor_cpu
    rss = result["rss_peak_mb"]
    ok = ratio <= RATIO_TARGET and cpu_ratio <= RATIO_TARGET and rss <= RSS_TARGET_MB
    timing = [backend, f"{pass_median:.3f}", f"{floor_median:.3f}",
              f"{ratio:.2f} {verdict(ratio <= RATIO_TARGET)}",
              f"{pass_cpu:.3f} / {floor_cpu:.3f}",
              f"{cpu_ratio:.2f} {verdict(cpu_ratio <= RATIO_TARGET)}",
              f"{min(walls):.3f}-{max(walls):.3f}",
              f"{result['pass_cold']:.3f} / {result['floor_cold']:.3f}",
              f"{rss:.0f} MB {verdict(rss <= RSS_TARGET_MB)}"]
    phases = result["phases"]
    engine_phases = [phases[f"engine-{i}"] for i in range(len(walls))]
    floor_phases = [phases[f"floor-{i}"] for i in range(len(result["floors"]))]
    sizes = result["sizes"]
    objects = {"hubapi": sizes["hub_api"], "proxy": sizes["routes"],
               "kube": sizes["pods"] + sizes["hub_pods"], "hubdb": users}
    requests_rows = []
    for source in SOURCES:
        if source == "hubdb":
            used = max(p["statements"] for p in result["passes"])
            floor_used = result["floor_statements"]
        else:
            used = max(p[source] for p in engine_phases)
            floor_used = max(p[source] for p in floor_phases)
        bound = request_bound(objects[source])
        ok = ok and used <= bound
        requests_rows.append([backend, source, str(used), str(floor_used),
                              f"{objects[source]:,}", str(bound), verdict(used <= bound)])
    http = max(sum(p[s] for s in ("hubapi", "proxy", "kube")) for p in engine_phases)
    counted = max(p["counted"] for p in result["passes"])
    requests_rows.append([backend, "all HTTP", str(http), "", "", "",
                          f"(the engine counted {counted} incl. hubdb)"])
    return [timing], requests_rows, ok


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--running", type=int, default=3_000)
    parser.add_argument("--repeat", type=int, default=5, help="warm rounds (median)")
    parser.add_argument("--backend", action="append", choices=("sqlite", "postgresql"),
                        help="hub DB backend(s); default both")
    parser.add_argument("--no-tls", dest="tls", action="store_false",
                        help="talk plain HTTP to the Kubernetes simulator")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one more warm pass in each child (to stderr)")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.running > args.users or args.repeat < 1:
        parser.error("need --running <= --users and --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """0: every target met; 1: a target missed; 2: the benchmark could not run."""
    args = parse_args(argv)
    try:
        if args.child:
            return child(args.child, args.repeat, args.profile)
        return drive(args)
    except BenchError as exc:
        print(f"bench/sessions.py: {exc}", file=sys.stderr)
        return 2


def drive(args: argparse.Namespace) -> int:
    """Build the world, measure each backend in its own process, print the verdicts."""
    from tests.peers.postgres import RealPostgres, postgres_available
    from watchdogd.sim.world import World

    backends: list[str] = args.backend or ["sqlite", "postgresql"]
    world = World(remediation={"dry_run": True}, timeout="30s")
    pg: RealPostgres | None = None
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    try:
        world.start()
        started = time.perf_counter()
        rows = build_world(world, args.users, args.running)
        notes.append(f"world built in {time.perf_counter() - started:.1f} s "
                     f"(hub DB on SQLite, pods with put_many, routes)")
        if not args.tls:
            world.kube.write_kubeconfig(world.kubeconfig_path, context=world.cluster_name,
                                        namespace=world.namespace, tls=False)
        for backend in backends:
            if backend == "sqlite":
                db_url = world.hub.db_url
            else:
                reason = postgres_available()
                if reason:
                    raise BenchError(f"postgresql: {reason} (or pass --backend sqlite)")
                started = time.perf_counter()
                pg = RealPostgres()
                try:
                    pg.start()
                    db_url = pg.create_database("jupyterhub")
                except (RuntimeError, TimeoutError, OSError) as exc:
                    raise BenchError(f"postgresql did not start: {exc}") from None
                write_postgres(db_url, rows)
                notes.append(f"PostgreSQL {pg.bindir.parent.name} started and loaded in "
                             f"{time.perf_counter() - started:.1f} s (the same rows)")
            results[backend] = run_child(world, backend_config(world, backend, db_url), args)
    finally:
        if pg is not None:
            pg.close()
        world.stop()

    timing_rows: list[list[str]] = []
    request_rows: list[list[str]] = []
    all_ok = True
    for backend, result in results.items():
        timing, requests_, ok = evaluate(backend, result, args.users)
        timing_rows += timing
        request_rows += requests_
        all_ok = all_ok and ok
    print(f"sessions benchmark: {args.users:,} users, {args.running:,} running servers, "
          f"{args.running:,} routes, {args.running:,} pods (+ the hub pod); Kubernetes API "
          f"over {'TLS' if args.tls else 'plain HTTP'}; dry run; medians of {args.repeat} "
          "warm rounds")
    for note in notes:
        print(f"  {note}")
    print()
    print(render_table(["backend", "pass (s)", "floor (s)", "ratio <= 3",
                        "CPU pass / floor (s)", "CPU ratio <= 3", "pass range",
                        "cold pass / floor (s)", "peak RSS <= 300"], timing_rows))
    print()
    print("requests per pass (HTTP counted by the simulators; hubdb = SQL statements sent)")
    print(render_table(["backend", "source", "pass", "floor", "n", "bound", "verdict"],
                       request_rows))
    print()
    rss_notes = ", ".join(f"{b}: {r['rss_first_pass_mb']:.0f} MB after the cold pass, "
                          f"VmHWM {r['vmhwm_mb'] or 0:.0f} MB" for b, r in results.items())
    print(f"peak RSS = ru_maxrss of each measuring process ({rss_notes})")
    print(f"bound = ceil(n/500) + 10; result: {verdict(all_ok)}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
