"""A real JupyterHub 6 with the npm configurable-http-proxy, for integration tests.

``RealHub`` starts, on free ports of 127.0.0.1:

- configurable-http-proxy (from ``$REPO/.cache/node``, installed by
  ``scripts/setup-test-peers.sh``; or ``$WATCHDOGD_CHP``), as an *external* proxy the
  way zero-to-jupyterhub runs it (``ConfigurableHTTPProxy.should_start = False``), so the
  hub can be restarted under it;
- ``python -m jupyterhub -f config.py`` from this interpreter (the project venv), with
  the dummy authenticator, named servers, ``cleanup_servers = False`` (as z2jh: a hub
  restart leaves servers running), ``last_activity_interval = 3600`` (the hub's own
  ``check_routes`` runs at start only), and ``tests/peers/simspawner.py``'s
  ``SimSpawner``: an ``http.server`` process per server plus a KubeSpawner-shaped pod
  in the Kubernetes API at ``kube_url``.

Tokens: ``service_token`` belongs to the service ``watchdogd`` with a role of scopes
``list:users, read:users, read:servers, admin:server_state, delete:servers, proxy,
admin:users, servers``; ``admin_token`` to the service ``test-admin`` in the ``admin``
role, for test setup.

Everything the hub starts runs in sessions of its own; :meth:`RealHub.stop` ends the
hub, the servers (by the pids in their records) and CHP by pid, never a process group.

Usage::

    with RealHub(tmp_path, kube_url=sim.url, kube_token="sim-token") as hub:
        hub.create_user("alice")
        hub.start_server("alice")
        hub.kill_server_behind_hubs_back("alice")
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from .postgres import free_port

__all__ = [
    "SERVICE_SCOPES",
    "HubError",
    "PeersUnavailable",
    "RealHub",
    "find_chp",
    "hub_available",
]

REPO = Path(__file__).resolve().parents[2]
SIMSPAWNER = Path(__file__).resolve().with_name("simspawner.py")
SERVICE_NAME = "watchdogd"
ADMIN_SERVICE_NAME = "test-admin"
SERVICE_SCOPES = [
    "list:users",
    "read:users",
    "read:servers",
    "admin:server_state",
    "delete:servers",
    "proxy",
    "admin:users",
    "servers",
]
PAGINATION_ACCEPT = "application/jupyterhub-pagination+json"


class PeersUnavailable(RuntimeError):
    """configurable-http-proxy or JupyterHub is not installed here."""


class HubError(RuntimeError):
    """The hub (or CHP) did not do what a test asked in time; carries the log tail."""


def find_chp() -> Path:
    """Path of the configurable-http-proxy executable.

    ``$WATCHDOGD_CHP`` when set (and only that), else
    ``$REPO/.cache/node/node_modules/.bin/configurable-http-proxy``, else one on ``PATH``.

    Raises:
        PeersUnavailable: none found.
    """
    env = os.environ.get("WATCHDOGD_CHP")
    if env:
        candidates = [Path(env)]
    else:
        candidates = [REPO / ".cache/node/node_modules/.bin/configurable-http-proxy"]
        which = shutil.which("configurable-http-proxy")
        if which:
            candidates.append(Path(which))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise PeersUnavailable(
        "configurable-http-proxy not found (run scripts/setup-test-peers.sh or set WATCHDOGD_CHP)"
    )


def hub_available() -> str | None:
    """None when a RealHub can start here, else the reason it cannot."""
    try:
        find_chp()
    except PeersUnavailable as exc:
        return str(exc)
    if shutil.which("node") is None:
        return "node is not installed"
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        return "jupyterhub is not installed in this Python"
    return None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _end_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, wait, then SIGKILL; a child of ours is reaped by the caller."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)


def _wait_for(
    what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1
) -> Any:
    """Call ``check`` until it returns a truthy value; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = check()
        except HubError:
            raise
        except Exception as exc:
            last_exc = exc
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {timeout}s (last error: {last_exc})")
        time.sleep(interval)


