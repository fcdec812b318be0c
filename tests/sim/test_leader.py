"""Two Lease electors against the simulated API server.

Most tests drive the electors round by round with one fake monotonic clock, so "a
third of a lease later" is exact and nothing sleeps; the Lease itself lives in the
simulator and every read and write goes over HTTP through the official client's
``ApiClient``. The invariant checked after every round: never two leaders.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdogd.config import ClusterConfig
from watchdogd.leader import KubeLeaseApi, LeaderElector
from watchdogd.sim.kube import KubeSim
from watchdogd.sources.kube import api_client

LEASE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    with KubeSim() as server:
        yield server


@pytest.fixture
def kubeconfig(sim: KubeSim, tmp_path: Path) -> str:
    return sim.write_kubeconfig(tmp_path / "kubeconfig")


def make(kubeconfig: str, identity: str, clock: Callable[[], float],
         duration: float = LEASE) -> LeaderElector:
    client = api_client("sim", ClusterConfig(kubeconfig=kubeconfig))
    api = KubeLeaseApi(client, "watchdogd", "watchdogd", timeout=5)
    return LeaderElector(api, identity, duration, clock=clock)


def holder(sim: KubeSim) -> str | None:
    lease = sim.get("Lease", "watchdogd", "watchdogd")
    return None if lease is None else lease["spec"].get("holderIdentity")


def one_leader(*electors: LeaderElector) -> None:
    assert sum(e.is_leader() for e in electors) <= 1


class Partition:
    """A TCP forwarder to the simulator that can be cut: one replica's network failing.

    Bytes pass through untouched (TLS included); :meth:`cut` closes the listener and
    every forwarded connection, so that replica's calls are refused while the other
    replica still reaches the API server.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not, and
        # the listening socket would go on accepting.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for sock in self.conns:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def kubeconfig_via(kubeconfig: str, port: int, path: Path) -> str:
    """The same kubeconfig, with the server address replaced by a forwarder's."""
    data = json.loads(Path(kubeconfig).read_text())
    server = data["clusters"][0]["cluster"]["server"]
    scheme = server.split("://")[0]
    data["clusters"][0]["cluster"]["server"] = f"{scheme}://127.0.0.1:{port}"
    path.write_text(json.dumps(data))
    return str(path)


