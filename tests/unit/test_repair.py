"""repair-session and undo on a JupyterHub 6 SQLite database made by the hub's own ORM,
with the simulated Kubernetes API: refusals, the transaction, masking, the scale dance."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from watchdogd.app import load_config
from watchdogd.config import Config
from watchdogd.model import Action, Finding, Severity
from watchdogd.repair import Console, Refused, RepairOptions, repair_session
from watchdogd.sim.kube import KubeSim
from watchdogd.sources import hubdb_repair
from watchdogd.sources.hubdb_repair import Row, archive_row, restore_row
from watchdogd.store import Store
from watchdogd.undo import UndoContext, undo

SECRET = "s3cr3t-token-value"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub database made by JupyterHub 6's ORM: alice runs her default server (state with
    a pid and a token-named key) and has a stopped named server."""
    from jupyterhub import orm

    path = tmp_path_factory.mktemp("hubdb") / "jupyterhub.sqlite"
    db = orm.new_session_factory(f"sqlite:///{path}")()
    alice = orm.User(name="alice")
    db.add(alice)
    db.commit()
    server = orm.Server(ip="127.0.0.1", port=4321, base_url="/user/alice/")
    db.add(server)
    db.add(orm.Spawner(user=alice, name="", server=server,
                       state={"pid": 4242, "pod_name": "jupyter-alice", "namespace": "jhub",
                              "api_token": SECRET}))
    db.add(orm.Spawner(user=alice, name="lab", state={"namespace": "jhub"}))
    db.commit()
    db.close()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class World:
    def __init__(self, tmp: Path, template: Path, sim: KubeSim) -> None:
        self.db = tmp / "jupyterhub.sqlite"
        shutil.copy(template, self.db)
        self.sim = sim
        secrets = tmp / "secrets"
        secrets.mkdir()
        (secrets / "db_url").write_text(f"sqlite:///{self.db}\n")
        (secrets / "state_url").write_text(f"sqlite:///{tmp}/state.db\n")
        kubeconfig = sim.write_kubeconfig(tmp / "kubeconfig")
        self.path = tmp / "watchdogd.toml"
        # Nothing listens on the API port: the hub is down unless a test says otherwise.
        self.path.write_text(f"""
[state]
url_file = "secrets/state_url"
[clusters.sim]
kubeconfig = "{kubeconfig}"
timeout = "5s"
[hubs.main]
cluster = "sim"
api_url = "http://127.0.0.1:{free_port()}/hub/api"
db_url_file = "secrets/db_url"
timeout = "3s"
""")
        self.config: Config = load_config(self.path)
        self.store = Store(self.config.state.resolved_url())
        self.said: list[str] = []

    def console(self, answer: bool = True) -> Console:
        return Console(echo=self.said.append, ask=lambda q: self.said.append(q) or answer)

    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        engine = sa.create_engine(f"sqlite:///{self.db}")
        with engine.connect() as conn:
            out = {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))]  # noqa: S608
                   for t in ("users", "spawners", "servers", "api_tokens")}
        engine.dispose()
        return out

    def repair(self, console: Console | None = None, **options: Any) -> int:
        return repair_session(self.config, self.store,
                              RepairOptions("main", "alice", sleep=lambda _: None, poll=0,
                                            **options),
                              console or self.console())


@pytest.fixture
def world(tmp_path: Path, template_db: Path) -> Iterator[World]:
    with KubeSim() as sim:
        w = World(tmp_path, template_db, sim)
        yield w
        w.store.close()


def test_repair_clears_only_the_session_and_undo_restores_every_row(world: World) -> None:
    before = world.rows()
    assert world.repair() == 0
    after = world.rows()
    assert after["users"] == before["users"] and after["api_tokens"] == before["api_tokens"]
    assert after["servers"] == []
    [default, lab] = after["spawners"]
    assert default[2] is None  # server_id
    assert '"pid"' not in default[3] and "jupyter-alice" in default[3]
    assert lab == before["spawners"][1]
    said = "\n".join(world.said)
    assert SECRET not in said  # masked on the terminal...
    [record] = world.store.actions()
    assert SECRET in str(record.before)  # ...kept in the archive, for the undo
    assert undo(UndoContext(world.config, world.store, world.console()), record.id) == 0
    assert world.rows() == before


def test_an_operator_no_changes_nothing(world: World) -> None:
    before = world.rows()
    with pytest.raises(Refused) as refused:
        world.repair(world.console(answer=False))
    assert refused.value.code == 1
    assert world.rows() == before
    assert world.store.actions() == []


