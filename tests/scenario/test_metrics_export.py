"""One-shot runs export their metrics: a textfile and a Pushgateway, read by a scraper.

A CronJob or systemd timer runs ``watchdogd check`` and exits: nothing is left to scrape.
With ``[daemon] metrics_textfile`` / ``pushgateway_url`` each run writes the metrics a
daemon would serve, taken from the state store, so a target that fails in one run keeps
its last success time (an alert on its age can fire) instead of vanishing. The runs are
real processes against a simulated world; the gateway is a local HTTP server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdogd.sim.world import World

REPO = Path(__file__).resolve().parents[2]


class Gateway:
    """A Pushgateway stand-in: keeps every push (method, path, body); or never answers."""

    def __init__(self, *, hang: bool = False) -> None:
        self.pushes: list[tuple[str, str, str]] = []
        self.release = threading.Event()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _push(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if hang:
                    gateway.release.wait(60)
                    return
                gateway.pushes.append((self.command, self.path, body.decode()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _push

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Gateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Export:
    """A world part that adds ``[daemon]`` export keys to the configuration."""

    name = "export"

    def __init__(self, **daemon: str) -> None:
        self.daemon = daemon

    def start(self, world: World) -> None:
        pass

    def config(self, world: World) -> dict[str, Any]:
        return {"daemon": self.daemon}

    def stop(self) -> None:
        pass


def check(world: World) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
    return subprocess.run(
        [sys.executable, "-m", "watchdogd", "check", "--config", str(world.config_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def textfile_world(tmp_path: Path) -> Iterator[tuple[World, Path]]:
    path = tmp_path / "textfile" / "watchdogd.prom"
    path.parent.mkdir()
    with World(tmp_path / "world", parts=[Export(metrics_textfile=str(path))]) as world:
        world.healthy(users=4, running=2)
        yield world, path


def test_textfile_keeps_a_failed_targets_last_success(
        textfile_world: tuple[World, Path]) -> None:
    world, path = textfile_world
    user = world.stale_session("zoe-stale")
    first = check(world)
    assert first.returncode == 0, first.stderr
    exported = samples(path.read_text())
    success = value(exported, "watchdogd_last_success_timestamp_seconds",
                    check="sessions", target="main")
    assert success is not None
    assert value(exported, "watchdogd_findings_open", check="sessions", target="main",
                 kind="stale-session", severity="critical") == 1
    assert value(exported, "watchdogd_check_interval_seconds", check="sessions") == 60
    assert value(exported, "watchdogd_passes_total", check="sessions", target="main",
                 status="findings") == 1
    assert value(exported, "watchdogd_outbox_notices", state="queued") == 0
    # A one-shot run is not a replica of an election: no leader gauge to sum.
    assert not [k for k in exported if k[0] == "watchdogd_leader"]

    world.chp.stop()  # the next run cannot complete the sessions target
    second = check(world)
    assert second.returncode == 2, second.stderr
    exported = samples(path.read_text())
    # Its last success is still the first run's, and its open finding is still open: the
    # store's picture, not this run's.
    assert value(exported, "watchdogd_last_success_timestamp_seconds",
                 check="sessions", target="main") == success
    assert value(exported, "watchdogd_findings_open", check="sessions", target="main",
                 kind="stale-session", severity="critical") == 1
    assert value(exported, "watchdogd_passes_total", check="sessions", target="main",
                 status="error") == 1
    assert value(exported, "watchdogd_source_errors_total", source="proxy",
                 target="main") == 1
    assert world.hub.is_running(user)
    assert not list(path.parent.glob("*.prom.*")), "a temporary file was left behind"


def test_pushgateway_gets_the_run_and_a_hanging_one_cannot_hold_it(tmp_path: Path) -> None:
    with Gateway() as gateway, World(
            tmp_path / "world", parts=[Export(pushgateway_url=gateway.url,
                                              pushgateway_job="wd-cron")]) as world:
        world.healthy(users=3, running=1)
        run = check(world)
        assert run.returncode == 0, run.stderr
        assert [(m, p) for m, p, _ in gateway.pushes] == [("PUT", "/metrics/job/wd-cron")]
        pushed = samples(gateway.pushes[0][2])
        assert value(pushed, "watchdogd_passes_total", check="sessions", target="main",
                     status="ok") == 1

    with Gateway(hang=True) as gateway, World(
            tmp_path / "world2", parts=[Export(pushgateway_url=gateway.url,
                                               pushgateway_timeout="1s")]) as world:
        world.healthy(users=3, running=1)
        run = check(world)
        # The pass completed; the push did not, and says so without failing the run.
        assert run.returncode == 0, run.stderr
        assert "metrics not exported" in run.stderr
        assert "no answer within" in run.stderr
        assert "pushgateway_url" in run.stderr


def test_gateway_url_with_credentials_is_refused(tmp_path: Path) -> None:
    with World(tmp_path / "world", parts=[Export(
            pushgateway_url="http://user:hunter2@127.0.0.1:9091")]) as world:
        world.healthy(users=1, running=0)
        run = check(world)
        assert run.returncode == 78
        assert "daemon.pushgateway_url" in run.stderr
        assert "hunter2" not in run.stderr + run.stdout