class RealHub:
    """A real JupyterHub 6 + configurable-http-proxy + SimSpawner, on free ports.

    Attributes:
        api_url: the hub's REST API, ``http://127.0.0.1:HUBPORT/hub/api`` (direct, like
            z2jh's ``http://hub:8081/hub/api``).
        public_url: CHP's public URL, ``http://127.0.0.1:PORT/``.
        proxy_api_url: CHP's REST API, ``http://127.0.0.1:APIPORT`` (routes at ``/api/routes``).
        proxy_token: CONFIGPROXY_AUTH_TOKEN.
        service_token: the ``watchdogd`` service's token.
        admin_token: the ``test-admin`` service's token (admin role).
        db_url: SQLAlchemy URL of the hub database.
        freeze_dir: where freeze flags live (see simspawner).
        hub_log / proxy_log: log files.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        db_url: str | None = None,
        kube_url: str,
        kube_token: str,
        namespace: str = "jhub",
        start_timeout: float = 60.0,
        server_timeout: float = 30.0,
        poll_interval: int = 30,
        log_level: str = "INFO",
        extra_config: str = "",
    ) -> None:
        """Prepare a hub in ``workdir`` (created); nothing runs until :meth:`start`.

        ``extra_config`` is Python appended to the generated ``config.py`` (``c`` is the
        config object), for tests that need other settings.
        """
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_url: str = db_url or f"sqlite:///{self.workdir / 'jupyterhub.sqlite'}"
        self.kube_url = kube_url
        self.kube_token = kube_token
        self.namespace = namespace
        self.start_timeout = start_timeout
        self.server_timeout = server_timeout
        self.poll_interval = poll_interval
        self.log_level = log_level
        self.extra_config = extra_config

        self.proxy_token: str = secrets.token_hex(32)
        self.service_token: str = secrets.token_hex(32)
        self.admin_token: str = secrets.token_hex(32)

        self.hub_port = 0
        self.public_port = 0
        self.proxy_api_port = 0
        self.api_url = ""
        self.public_url = ""
        self.proxy_api_url = ""

        self.freeze_dir = self.workdir / "freeze"
        self.peer_dir = self.workdir / "peer"
        self.home_dir = self.workdir / "home"
        self.config_file = self.workdir / "jupyterhub_config.py"
        self.hub_log = self.workdir / "hub.log"
        self.proxy_log = self.workdir / "proxy.log"
        self.python = sys.executable

        self._hub: subprocess.Popen[bytes] | None = None
        self._chp: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}

    # -- context manager -----------------------------------------------------------------

    def __enter__(self) -> RealHub:
        """Start CHP and the hub."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything."""
        self.stop()

    # -- start / stop ------------------------------------------------------------------------

    def start(self) -> RealHub:
        """Start CHP, then the hub; returns when the hub answers and its route is in CHP.

        Raises:
            PeersUnavailable: CHP or JupyterHub missing.
            HubError: a peer exited or did not get ready in ``start_timeout`` (log tail).
        """
        chp = find_chp()
        for d in (self.freeze_dir, self.peer_dir / "servers", self.home_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.hub_port:
            self.hub_port = free_port()
            self.public_port = free_port()
            self.proxy_api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.hub_port}/hub/api"
        self.public_url = f"http://127.0.0.1:{self.public_port}/"
        self.proxy_api_url = f"http://127.0.0.1:{self.proxy_api_port}"
        try:
            if self._chp is None or self._chp.poll() is not None:
                self._start_chp(chp)
            self.start_hub()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_chp(self, chp: Path) -> None:
        t0 = time.monotonic()
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=self.proxy_token)
        with open(self.proxy_log, "ab") as log:
            self._chp = subprocess.Popen(
                [
                    str(chp),
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(self.public_port),
                    "--api-ip",
                    "127.0.0.1",
                    "--api-port",
                    str(self.proxy_api_port),
                    "--error-target",
                    f"http://127.0.0.1:{self.hub_port}/hub/error",
                    "--log-level",
                    "info",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self._chp is not None
            if self._chp.poll() is not None:
                raise HubError(
                    f"configurable-http-proxy exited {self._chp.returncode}:\n"
                    f"{_tail(self.proxy_log)}"
                )
            status, _ = self._request(
                "GET", f"{self.proxy_api_url}/api/routes", self._proxy_auth(), timeout=2
            )
            return status == 200

        try:
            _wait_for("configurable-http-proxy API", ready, self.start_timeout)
        except TimeoutError as exc:
            raise HubError(f"{exc}\n{_tail(self.proxy_log)}") from exc
        self.timings["chp_start"] = time.monotonic() - t0

    def _write_config(self) -> None:
        cfg = {
            "simspawner": str(SIMSPAWNER),
            "db_url": self.db_url,
            "hub_bind_url": f"http://127.0.0.1:{self.hub_port}",
            "bind_url": f"http://127.0.0.1:{self.public_port}",
            "proxy_api_url": self.proxy_api_url,
            "proxy_token": self.proxy_token,
            "service_token": self.service_token,
            "admin_token": self.admin_token,
            "scopes": SERVICE_SCOPES,
            "kube_url": self.kube_url,
            "kube_token": self.kube_token,
            "namespace": self.namespace,
            "freeze_dir": str(self.freeze_dir),
            "peer_dir": str(self.peer_dir),
            "home": str(self.home_dir) + "/{username}",
            "workdir": str(self.workdir),
            "poll_interval": self.poll_interval,
            "log_level": self.log_level,
        }
        text = f'''# generated by tests/peers/jupyterhub.py (RealHub)
import importlib.util
import sys

P = {json.dumps(cfg, indent=4)}

_spec = importlib.util.spec_from_file_location("watchdogd_test_simspawner", P["simspawner"])
_mod = importlib.util.module_from_spec(_spec)
sys.modules["watchdogd_test_simspawner"] = _mod
_spec.loader.exec_module(_mod)

c = get_config()  # noqa: F821
c.JupyterHub.db_url = P["db_url"]
c.JupyterHub.hub_bind_url = P["hub_bind_url"]
c.JupyterHub.bind_url = P["bind_url"]
c.JupyterHub.cookie_secret_file = P["workdir"] + "/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = P["workdir"] + "/jupyterhub.pid"
c.JupyterHub.log_level = P["log_level"]
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = False
c.JupyterHub.last_activity_interval = 3600
# after 1 s the hub serves while it still checks servers it found running ("pending": "check")
c.JupyterHub.init_spawners_timeout = 1
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True

c.JupyterHub.proxy_class = "configurable-http-proxy"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = P["proxy_api_url"]
c.ConfigurableHTTPProxy.auth_token = P["proxy_token"]

c.JupyterHub.services = [
    {{"name": "{SERVICE_NAME}", "api_token": P["service_token"]}},
    {{"name": "{ADMIN_SERVICE_NAME}", "api_token": P["admin_token"]}},
]
c.JupyterHub.load_roles = [
    {{"name": "{SERVICE_NAME}", "scopes": P["scopes"], "services": ["{SERVICE_NAME}"]}},
    {{"name": "admin", "services": ["{ADMIN_SERVICE_NAME}"]}},
]

c.JupyterHub.spawner_class = _mod.SimSpawner
c.SimSpawner.kube_url = P["kube_url"]
c.SimSpawner.kube_token = P["kube_token"]
c.SimSpawner.namespace = P["namespace"]
c.SimSpawner.freeze_dir = P["freeze_dir"]
c.SimSpawner.peer_dir = P["peer_dir"]
c.SimSpawner.home_dir_template = P["home"]
c.Spawner.poll_interval = P["poll_interval"]
c.Spawner.start_timeout = 30
c.Spawner.http_timeout = 10
c.LocalProcessSpawner.interrupt_timeout = 3
c.LocalProcessSpawner.term_timeout = 3
c.LocalProcessSpawner.kill_timeout = 3

# ---- extra_config ----
{self.extra_config}
'''
        self.config_file.write_text(text)

    def start_hub(self) -> None:
        """(Re)start only the hub process (CHP must be running); waits for readiness."""
        if self._hub is not None and self._hub.poll() is None:
            raise HubError("hub is already running")
        self._write_config()
        t0 = time.monotonic()
        env = dict(os.environ)
        env.update(
            WATCHDOGD_TEST_KUBE_URL=self.kube_url,
            WATCHDOGD_TEST_KUBE_TOKEN=self.kube_token,
            WATCHDOGD_TEST_NAMESPACE=self.namespace,
            WATCHDOGD_TEST_FREEZE_DIR=str(self.freeze_dir),
            WATCHDOGD_TEST_PEER_DIR=str(self.peer_dir),
        )
        env.pop("CONFIGPROXY_AUTH_TOKEN", None)
        env.pop("JUPYTERHUB_API_TOKEN", None)
        with open(self.hub_log, "ab") as log:
            log.write(f"\n===== hub start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self._hub = subprocess.Popen(
                [self.python, "-m", "jupyterhub", "-f", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self._hub is not None
            if self._hub.poll() is not None:
                raise HubError(f"jupyterhub exited {self._hub.returncode}:\n{_tail(self.hub_log)}")
            status, _ = self.api("GET", "/users?limit=1", token=self.admin_token, timeout=2)
            if status != 200:
                return False
            routes = self.proxy_routes()
            return "/" in routes and bool(routes["/"].get("hub"))

        try:
            _wait_for("jupyterhub", ready, self.start_timeout, interval=0.2)
        except TimeoutError as exc:
            raise HubError(f"{exc}\n{_tail(self.hub_log)}") from exc
        self.timings["hub_start"] = time.monotonic() - t0

    def stop_hub(self, timeout: float = 20.0, *, kill: bool = False) -> None:
        """Stop only the hub process (SIGTERM, then SIGKILL). Servers and CHP stay up.

        ``kill``: SIGKILL at once, as a crash or an OOM kill does: the hub's shutdown does
        not run (a SIGTERM cancels a pending stop, whose cleanup then clears the session).
        """
        if self._hub is None:
            return
        if self._hub.poll() is None:
            self._hub.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self._hub.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._hub.kill()
                self._hub.wait(timeout=10)
        self._hub = None

    def restart_hub(self) -> None:
        """Stop and start the hub; servers, pods and CHP routes stay (as z2jh)."""
        self.stop_hub()
        self.start_hub()

    def stop(self) -> None:
        """End the hub, every server it started, and CHP, each by pid. Idempotent."""
        pids = list(self.server_pids().values())
        try:
            self.stop_hub()
        except Exception:
            if self._hub is not None:
                with contextlib.suppress(OSError):
                    self._hub.kill()
                self._hub = None
        pids += [p for p in self.server_pids().values() if p not in pids]
        for pid in pids:
            _end_pid(pid, timeout=3.0)
        if self._chp is not None:
            if self._chp.poll() is None:
                self._chp.terminate()
                try:
                    self._chp.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._chp.kill()
                    self._chp.wait(timeout=10)
            self._chp = None

    @property
    def hub_pid(self) -> int | None:
        """Pid of the running hub process, if any."""
        return self._hub.pid if self._hub is not None and self._hub.poll() is None else None

    @property
    def proxy_pid(self) -> int | None:
        """Pid of the running CHP process, if any."""
        return self._chp.pid if self._chp is not None and self._chp.poll() is None else None

    def hub_log_tail(self, lines: int = 40) -> str:
        """Last lines of the hub's log."""
        return _tail(self.hub_log, lines)

    # -- HTTP ------------------------------------------------------------------------------------

    def _proxy_auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.proxy_token}"}

    @staticmethod
    def _request(
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: Any = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http only
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                raw = resp.read()
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status = exc.code
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def api(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """Call the hub REST API (``path`` below ``/hub/api``); returns (status, JSON or None).

        ``token`` defaults to the admin token.
        """
        h = {"Authorization": f"token {token or self.admin_token}"}
        h.update(headers or {})
        return self._request(method, self.api_url + path, h, body, timeout)

    def proxy_routes(self) -> dict[str, Any]:
        """CHP's ``GET /api/routes`` (route spec -> data)."""
        status, body = self._request(
            "GET", f"{self.proxy_api_url}/api/routes", self._proxy_auth(), timeout=5
        )
        if status != 200 or not isinstance(body, dict):
            raise HubError(f"CHP /api/routes answered {status}: {body}")
        return body

    # -- users and servers ----------------------------------------------------------------------

    @staticmethod
    def _server_path(user: str, server_name: str = "") -> str:
        u = urllib.parse.quote(user, safe="")
        if server_name:
            return f"/users/{u}/servers/{urllib.parse.quote(server_name, safe='')}"
        return f"/users/{u}/server"

    def create_user(self, name: str) -> None:
        """Create a hub user (201; an existing user is fine)."""
        status, body = self.api("POST", f"/users/{urllib.parse.quote(name, safe='')}")
        if status not in (201, 409):
            raise HubError(f"create user {name}: {status} {body}")

    def user_model(self, name: str, *, include_stopped_servers: bool = False) -> dict[str, Any]:
        """``GET /users/{name}`` with the admin token (servers included, with their state)."""
        q = "?include_stopped_servers" if include_stopped_servers else ""
        status, body = self.api("GET", f"/users/{urllib.parse.quote(name, safe='')}{q}")
        if status != 200 or not isinstance(body, dict):
            raise HubError(f"GET user {name}: {status} {body}")
        return body

    def server_model(self, user: str, server_name: str = "") -> dict[str, Any] | None:
        """The server model of one server in the user model, or None if not running."""
        server: dict[str, Any] | None = self.user_model(user).get("servers", {}).get(server_name)
        return server

    def start_server(self, user: str, server_name: str = "") -> None:
        """Start a server (admin token) and wait until the hub says it is ready.

        Raises:
            HubError: the request was refused, or the server was not ready in
                ``server_timeout`` seconds (with the hub log tail).
        """
        t0 = time.monotonic()
        status, body = self.api("POST", self._server_path(user, server_name), body={})
        if status not in (201, 202):
            raise HubError(
                f"start {user}/{server_name}: {status} {body}\n{self.hub_log_tail(20)}"
            )

        def ready() -> bool:
            server = self.server_model(user, server_name)
            if server is None:
                if time.monotonic() - t0 > 1.0:
                    raise HubError(f"server {user}/{server_name} vanished while starting")
                return False
            return bool(server.get("ready"))

        try:
            _wait_for(f"server {user}/{server_name}", ready, self.server_timeout)
        except (TimeoutError, HubError) as exc:
            raise HubError(f"{exc}\n{self.hub_log_tail()}") from exc
        self.timings["server_start"] = time.monotonic() - t0

    def stop_server(self, user: str, server_name: str = "") -> None:
        """Stop a server (admin token): 204, or 202 and wait until it is gone."""
        status, body = self.api("DELETE", self._server_path(user, server_name))
        if status not in (202, 204):
            raise HubError(f"stop {user}/{server_name}: {status} {body}")
        try:
            _wait_for(
                f"stop of {user}/{server_name}",
                lambda: self.server_model(user, server_name) is None,
                self.server_timeout,
            )
        except TimeoutError as exc:
            raise HubError(f"{exc}\n{self.hub_log_tail()}") from exc

    def server_records(self) -> dict[str, dict[str, Any]]:
        """SimSpawner's records of running servers, keyed ``user`` or ``user/server``."""
        out: dict[str, dict[str, Any]] = {}
        for f in sorted((self.peer_dir / "servers").glob("*.json")):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            key = rec["user"] + (f"/{rec['server_name']}" if rec.get("server_name") else "")
            out[key] = rec
        return out

    def server_pids(self) -> dict[str, int]:
        """Pids of the servers the spawner believes run: ``{"alice": 123, "alice/lab": 456}``.

        A server killed behind the hub's back stays listed (the hub believes in it).
        """
        return {k: int(r["pid"]) for k, r in self.server_records().items() if r.get("pid")}

    def freeze(self, user: str, server_name: str | None = None) -> Path:
        """Make SimSpawner.poll() answer "running" for a server (or all, ``None``)."""
        name = user if server_name is None else f"{user}:{server_name}"
        flag = self.freeze_dir / name
        flag.touch()
        return flag

    def unfreeze(self, user: str, server_name: str | None = None) -> None:
        """Remove a freeze flag set by :meth:`freeze` (``None``: the user-wide one)."""
        name = user if server_name is None else f"{user}:{server_name}"
        (self.freeze_dir / name).unlink(missing_ok=True)

    def hang_stop(self, user: str, server_name: str = "") -> Path:
        """Make the next stop of a server never finish (see simspawner); returns the flag."""
        flag = self.freeze_dir / f"hang-stop:{user}:{server_name}"
        flag.touch()
        return flag

    def kill_server_behind_hubs_back(
        self, user: str, server_name: str = "", *, delete_pod: bool = True
    ) -> None:
        """Freeze poll for the server, SIGKILL its process, delete its pod (if asked).

        Afterwards the hub still says the server runs (DB ``server_id`` set, REST API
        ``ready: true``, CHP route present): a ``stale-session``.
        """
        key = user + (f"/{server_name}" if server_name else "")
        rec = self.server_records().get(key)
        if rec is None:
            raise HubError(f"no running server {key}: {sorted(self.server_records())}")
        self.freeze(user, server_name)
        pid = int(rec["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_for(f"death of pid {pid}", lambda: not _pid_alive(pid), 10.0, interval=0.02)
        if delete_pod:
            self.delete_pod(rec["namespace"], rec["pod_name"])

    def delete_pod(self, namespace: str, name: str) -> int:
        """DELETE a pod in the Kubernetes API; returns the status (404 is fine)."""
        ns = urllib.parse.quote(namespace, safe="")
        status, body = self._request(
            "DELETE",
            f"{self.kube_url.rstrip('/')}/api/v1/namespaces/{ns}/pods/{urllib.parse.quote(name)}",
            {"Authorization": f"Bearer {self.kube_token}", "Accept": "application/json"},
        )
        if status not in (200, 202, 404):
            raise HubError(f"delete pod {namespace}/{name}: {status} {body}")
        return status