def test_a_failure_inside_the_transaction_rolls_everything_back(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    before = world.rows()
    real = hubdb_repair._execute
    calls: list[int] = []

    def second_fails(conn: sa.Connection, statement: Any) -> int:
        calls.append(1)
        if len(calls) == 2:  # after the spawner UPDATE, at the servers DELETE
            raise sa.exc.OperationalError("DELETE", {}, Exception("disk I/O error"))
        return real(conn, statement)

    monkeypatch.setattr(hubdb_repair, "_execute", second_fails)
    with pytest.raises(Refused) as refused:
        world.repair()
    assert refused.value.code == 69 and "rolled back" in str(refused.value)
    assert world.rows() == before
    [record] = world.store.actions()
    assert record.status == "failed"


def test_a_running_hub_pod_refuses(world: World) -> None:
    world.sim.put({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "hub-1", "namespace": "jhub",
                                "labels": {"component": "hub"}},
                   "spec": {"containers": [{"name": "hub", "image": "hub"}]},
                   "status": {"phase": "Pending"}})
    before = world.rows()
    with pytest.raises(Refused) as refused:
        world.repair()
    assert refused.value.code == 75 and "hub pod jhub/hub-1 is Pending" in str(refused.value)
    assert world.rows() == before


def _hub_deployment(sim: KubeSim, replicas: int) -> None:
    sim.put({"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "hub", "namespace": "jhub"},
             "spec": {"replicas": replicas,
                      "selector": {"matchLabels": {"component": "hub"}},
                      "template": {"metadata": {"labels": {"component": "hub"}},
                                   "spec": {"containers": [{"name": "hub", "image": "hub"}]}}}})


def test_stop_hub_scales_to_zero_and_restores_the_count_even_when_refused(
        world: World) -> None:
    _hub_deployment(world.sim, 2)
    seen: list[int] = []
    console = world.console()
    console.echo = lambda line: seen.append(
        world.sim.get("Deployment", "hub", "jhub")["spec"]["replicas"])
    assert world.repair(console, stop_hub=True) == 0
    assert 0 in seen  # the repair ran at 0 replicas
    assert world.sim.get("Deployment", "hub", "jhub")["spec"]["replicas"] == 2
    # A refusal in the middle (no such user) still restores the count.
    with pytest.raises(Refused) as refused:
        repair_session(world.config, world.store,
                       RepairOptions("main", "nobody", stop_hub=True, sleep=lambda _: None,
                                     poll=0), world.console())
    assert refused.value.code == 65
    assert world.sim.get("Deployment", "hub", "jhub")["spec"]["replicas"] == 2


def test_no_db_url_is_a_config_error_naming_the_setting(world: World) -> None:
    hub = world.config.hubs["main"].model_copy(update={"db_url": None})
    config = world.config.model_copy(update={"hubs": {"main": hub}})
    with pytest.raises(Refused) as refused:
        repair_session(config, world.store, RepairOptions("main", "alice"), world.console())
    assert refused.value.code == 78
    assert str(refused.value).startswith("hubs.main.db_url_file: not set")


def test_undo_refuses_what_it_cannot_undo(world: World) -> None:
    finding = Finding("sessions", "main", "stale-session", "alice", Severity.CRITICAL, "m")
    stop = world.store.begin_action("p", finding, Action("stop-server", "hubapi", "main",
                                                         "stop_server"), _now())
    world.store.finish_action(stop, "done", "stopped (204)", _now())
    ctx = UndoContext(world.config, world.store, world.console())
    with pytest.raises(Refused, match="a stopped server is started by its user") as refused:
        undo(ctx, stop)
    assert refused.value.code == 65
    assert world.repair() == 0
    [repair] = world.store.actions(name="repair-session")
    world.store.finish_action(repair.id, "failed", "pretend", _now())
    with pytest.raises(Refused, match="is failed, not done"):
        undo(ctx, repair.id)
    with pytest.raises(Refused, match="no action 999"):
        undo(ctx, 999)


def test_archived_values_come_back_exactly() -> None:
    from datetime import datetime

    row = Row("t", ("a", "b", "c", "d", "e"),
              (b"\x00\xffraw", datetime(2026, 1, 2, 3, 4, 5, 678901), "2026-01-02 03:04:05.000001",
               None, {"$base64": "x"}))
    restored = restore_row(archive_row(row))
    assert restored == row


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
