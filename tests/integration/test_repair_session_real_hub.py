"""``watchdogd repair-session`` and ``undo`` on real JupyterHub 5 and 6 databases, SQLite and
PostgreSQL.

A stop that never finishes (the spawner's stop hangs, its poll is frozen) leaves the hub
refusing the user ("pending stop") through its own API, and a hub killed then keeps the
session in its database (restarted, it would poll the frozen spawner and hang in the same
stop again). The test kills the hub process,
repairs the session with the real command, undoes it and compares every row of the hub's
tables byte for byte with the rows before, repairs again, starts the hub, and has the
user spawn; the user's token and named server survive throughout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.conftest import require_or_skip
from tests.integration.test_sessions_real_hub import ALEMBIC, HUB5_PYTHON
from tests.peers.jupyterhub import RealHub, hub_available
from tests.peers.postgres import RealPostgres
from watchdogd.cli import main
from watchdogd.sim.kube import KubeSim
from watchdogd.store import Store

pytestmark = pytest.mark.integration

#: the hub tables whose every row must come back exactly after an undo
TABLES = ("users", "spawners", "servers", "api_tokens", "oauth_clients")


def table_rows(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the hub tables, raw driver values (text as stored, bytes as bytes)."""
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))]  # noqa: S608
                    for t in TABLES}
    finally:
        engine.dispose()


def run(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def wait_until(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(params=[("6", "sqlite"), ("6", "postgresql"), ("5", "sqlite"),
                        ("5", "postgresql")], ids=lambda p: f"hub{p[0]}-{p[1]}")
def combo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RealHub, KubeSim,
                                                                            Path, str]]:
    version, backend = request.param
    require_or_skip(hub_available())
    if version == "5":
        require_or_skip(None if HUB5_PYTHON.exists() else
                        f"no JupyterHub 5 venv at {HUB5_PYTHON}: run scripts/setup-test-peers.sh")
    db_url = None
    if backend == "postgresql":
        postgres: RealPostgres = request.getfixturevalue("postgres")
        db_url = postgres.create_database(f"repair_{tmp_path.name[-12:].lower()}".replace("-", "_"))
    with KubeSim() as kube:
        hub = RealHub(tmp_path / "hub", db_url=db_url, kube_url=kube.url, kube_token=kube.token,
                      poll_interval=3600,
                      # a stop that hangs answers 202 after this long, not the default 10 s
                      extra_config="c.JupyterHub.tornado_settings = {'slow_stop_timeout': 1}")
        if version == "5":
            hub.python = str(HUB5_PYTHON)
        with hub:
            secrets = tmp_path / "secrets"
            secrets.mkdir()
            (secrets / "db_url").write_text(hub.db_url + "\n")
            (secrets / "state_url").write_text(f"sqlite:///{tmp_path}/state.db\n")
            (secrets / "api_token").write_text(hub.service_token + "\n")
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
            config = tmp_path / "watchdogd.toml"
            config.write_text(f"""
[state]
url_file = "secrets/state_url"
[clusters.sim]
kubeconfig = "{kubeconfig}"
timeout = "5s"
[hubs.main]
cluster = "sim"
namespace = "jhub"
api_url = "{hub.api_url}"
api_token_file = "secrets/api_token"
db_url_file = "secrets/db_url"
timeout = "5s"
""")
            engine = sa.create_engine(hub.db_url.replace("postgresql://",
                                                         "postgresql+psycopg://"))
            with engine.connect() as conn:
                revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")
                                        ).scalar()
            engine.dispose()
            assert revision == ALEMBIC[version]
            yield hub, kube, config, f"sqlite:///{tmp_path}/state.db"


