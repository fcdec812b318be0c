"""Real OpenStack Cinder (and optionally Keystone) API servers for integration tests.

Why real services: the volume check's remediation (delete a dangling attachment, then reset the
volume status) depends on how Cinder itself answers: the JSON shapes, microversion gates,
pagination links, policy 403s. A simulator can only copy what was observed here, so these peers
are the ground truth that ``watchdogd/sim`` and ``watchdogd/sources/openstack.py`` are checked
against.

The services come from PyPI in their own virtualenv (``scripts/setup-cinder-venv.sh``), because
Cinder and Keystone pin half of the oslo world and must not share the project's environment.
This module runs inside the project's environment and only talks to them over HTTP, through
subprocesses, and to Cinder's SQLite file.

What runs, and why that is enough:

* ``cinder-api`` only (no scheduler, no cinder-volume), ``transport_url = fake:/`` so RPC casts go
  nowhere. Volumes therefore stay ``creating``: :meth:`RealCinder.create_volume` resets them to
  ``available``. Reserved attachments (no connector) can be created and deleted for real, which
  is exactly the remediation watchdogd performs; anything that needs an RPC *call* (an attachment
  with a connector, deleting an attached attachment) would block for the RPC timeout, so this
  module never asks Cinder for those and writes such states with :meth:`RealCinder.sql`.
* ``auth_strategy = noauth`` (default): every request is admin (``is_admin=True``), and the
  token is read as ``user:project``. keystoneauth's ``none`` plugin sends the literal token
  ``notused`` on normal requests (so user and project are both "notused"), but fetches the
  version document ``GET /v3/`` without any token; noauth answers token-less requests with
  ``204 No Content`` and discovery fails (``DiscoveryFailure: Unable to find a version discovery
  document``). A paste filter therefore gives token-less requests ``X-Auth-Token: admin:admin``.
* ``keystone=True``: a real Keystone (fernet tokens, SQLite) served by werkzeug's threaded WSGI
  server, and Cinder behind ``keystonemiddleware`` with real policy, so a non-admin's
  ``os-reset_status`` gets a genuine 403.

Usage::

    with RealCinder(tmp_path) as cinder:
        conn = cinder.connection()
        vol = cinder.create_volume("pvc-1")
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

import openstack
import openstack.connection
from openstack.identity.v3 import _proxy as identity_v3

__all__ = [
    "CinderVenvMissing",
    "PeerStartError",
    "RealCinder",
    "cinder_venv",
    "free_port",
    "venv_ready",
]

REPO = Path(__file__).resolve().parents[2]

#: The microversion Cinder 29 (2025.2 "Flamingo"/2026.1) tops out at is 3.71; attachments need
#: 3.27, ``os-complete`` needs 3.44.
ATTACHMENTS_MICROVERSION = "3.27"
COMPLETE_MICROVERSION = "3.44"

_START_TIMEOUT = 120.0  # cinder-api cold start is ~3-6 s here; generous for slow CI machines
_CMD_TIMEOUT = 300.0  # db_sync of a fresh SQLite database takes a few seconds
_LOG_TAIL_LINES = 40


class CinderVenvMissing(RuntimeError):
    """The Cinder/Keystone virtualenv has not been created (run scripts/setup-cinder-venv.sh)."""


class PeerStartError(RuntimeError):
    """A peer process failed to start or did not answer before the deadline."""


def cinder_venv() -> Path:
    """Where ``scripts/setup-cinder-venv.sh`` puts the Cinder/Keystone virtualenv."""
    env = os.environ.get("WATCHDOGD_CINDER_VENV")
    return Path(env) if env else REPO / ".cache" / "cinder-venv"


def venv_ready(venv: Path | None = None) -> bool:
    """True when the venv has the commands this module runs (the setup script's marker too)."""
    venv = venv or cinder_venv()
    needed = ("cinder-api", "cinder-manage", "keystone-manage", "python")
    return (venv / ".watchdogd-pins").is_file() and all(
        os.access(venv / "bin" / name, os.X_OK) for name in needed
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# The paste pipeline is written out whole rather than copied from the venv's etc/ so that the
# test peer does not depend on where pip put data files. It is Cinder 29's api-paste.ini plus
# one filter, ``defaulttoken``, in front of ``noauth``. Pipelines continue on indented lines
# (ConfigParser joins them; Cinder's pipeline_factory splits on any whitespace).
_API_PASTE = """\
[composite:osapi_volume]
use = call:cinder.api:root_app_factory
/: apiversions
/healthcheck: healthcheck
/v3: openstack_volume_api_v3

[composite:openstack_volume_api_v3]
use = call:cinder.api.middleware.auth:pipeline_factory
noauth = request_id cors http_proxy_to_wsgi faultwrap sizelimit osprofiler
    defaulttoken noauth apiv3
noauth_include_project_id = request_id cors http_proxy_to_wsgi faultwrap sizelimit osprofiler
    defaulttoken noauth_include_project_id apiv3
keystone = request_id cors http_proxy_to_wsgi faultwrap sizelimit osprofiler
    authtoken keystonecontext apiv3
keystone_nolimit = request_id cors http_proxy_to_wsgi faultwrap sizelimit osprofiler
    authtoken keystonecontext apiv3

[filter:defaulttoken]
paste.filter_factory = watchdogd_default_token:filter_factory
token = admin:admin

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware.http_proxy_to_wsgi:HTTPProxyToWSGI.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = cinder

[filter:faultwrap]
paste.filter_factory = cinder.api.middleware.fault:FaultWrapper.factory

[filter:osprofiler]
paste.filter_factory = osprofiler.web:WsgiMiddleware.factory

[filter:noauth]
paste.filter_factory = cinder.api.middleware.auth:NoAuthMiddleware.factory

[filter:noauth_include_project_id]
paste.filter_factory = cinder.api.middleware.auth:NoAuthMiddlewareIncludeProjectID.factory

[filter:sizelimit]
paste.filter_factory = oslo_middleware.sizelimit:RequestBodySizeLimiter.factory

[app:apiv3]
paste.app_factory = cinder.api.v3.router:APIRouter.factory

[pipeline:apiversions]
pipeline = request_id cors http_proxy_to_wsgi faultwrap osvolumeversionapp

[app:osvolumeversionapp]
paste.app_factory = cinder.api.versions:Versions.factory

[pipeline:healthcheck]
pipeline = request_id healthcheckapp

[app:healthcheckapp]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {workdir}/healthcheck_disable

[filter:keystonecontext]
paste.filter_factory = cinder.api.middleware.auth:CinderKeystoneContext.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[filter:request_id]
paste.filter_factory = cinder.api.middleware.request_id:RequestId.factory
"""

# Cinder 29's etc/cinder/resource_filters.json: the filters a non-admin may use on list calls
# (admins may use any). Without the file cinder-api logs an ERROR on every list request and
# rejects every non-admin filter with 400.
_RESOURCE_FILTERS = {
    "volume": ["name", "status", "metadata", "bootable", "migration_status",
               "availability_zone", "group_id", "size", "created_at", "updated_at",
               "consumes_quota"],
    "backup": ["name", "status", "volume_id"],
    "snapshot": ["name", "status", "volume_id", "metadata", "availability_zone",
                 "consumes_quota"],
    "group": ["name"],
    "group_snapshot": ["name", "status", "group_id"],
    "attachment": ["volume_id", "status", "instance_id", "attach_status"],
    "message": ["resource_uuid", "resource_type", "event_id", "request_id", "message_level"],
    "pool": ["name", "volume_type"],
    "volume_type": ["is_public", "extra_specs"],
}  # fmt: skip

# Loaded by cinder-api through PYTHONPATH (it runs in the Cinder venv, not ours).
_DEFAULT_TOKEN_MODULE = '''\
"""Paste filter: give token-less requests a default noauth token.

Cinder's noauth middleware answers any request without X-Auth-Token with 204 and a
fake token (an Auth 1.1 handshake). openstacksdk with auth_type=none never sends a
token, so its microversion discovery would read that 204 as "no versions".
"""


def filter_factory(global_conf, **local_conf):
    token = local_conf.get("token", "admin:admin")

    def _filter(app):
        def middleware(environ, start_response):
            environ.setdefault("HTTP_X_AUTH_TOKEN", token)
            return app(environ, start_response)

        return middleware

    return _filter
'''

# Keystone's WSGI app under werkzeug's threaded server (werkzeug is a Flask dependency, so it is
# in the venv already). It binds port 0 itself and reports the port through a file, so there is
# no race for Keystone's port at all.
_KEYSTONE_SERVER = '''\
"""Serve keystone.server.wsgi's public application on 127.0.0.1 (test use only)."""
import os
import sys

conf, port_file = sys.argv[1], sys.argv[2]
# keystone.server.configure() parses sys.argv: hide our arguments from oslo.config.
sys.argv = sys.argv[:1]
os.environ["OS_KEYSTONE_CONFIG_FILES"] = conf

from keystone.server import wsgi  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

app = wsgi.initialize_public_application()
server = make_server("127.0.0.1", 0, app, threaded=True)
tmp = port_file + ".tmp"
with open(tmp, "w") as fh:
    fh.write(str(server.server_address[1]))
os.replace(tmp, port_file)
server.serve_forever()
'''


class RealCinder:
    """A real ``cinder-api`` (and optionally Keystone) on free ports, as a context manager.

    Attributes set by :meth:`start`:

    * ``url``: Cinder's root URL (``http://127.0.0.1:PORT``), the value for
      ``block_storage_endpoint_override`` (not ``.../v3``: the SDK discovers versions at the root).
    * ``keystone_url``: Keystone's root URL, or None with noauth.
    * ``project_id``: the project of :meth:`connection` ``(admin=True)``: a UUID with Keystone;
      with noauth ``"notused"``, because keystoneauth's ``none`` plugin sends the literal token
      ``notused`` and Cinder's noauth reads ``user:project`` from it (no colon: both "notused").
    * ``member_project_id`` / ``member_user_id``: the non-admin (Keystone only).
    """

    ADMIN_PASSWORD = "admin-secret"  # test-only credentials, never used outside a test workdir
    MEMBER_USER = "watchdogd-member"
    MEMBER_PASSWORD = "member-secret"
    MEMBER_PROJECT = "watchdogd-users"
    SERVICE_PASSWORD = "cinder-secret"

    def __init__(
        self,
        workdir: Path,
        *,
        keystone: bool = False,
        venv: Path | None = None,
        project_id_in_url: bool | None = None,
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        """Prepare (not start) the peers.

        ``project_id_in_url`` only matters with Keystone: the catalog entry is
        ``/v3/%(project_id)s`` by default (as on most production clouds, e.g. Jetstream2), or
        ``/v3`` when False. With noauth, the SDK uses the endpoint override and URLs carry no
        project id.
        """
        self.workdir = Path(workdir).resolve()
        self.keystone = keystone
        self.venv = venv or cinder_venv()
        self.project_id_in_url = keystone if project_id_in_url is None else project_id_in_url
        self.start_timeout = start_timeout
        self.url: str = ""
        self.keystone_url: str | None = None
        self.project_id: str = "notused"
        self.member_project_id: str | None = None
        self.member_user_id: str | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._db = self.workdir / "cinder.sqlite"
        self._admin_conn: openstack.connection.Connection | None = None
        self._cinder_service_id = ""
        self._cinder_t0 = 0.0
        #: seconds per start-up step, to see where start-up time goes (reported by the tests)
        self.timings: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RealCinder:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> RealCinder:
        """Configure and start the services; return once Cinder answers HTTP.

        On any failure the processes started so far are stopped and PeerStartError carries the
        tail of the relevant log.
        """
        if not venv_ready(self.venv):
            raise CinderVenvMissing(
                f"no Cinder venv at {self.venv}: run scripts/setup-cinder-venv.sh"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "paste").mkdir(exist_ok=True)
        (self.workdir / "paste" / "watchdogd_default_token.py").write_text(_DEFAULT_TOKEN_MODULE)
        (self.workdir / "api-paste.ini").write_text(_API_PASTE.format(workdir=self.workdir))
        (self.workdir / "resource_filters.json").write_text(json.dumps(_RESOURCE_FILTERS))
        t0 = time.monotonic()
        try:
            if self.keystone:
                self._start_with_keystone()
            else:
                self._start_noauth()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """End the services we started, by their process groups, newest first. Idempotent."""
        for name, proc in reversed(list(self._procs.items())):
            self._stop_proc(name, proc)
        self._procs.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if self._admin_conn is not None:
            self._admin_conn.close()
            self._admin_conn = None

    # -- processes ---------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        """The environment for the venv's programs: ours minus anything that would leak in.

        ``OS_*`` would let a developer's clouds.yaml/openrc settings steer keystone-manage or
        the services; ``PYTHON*`` from the project venv would mix the two environments.
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))
        }
        env["PYTHONPATH"] = str(self.workdir / "paste")
        env["PYTHONWARNINGS"] = "ignore"  # eventlet's deprecation banner on every command
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def _popen(self, name: str, argv: Sequence[str], *, session: bool) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("ab")
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        self._logs[name] = log
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            cwd=self.workdir,
            start_new_session=session,
        )

    def _finish(self, name: str, proc: subprocess.Popen[bytes], t0: float) -> None:
        """Wait for a one-shot command; raise with its log's tail when it fails."""
        log_path = self.workdir / f"{name}.log"
        try:
            rc = proc.wait(timeout=max(1.0, t0 + _CMD_TIMEOUT - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise PeerStartError(f"{name} timed out; {log_path} ends:\n{_tail(log_path)}") from exc
        finally:
            log = self._logs.pop(name, None)
            if log is not None:
                log.close()
        self.timings[name] = time.monotonic() - t0
        if rc != 0:
            raise PeerStartError(f"{name} exited {rc}; {log_path} ends:\n{_tail(log_path)}")

    def _run_all(self, commands: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Run independent one-shot commands concurrently (each pays ~2.5 s of imports)."""
        started = [
            (name, self._popen(name, argv, session=False), time.monotonic())
            for name, argv in commands
        ]
        try:
            for name, proc, t0 in started:
                self._finish(name, proc, t0)
        finally:
            for _name, proc, _t0 in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a long-running service in a session of its own, remembered for stop()."""
        proc = self._popen(name, argv, session=True)
        self._procs[name] = proc
        return proc

    def _died(self, name: str, proc: subprocess.Popen[bytes]) -> PeerStartError:
        log_path = self.workdir / f"{name}.log"
        return PeerStartError(
            f"{name} exited {proc.returncode} while starting; {log_path} ends:\n{_tail(log_path)}"
        )

    def _wait_http(self, name: str, url: str, proc: subprocess.Popen[bytes]) -> None:
        """Poll ``url`` until any HTTP answer arrives, the process dies, or the deadline passes."""
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._died(name, proc)
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (http://127.0.0.1)
                    resp.read()
            except urllib.error.HTTPError:
                pass  # an HTTP error status is still an answer: the server is up
            except OSError as exc:
                last = exc
                time.sleep(0.1)
                continue
            self.timings[f"{name} answers"] = time.monotonic() - t0
            return
        raise PeerStartError(
            f"{name} did not answer {url} within {self.start_timeout:.0f} s ({last}); "
            f"log ends:\n{_tail(self.workdir / (name + '.log'))}"
        )

    def _bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def _stop_proc(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group we created for ``proc`` (pgid == pid), then SIGKILL.

        cinder-api's oslo.service launcher forks a worker; signalling the group reaches it too,
        and nothing outside what we started.
        """
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        else:
            # The leader is gone; a forked worker may still hold the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        log = self._logs.pop(name, None)
        if log is not None:
            log.close()

    # -- start-up sequences ------------------------------------------------------------------

    def _cinder_db_sync(self) -> tuple[str, list[str]]:
        conf = self._cinder_conf(0)  # the port does not matter to db sync
        return (
            "cinder-db-sync",
            [self._bin("cinder-manage"), "--config-file", str(conf), "db", "sync"],
        )

    def _start_noauth(self) -> None:
        self._run_all([self._cinder_db_sync()])
        self._launch_cinder_api()
        self._await_cinder_api()

    def _start_with_keystone(self) -> None:
        """Keystone and Cinder, overlapping what does not depend on each other.

        Serially this took ~22 s (every keystone-manage call imports for ~2.5 s); overlapped,
        about half.
        """
        conf = self._keystone_conf()
        manage = [self._bin("keystone-manage"), "--config-file", str(conf)]
        owner = [
            "--keystone-user", pwd.getpwuid(os.getuid()).pw_name,
            "--keystone-group", grp.getgrgid(os.getgid()).gr_name,
        ]  # fmt: skip
        self._run_all(
            [
                ("keystone-db-sync", [*manage, "db_sync"]),
                ("keystone-fernet-setup", [*manage, "fernet_setup", *owner]),
                ("keystone-credential-setup", [*manage, "credential_setup", *owner]),
                self._cinder_db_sync(),
            ]
        )

        server_py = self.workdir / "keystone_server.py"
        server_py.write_text(_KEYSTONE_SERVER)
        port_file = self.workdir / "keystone.port"
        port_file.unlink(missing_ok=True)
        t0 = time.monotonic()
        proc = self._spawn(
            "keystone", [self._bin("python"), str(server_py), str(conf), str(port_file)]
        )
        deadline = t0 + self.start_timeout
        while not port_file.exists():
            if proc.poll() is not None:
                raise self._died("keystone", proc)
            if time.monotonic() > deadline:
                raise PeerStartError(
                    f"keystone did not start; log ends:\n{_tail(self.workdir / 'keystone.log')}"
                )
            time.sleep(0.05)
        self.timings["keystone listening"] = time.monotonic() - t0
        self.keystone_url = f"http://127.0.0.1:{int(port_file.read_text())}"
        v3 = self.keystone_url + "/v3"

        # bootstrap only writes Keystone's database; cinder-api only needs Keystone's URL
        # until the first request: both start now, side by side.
        t0 = time.monotonic()
        bootstrap = self._popen(
            "keystone-bootstrap",
            [*manage, "bootstrap", "--bootstrap-password", self.ADMIN_PASSWORD,
             "--bootstrap-admin-url", v3, "--bootstrap-public-url", v3,
             "--bootstrap-internal-url", v3, "--bootstrap-region-id", "RegionOne"],
            session=False,
        )  # fmt: skip
        try:
            self._launch_cinder_api()
            self._finish("keystone-bootstrap", bootstrap, t0)
        finally:
            if bootstrap.poll() is None:
                bootstrap.kill()
                bootstrap.wait()
        self._wait_http("keystone", v3, proc)
        self._create_identities()
        self._await_cinder_api()
        self._register_cinder_endpoint()

    # -- Keystone ----------------------------------------------------------------------------

    def _keystone_conf(self) -> Path:
        conf = self.workdir / "keystone.conf"
        keys = self.workdir / "fernet-keys"
        conf.write_text(
            textwrap.dedent(
                f"""\
                [DEFAULT]
                debug = false
                use_stderr = true

                [database]
                connection = sqlite:///{self.workdir / "keystone.sqlite"}

                [identity]
                # bcrypt's minimum cost: the default (12) costs ~0.3 s per password check.
                password_hash_rounds = 4

                [token]
                provider = fernet
                expiration = 14400

                [fernet_tokens]
                key_repository = {keys}

                # Receipts (MFA) use their own key repository setting, whose default is
                # /etc/keystone/fernet-keys, which does not exist here.
                [fernet_receipts]
                key_repository = {keys}

                [credential]
                key_repository = {self.workdir / "credential-keys"}
                """
            )
        )
        return conf

    def _create_identities(self) -> None:
        """The non-admin member (and its project) and the service user cinder validates with."""
        t0 = time.monotonic()
        admin = self._keystone_conn("admin", self.ADMIN_PASSWORD, "admin")
        try:
            identity = cast(identity_v3.Proxy, admin.identity)
            self.project_id = str(identity.find_project("admin", ignore_missing=False).id)
            member_role = identity.find_role("member", ignore_missing=False)
            admin_role = identity.find_role("admin", ignore_missing=False)
            service_role = identity.find_role("service") or identity.create_role(name="service")

            project = identity.create_project(
                name=self.MEMBER_PROJECT, domain_id="default", description="watchdogd tests"
            )
            user_m = identity.create_user(
                name=self.MEMBER_USER,
                password=self.MEMBER_PASSWORD,
                domain_id="default",
                default_project_id=project.id,
            )
            identity.assign_project_role_to_user(project.id, user_m.id, member_role.id)
            self.member_project_id = str(project.id)
            self.member_user_id = str(user_m.id)

            # keystonemiddleware validates users' tokens with a token of the "cinder" user.
            service_project = identity.create_project(name="service", domain_id="default")
            cinder_user = identity.create_user(
                name="cinder", password=self.SERVICE_PASSWORD, domain_id="default"
            )
            for role in (admin_role, service_role):
                identity.assign_project_role_to_user(service_project.id, cinder_user.id, role.id)
            self._cinder_service_id = str(
                identity.create_service(
                    name="cinderv3", type="block-storage", description="Cinder (watchdogd tests)"
                ).id
            )
        finally:
            admin.close()
        self.timings["keystone identities via API"] = time.monotonic() - t0

    def _keystone_conn(
        self, username: str, password: str, project: str
    ) -> openstack.connection.Connection:
        assert self.keystone_url is not None
        return openstack.connect(
            auth_type="password",
            auth_url=self.keystone_url + "/v3",
            username=username,
            password=password,
            project_name=project,
            user_domain_name="Default",
            project_domain_name="Default",
            region_name="RegionOne",
            interface="public",
            identity_api_version="3",
            api_timeout=30,
            load_yaml_config=False,
            load_envvars=False,
        )

    def _register_cinder_endpoint(self) -> None:
        """Put cinder-api in the catalog, once its port is final (after any port-race retry)."""
        suffix = "/v3/%(project_id)s" if self.project_id_in_url else "/v3"
        admin = self._keystone_conn("admin", self.ADMIN_PASSWORD, "admin")
        try:
            cast(identity_v3.Proxy, admin.identity).create_endpoint(
                service_id=self._cinder_service_id,
                interface="public",
                url=self.url + suffix,
                region_id="RegionOne",
            )
        finally:
            admin.close()

    # -- Cinder ------------------------------------------------------------------------------

    def _cinder_conf(self, port: int) -> Path:
        (self.workdir / "state").mkdir(exist_ok=True)
        (self.workdir / "locks").mkdir(exist_ok=True)
        conf = self.workdir / "cinder.conf"
        auth = "keystone" if self.keystone else "noauth"
        keystone_section = ""
        if self.keystone:
            keystone_section = textwrap.dedent(
                f"""\
                [keystone_authtoken]
                www_authenticate_uri = {self.keystone_url}/v3
                auth_url = {self.keystone_url}/v3
                auth_type = password
                username = cinder
                password = {self.SERVICE_PASSWORD}
                project_name = service
                user_domain_name = Default
                project_domain_name = Default
                region_name = RegionOne
                # keystonemiddleware finds Keystone through the catalog with interface
                # "internal" by default; bootstrap here registers all three, but a catalog
                # with public endpoints only would leave it without one.
                interface = public
                service_token_roles_required = true
                """
            )
        conf.write_text(
            textwrap.dedent(
                f"""\
                [DEFAULT]
                auth_strategy = {auth}
                transport_url = fake:/
                osapi_volume_listen = 127.0.0.1
                osapi_volume_listen_port = {port}
                osapi_volume_workers = 1
                api_paste_config = {self.workdir / "api-paste.ini"}
                resource_query_filters_file = {self.workdir / "resource_filters.json"}
                state_path = {self.workdir / "state"}
                debug = false
                use_stderr = true
                # Unlimited quotas: the defaults (10 volumes per project) would stop a test
                # session or a 5,000-volume benchmark. use_default_quota_class=false makes
                # Cinder take these instead of the 'default' quota class rows db sync writes.
                use_default_quota_class = false
                quota_volumes = -1
                quota_gigabytes = -1
                quota_snapshots = -1
                quota_backups = -1
                quota_backup_gigabytes = -1
                quota_groups = -1

                [database]
                connection = sqlite:///{self._db}

                [oslo_concurrency]
                lock_path = {self.workdir / "locks"}

                [coordination]
                backend_url = file://{self.workdir / "state"}

                """
            )
            + keystone_section
        )
        return conf

    def _launch_cinder_api(self) -> None:
        port = free_port()
        conf = self._cinder_conf(port)
        self.url = f"http://127.0.0.1:{port}"
        self._cinder_t0 = time.monotonic()
        self._spawn("cinder-api", [self._bin("cinder-api"), "--config-file", str(conf)])

    def _await_cinder_api(self) -> None:
        """Wait for cinder-api; if another process took its port meanwhile, try a new one.

        cinder-api binds the port it is given (oslo.service cannot report an ephemeral one), so
        free_port() is a check-then-use race, lost rarely but possibly under parallel tests.
        """
        for attempt in range(4):
            try:
                self._wait_http("cinder-api", self.url + "/", self._procs["cinder-api"])
            except PeerStartError as exc:
                if "Address already in use" in str(exc) and attempt < 3:
                    self._stop_proc("cinder-api", self._procs.pop("cinder-api"))
                    self._launch_cinder_api()
                    continue
                raise
            self.timings["cinder-api answers"] = time.monotonic() - self._cinder_t0
            return

    # -- clients -----------------------------------------------------------------------------

    def connection(self, *, admin: bool = True) -> openstack.connection.Connection:
        """A fresh openstacksdk connection (caller closes it).

        noauth: ``auth_type='none'`` and ``block_storage_endpoint_override`` = the root URL; every
        request is admin (noauth sets ``is_admin=True``), so ``admin=False`` is refused rather
        than silently handing out an admin. Keystone: password auth as ``admin`` (project
        ``admin``) or as the member user in its own project.
        """
        if not self.url:
            raise RuntimeError("RealCinder is not started")
        if not self.keystone:
            if not admin:
                raise ValueError("noauth Cinder has no non-admin users: use keystone=True")
            return openstack.connect(
                auth_type="none",
                block_storage_endpoint_override=self.url,
                block_storage_api_version="3",
                api_timeout=30,
                load_yaml_config=False,
                load_envvars=False,
            )
        if admin:
            return self._keystone_conn("admin", self.ADMIN_PASSWORD, "admin")
        return self._keystone_conn(self.MEMBER_USER, self.MEMBER_PASSWORD, self.MEMBER_PROJECT)

    def _admin(self) -> openstack.connection.Connection:
        if self._admin_conn is None:
            self._admin_conn = self.connection(admin=True)
        return self._admin_conn

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        microversion: str | None = None,
        token: str | None = None,
        expect: Sequence[int] = (200, 202),
    ) -> Any:
        if token is not None:
            return self._call_as(token, method, path, body=body, expect=expect)
        resp = self._admin().block_storage.request(
            path,
            method,
            json=dict(body) if body is not None else None,
            microversion=microversion,
            raise_exc=False,
        )
        if resp.status_code not in expect:
            raise RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def _call_as(
        self,
        token: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None,
        expect: Sequence[int],
    ) -> Any:
        """A noauth request with a chosen ``user:project`` token, bypassing openstacksdk.

        keystoneauth's ``none`` plugin overwrites any X-Auth-Token header with ``notused``, so
        acting in another project needs a plain HTTP request.
        """
        req = urllib.request.Request(  # noqa: S310 (http://127.0.0.1)
            f"{self.url}/v3{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"X-Auth-Token": token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        if status not in expect:
            raise RuntimeError(f"{method} {path} -> {status}: {raw[:500]!r}")
        return json.loads(raw) if raw else None

    def create_volume(
        self, name: str, size: int = 1, *, project_id: str | None = None
    ) -> dict[str, Any]:
        """Create a volume through the API, reset it to ``available``, return its detail JSON.

        ``project_id``: with noauth the request carries ``X-Auth-Token: admin:<project_id>`` so
        Cinder itself records that project (and its quota usage); with Keystone an admin can only
        create in its own project, so the row's ``project_id`` is rewritten in Cinder's database
        afterwards. Default: the project of :meth:`connection`.
        """
        token = f"admin:{project_id}" if project_id and not self.keystone else None
        created = self._call(
            "POST", "/volumes", body={"volume": {"name": name, "size": size}}, token=token
        )
        vid = created["volume"]["id"]
        if project_id and self.keystone:
            self.sql(
                "UPDATE volumes SET project_id = :p WHERE id = :id", {"p": project_id, "id": vid}
            )
        self.reset_status(vid, "available")
        return self.get_volume(vid)

    def reset_status(
        self,
        volume_id: str,
        status: str,
        *,
        attach_status: str | None = None,
        migration_status: str | None = None,
    ) -> None:
        """Admin ``os-reset_status`` (edits Cinder's database only; 202 and no body)."""
        body: dict[str, str] = {"status": status}
        if attach_status:
            body["attach_status"] = attach_status
        if migration_status:
            body["migration_status"] = migration_status
        self._call("POST", f"/volumes/{volume_id}/action", body={"os-reset_status": body})

    def get_volume(self, volume_id: str, microversion: str = "3.27") -> dict[str, Any]:
        """``GET /volumes/{id}`` as plain JSON (the ``volume`` member)."""
        data = self._call("GET", f"/volumes/{volume_id}", microversion=microversion)
        return dict(data["volume"])

    def get_attachment(self, attachment_id: str) -> dict[str, Any]:
        """``GET /attachments/{id}`` (3.27) as plain JSON (the ``attachment`` member)."""
        data = self._call(
            "GET", f"/attachments/{attachment_id}", microversion=ATTACHMENTS_MICROVERSION
        )
        return dict(data["attachment"])

    def create_attachment(
        self,
        volume_id: str,
        *,
        instance_uuid: str,
        connector: dict[str, Any] | None = None,
        complete: bool = False,
    ) -> dict[str, Any]:
        """Create a ``reserved`` attachment (``POST /attachments``, 3.27); return its JSON.

        No connector is ever sent to Cinder: with one, Cinder makes a synchronous RPC call to
        cinder-volume (initialize_connection), which does not exist here and would block for the
        RPC timeout. A given ``connector`` is written into the attachment row instead (what a
        real attach leaves there). ``complete=True`` then calls ``os-complete`` (3.44): the
        attachment becomes ``attached`` and the volume ``in-use``.
        """
        created = self._call(
            "POST",
            "/attachments",
            body={"attachment": {"volume_uuid": volume_id, "instance_uuid": instance_uuid}},
            microversion=ATTACHMENTS_MICROVERSION,
        )
        aid = created["attachment"]["id"]
        if connector is not None:
            self.sql(
                "UPDATE volume_attachment SET connector = :c WHERE id = :id",
                {"c": json.dumps(connector), "id": aid},
            )
        if complete:
            self._call(
                "POST",
                f"/attachments/{aid}/action",
                body={"os-complete": None},
                microversion=COMPLETE_MICROVERSION,
                expect=(200, 202, 204),
            )
        return self.get_attachment(aid)

    def sql(self, statement: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one statement on Cinder's own SQLite database; return rows as dicts.

        For states the API will not produce (an old ``updated_at``, a reserved attachment beside
        an attached one on a non-multiattach volume). Timestamps in Cinder's tables are naive
        UTC strings like ``2026-11-22 03:00:00.123456``. Writes are committed at once; cinder-api
        reads the database on every request, so the change is visible to the next API call.
        """
        con = sqlite3.connect(self._db, timeout=30)
        try:
            con.row_factory = sqlite3.Row
            with con:
                cur = con.execute(statement, dict(params or {}))
                return [dict(r) for r in cur.fetchall()] if cur.description else []
        finally:
            con.close()


if __name__ == "__main__":  # pragma: no cover - manual smoke test
    import tempfile

    with (
        tempfile.TemporaryDirectory() as d,
        RealCinder(Path(d), keystone="--keystone" in sys.argv) as c,
    ):
        print(c.url, c.keystone_url, json.dumps(c.timings, indent=1))
        print(json.dumps(c.create_volume("smoke"), indent=1))