def test_first_elector_acquires_second_follows(sim: KubeSim, kubeconfig: str) -> None:
    clock = Clock()
    a, b = make(kubeconfig, "a", clock), make(kubeconfig, "b", clock)
    assert a.step()
    assert not b.step()
    one_leader(a, b)
    lease = sim.get("Lease", "watchdogd", "watchdogd")
    assert lease is not None
    spec = lease["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 30
    assert spec["leaseTransitions"] == 0
    # MicroTime: six fractional digits, always (the API server rejects fewer).
    assert len(spec["renewTime"]) == len("2026-11-22T03:00:00.000000Z")
    # The leader renews every third of the lease; the follower keeps following.
    for _ in range(10):
        clock.now += LEASE / 3
        assert a.step()
        assert not b.step()
        one_leader(a, b)
    assert b.holder == "a"


def test_a_409_means_another_replica_won(sim: KubeSim, kubeconfig: str) -> None:
    clock = Clock()
    a, b = make(kubeconfig, "a", clock), make(kubeconfig, "b", clock)
    assert a.step()
    assert a.release()
    # b reads the free lease; before b writes, a2 takes it: b's write carries a stale
    # resourceVersion and the API server answers 409.
    stale = b.api.get()
    a2 = make(kubeconfig, "a2", clock)
    assert a2.step()
    b.api.get = lambda: stale  # type: ignore[method-assign]
    sim.reset_requests()
    assert not b.step()
    assert [m for m, _ in sim.requests] == ["PUT"]
    assert holder(sim) == "a2"
    one_leader(a, a2, b)


def test_a_frozen_leader_stops_acting_before_the_follower_takes_over(
        sim: KubeSim, kubeconfig: str) -> None:
    clock = Clock()
    a, b = make(kubeconfig, "a", clock), make(kubeconfig, "b", clock)
    assert a.step()
    assert not b.step()
    # a freezes (a stopped process, a long GC pause): it makes no more rounds.
    a_stopped_acting = b_took_over = None
    for tick in range(1, 10):
        clock.now += LEASE / 6
        b.step()
        if a_stopped_acting is None and not a.is_leader():
            a_stopped_acting = tick
        if b_took_over is None and b.is_leader():
            b_took_over = tick
        one_leader(a, b)
    assert a_stopped_acting is not None and b_took_over is not None
    # a stops acting after two thirds of the lease (tick 4), b takes over after a whole
    # lease without renewals (tick 6): a third of a lease where nobody acts, never two.
    assert a_stopped_acting == 4
    assert b_took_over == 6
    assert holder(sim) == "b"
    lease = sim.get("Lease", "watchdogd", "watchdogd")
    assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    # a thaws: it sees b's lease and follows, without ever acting again in between.
    assert not a.step()
    one_leader(a, b)
    assert b.step()


def test_a_leader_whose_api_calls_fail_steps_down(sim: KubeSim, kubeconfig: str,
                                                  tmp_path: Path) -> None:
    clock = Clock()
    partition = Partition(sim.port)
    a = make(kubeconfig_via(kubeconfig, partition.port, tmp_path / "a.json"), "a", clock)
    b = make(kubeconfig, "b", clock)
    assert a.step()
    assert not b.step()
    # Only a loses the API server (its network, its node): connections are refused.
    partition.cut()
    leaders = []
    for _ in range(9):
        clock.now += LEASE / 6
        a.step()
        b.step()
        one_leader(a, b)
        leaders.append(("a" if a.is_leader() else "") + ("b" if b.is_leader() else ""))
    # a keeps acting only while its last renewal is fresh (two thirds of a lease), then
    # nobody acts for a third of a lease, then b holds the lease.
    assert leaders == ["a", "a", "a", "", "", "b", "b", "b", "b"]
    assert holder(sim) == "b"


def test_when_the_api_server_fails_nobody_acts(sim: KubeSim, kubeconfig: str) -> None:
    clock = Clock()
    a, b = make(kubeconfig, "a", clock), make(kubeconfig, "b", clock)
    assert a.step()
    sim.fail(r"/leases", status=500)
    for _ in range(6):
        clock.now += LEASE / 6
        a.step()
        b.step()
        one_leader(a, b)
    assert not a.is_leader() and not b.is_leader()
    sim.clear_faults()
    # The old holder renews its own lease at once; the follower keeps following.
    assert a.step()
    assert not b.step()


def test_release_hands_over_at_once(sim: KubeSim, kubeconfig: str) -> None:
    clock = Clock()
    a, b = make(kubeconfig, "a", clock), make(kubeconfig, "b", clock)
    assert a.step()
    assert not b.step()
    a.resign()  # SIGTERM: stop acting now, the last pass finishes ...
    assert not a.is_leader()
    clock.now += LEASE / 3
    a.step()  # ... while a keeps the lease, so b does not act yet
    assert not b.step()
    assert holder(sim) == "a"
    assert a.release()  # ... and then a hands it back
    assert holder(sim) is None
    assert b.step()
    assert holder(sim) == "b"
    one_leader(a, b)


def test_the_lease_api_calls(sim: KubeSim, kubeconfig: str) -> None:
    """What the elector asks the API server: get, create, update (for the Role)."""
    clock = Clock()
    a = make(kubeconfig, "a", clock)
    sim.reset_requests()
    a.step()
    a.step()
    a.release()
    paths = {(m, p.split("?")[0]) for m, p in sim.requests}
    base = "/apis/coordination.k8s.io/v1/namespaces/watchdogd/leases"
    assert paths == {("GET", f"{base}/watchdogd"), ("POST", base),
                     ("PUT", f"{base}/watchdogd")}


def test_two_threaded_electors(sim: KubeSim, kubeconfig: str) -> None:
    """The real loop with real time: one leader, and a clean stop hands over."""
    changes: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def recorder(name: str) -> Callable[[bool], None]:
        def record(leading: bool) -> None:
            with lock:
                changes.append((name, leading))
        return record

    electors: dict[str, LeaderElector] = {}
    for name in ("a", "b"):
        client = api_client("sim", ClusterConfig(kubeconfig=kubeconfig))
        api = KubeLeaseApi(client, "watchdogd", "watchdogd", timeout=2)
        electors[name] = LeaderElector(api, name, 3.0, on_change=recorder(name))
    for elector in electors.values():
        elector.start()
    try:
        first = wait_for(lambda: next((n for n, e in electors.items() if e.is_leader()), None))
        other = "b" if first == "a" else "a"
        one_leader(*electors.values())
        electors[first].stop(release=True)
        assert not electors[first].is_leader()
        assert wait_for(lambda: electors[other].is_leader() or None)
        assert holder(sim) == other
    finally:
        for elector in electors.values():
            elector.stop(release=True)
    assert (first, True) in changes and (other, True) in changes


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll a condition until it holds (the loop's own period is 1 s here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


# -- two `watchdogd run` processes: one acts, a frozen leader is replaced, SIGTERM hands over


def scrape(port: int) -> dict[str, float]:
    import requests

    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return {}  # not listening yet
    out = {}
    for line in text.splitlines():
        if line.startswith("watchdogd_") and " " in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_daemons_one_acts_a_frozen_leader_is_replaced(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from watchdogd.sim.world import World

    with World(tmp_path / "world", sessions={"interval": "1s"}) as world:
        world.healthy(users=4, running=3)
        config = world.config_path.read_text().replace(
            "[daemon]\n", '[daemon]\nleader_election = true\nlease_cluster = "sim"\n'
            'lease_duration = "6s"\n')
        world.config_path.write_text(config)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ports = {}
        for name in ("a", "b"):
            ports[name] = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
            env |= {"POD_NAME": f"replica-{name}",
                    # Each replica its own state here (a frozen leader may hold a shared
                    # state's lock); the shared state is tests/safety/test_one_actor.py.
                    "WATCHDOGD_STATE__URL": f"sqlite:///{tmp_path}/state-{name}.db",
                    "WATCHDOGD_DAEMON__METRICS_LISTEN": f"127.0.0.1:{ports[name]}",
                    # A acts on the third sighting, at least two of its 1 s intervals after
                    # the first; b looks every 0.3 s, so it has seen the finding by then.
                    "WATCHDOGD_REMEDIATION__CONFIRM_AFTER": "3"}
            if name == "b":
                env["WATCHDOGD_CHECKS__SESSIONS__INTERVAL"] = "0.3s"
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "watchdogd", "run", "--config", str(world.config_path)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if name == "a":  # a first, so that a is the first leader
                wait_for(lambda: (holder(world.kube) or "").startswith("replica-a"))
        try:
            wait_for(lambda: scrape(ports["b"]).get("watchdogd_healthy") == 1.0)
            assert scrape(ports["a"])["watchdogd_leader"] == 1.0
            assert scrape(ports["b"])["watchdogd_leader"] == 0.0
            # Only the leader acts; the follower detects the same finding (dry-run).
            first = world.stale_session("zoe-stale")
            wait_for(lambda: not world.hub.is_running(first))
            # b saw it too (unconfirmed, or dry-run once confirmed) and did nothing about it.
            b_metrics = scrape(ports["b"])
            seen = [k for k in b_metrics if k.startswith(
                'watchdogd_actions_total{action="stop-server"')]
            assert seen and not [k for k in seen if 'status="done"' in k], b_metrics
            assert scrape(ports["a"])[
                'watchdogd_actions_total{action="stop-server",status="done"}'] == 1.0

            # a freezes: b takes over within a lease duration and acts from then on.
            procs["a"].send_signal(signal.SIGSTOP)
            wait_for(lambda: (holder(world.kube) or "").startswith("replica-b"))
            second = world.stale_session("yuri-stale")
            wait_for(lambda: not world.hub.is_running(second))
            assert scrape(ports["b"])["watchdogd_leader"] == 1.0
            # a thaws: its last renewal is stale, so it follows at once and acts no more.
            procs["a"].send_signal(signal.SIGCONT)
            wait_for(lambda: scrape(ports["a"])["watchdogd_leader"] == 0.0)
            assert (holder(world.kube) or "").startswith("replica-b")
            assert scrape(ports["a"])[
                'watchdogd_actions_total{action="stop-server",status="done"}'] == 1.0

            # SIGTERM on b: it releases the lease on its way out and a takes over at once.
            procs["b"].send_signal(signal.SIGTERM)
            assert procs["b"].wait(60) == 0
            wait_for(lambda: (holder(world.kube) or "").startswith("replica-a"))
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        assert procs["a"].returncode == 0