def test_a_session_the_hub_cannot_clear_is_repaired_undone_and_repaired(
        combo: tuple[RealHub, KubeSim, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    hub, kube, config, state_url = combo
    cfg = ("--config", str(config))
    hub.create_user("alice")
    hub.create_user("bob")
    # A named server that exists, stopped, and a token of alice's: both must survive.
    hub.start_server("alice", "lab")
    hub.stop_server("alice", "lab")
    status, token = hub.api("POST", "/users/alice/tokens", body={"note": "keep me"})
    assert status in (200, 201), token
    hub.start_server("alice")
    hub.start_server("bob")

    # The stop that never finishes: the hub refuses both to stop and to start alice.
    hub.hang_stop("alice")
    hub.freeze("alice", "")
    status, _ = hub.api("DELETE", "/users/alice/server")
    assert status == 202
    wait_until("pending stop", lambda: (hub.server_model("alice") or {}).get("pending") == "stop")
    status, body = hub.api("POST", "/users/alice/server")
    assert status == 400 and "stop" in str(body).lower(), body

    # While the hub answers, the command refuses (75) and writes nothing.
    before_running = table_rows(hub.db_url)
    assert run("repair-session", "alice", "--hub", "main", "--yes", *cfg) == 75
    assert "the hub API answers" in capsys.readouterr().err
    assert table_rows(hub.db_url) == before_running

    # The hub dies with the stop pending (a graceful SIGTERM would cancel the stop, and
    # its cleanup clear the session): the database keeps the session, and a restarted
    # hub polls the frozen spawner, which says running, and the stop hangs again.
    hub.stop_hub(kill=True)
    # A hub pod still Running (the Deployment's, say) is a running hub too.
    kube.put({"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "hub-7d9f", "namespace": "jhub",
                           "labels": {"component": "hub"}},
              "spec": {"containers": [{"name": "hub", "image": "hub"}]},
              "status": {"phase": "Running"}})
    assert run("repair-session", "alice", "--hub", "main", "--yes", *cfg) == 75
    assert "hub pod jhub/hub-7d9f is Running" in capsys.readouterr().err
    kube.delete("Pod", "hub-7d9f", "jhub")
    # A pod of alice's left behind: deleted (with --yes) before the rows are touched.
    kube.put({"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "jupyter-alice", "namespace": "jhub",
                           "labels": {"component": "singleuser-server"},
                           "annotations": {"hub.jupyter.org/username": "alice"}},
              "spec": {"containers": [{"name": "notebook", "image": "lab"}]},
              "status": {"phase": "Running"}})

    before = table_rows(hub.db_url)
    assert run("repair-session", "alice", "--hub", "main", "--yes", *cfg) == 0
    out = capsys.readouterr().out
    assert "UPDATE spawners SET server_id = NULL" in out and "DELETE FROM servers" in out
    assert kube.get("Pod", "jupyter-alice", "jhub") is None
    after = table_rows(hub.db_url)
    for table in ("users", "api_tokens", "oauth_clients"):
        assert after[table] == before[table], table
    assert len(after["servers"]) == len(before["servers"]) - 1
    assert len(after["spawners"]) == len(before["spawners"])  # named servers stay

    store = Store(state_url)
    records = {r.name: r for r in store.actions()}
    assert records["delete-pod"].status == "done"
    repair = records["repair-session"]
    assert repair.status == "done"

    # Undo: every row as it was, byte for byte; a second undo changes nothing.
    assert run("undo", str(repair.id), "--yes", *cfg) == 0
    assert table_rows(hub.db_url) == before
    assert run("undo", str(repair.id), "--yes", *cfg) == 0
    assert "already undone" in capsys.readouterr().out
    assert table_rows(hub.db_url) == before

    # The same repair again, then the hub starts and alice spawns.
    assert run("repair-session", "alice", "--hub", "main", "--yes", *cfg) == 0
    second = store.actions(name="repair-session", limit=1)[0]
    hub.unfreeze("alice", "")
    (hub.freeze_dir / "hang-stop:alice:").unlink()
    hub.start_hub()
    assert hub.server_model("alice") is None
    hub.start_server("alice")
    assert hub.server_model("alice")["ready"] is True
    assert hub.server_model("bob")["ready"] is True  # untouched
    status, me = hub.api("GET", "/user", token=token["token"])
    assert status == 200 and me["name"] == "alice"
    model = hub.user_model("alice", include_stopped_servers=True)
    assert "lab" in model["servers"]
    # The hub runs again: undo refuses (75).
    assert run("undo", str(second.id), "--yes", *cfg) == 75
    store.close()
