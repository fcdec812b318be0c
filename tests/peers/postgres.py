"""A real, throw-away PostgreSQL server for integration tests.

Debian's PostgreSQL server binaries live under ``/usr/lib/postgresql/<major>/bin``;
``initdb`` and ``pg_ctl`` refuse to run as root, so both run as the ``postgres`` OS user
through ``runuser`` when this process is root. The cluster lives in a temporary
directory owned by ``postgres``, listens on 127.0.0.1 on a free port (and on a Unix
socket in the same directory), uses ``--auth=trust`` and ``fsync=off``.

Install the binaries with ``scripts/setup-test-peers.sh``.

Usage::

    with RealPostgres() as pg:
        url = pg.create_database("hub")   # postgresql+psycopg://postgres@127.0.0.1:PORT/hub
        pg.restart()
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresUnavailable", "RealPostgres", "find_pg_bin", "free_port"]

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL server binaries or the ``postgres`` OS user are missing."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pg_bin(major: str | None = None) -> Path:
    """Return Debian's PostgreSQL server ``bin`` directory (highest major, or ``major``).

    Raises:
        PostgresUnavailable: no directory with ``initdb``, ``pg_ctl`` and ``postgres``.
    """
    pattern = f"/usr/lib/postgresql/{major or '*'}/bin"
    candidates = []
    for d in glob.glob(pattern):
        p = Path(d)
        if all(os.access(p / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            try:
                candidates.append((int(p.parent.name), p))
            except ValueError:
                continue
    if not candidates:
        raise PostgresUnavailable(
            f"no PostgreSQL server binaries in {pattern}: run scripts/setup-test-peers.sh"
        )
    return max(candidates)[1]


def postgres_available() -> str | None:
    """Return None when a RealPostgres can run here, else the reason it cannot."""
    try:
        find_pg_bin()
    except PostgresUnavailable as exc:
        return str(exc)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "OS user 'postgres' is missing: run scripts/setup-test-peers.sh"
        if shutil.which("runuser") is None:
            return "runuser is missing (util-linux)"
    return None


class RealPostgres:
    """A real PostgreSQL cluster in a temporary directory, on a free port.

    Attributes:
        port: TCP port on 127.0.0.1.
        datadir: the cluster's data directory (also its Unix socket directory).
        bindir: the server binaries used.
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        start_timeout: float = 60.0,
        os_user: str = "postgres",
    ) -> None:
        """Prepare (but do not start) a cluster; see :meth:`start`."""
        self.bindir: Path = bindir or find_pg_bin()
        self.start_timeout = start_timeout
        self.os_user = os_user
        self.port: int = 0
        self.datadir: Path | None = None
        self._tmp: Path | None = None
        self._running = False
        self._as_other_user = os.geteuid() == 0

    # -- context manager ---------------------------------------------------------

    def __enter__(self) -> RealPostgres:
        """Start the cluster."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the cluster and remove its directory."""
        self.close()

    # -- lifecycle -----------------------------------------------------------------

    def _cmd(self, *args: str) -> list[str]:
        if self._as_other_user:
            return ["runuser", "-u", self.os_user, "--", *args]
        return list(args)

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._cmd(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                f"\n{self.log_tail()}"
            )
        return proc

    def start(self) -> RealPostgres:
        """initdb (first time only) and start the server; waits until it accepts connections."""
        if self._running:
            return self
        if self.datadir is None:
            self._init_cluster()
        if not self.port:
            self.port = free_port()
        assert self.datadir is not None
        opts = (
            f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(int(self.start_timeout)),
            "-o",
            opts,
            "start",
            timeout=self.start_timeout + 10,
        )
        self._running = True
        self._wait_ready()
        return self

    def _init_cluster(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="watchdogd-pg-"))
        self._tmp.chmod(0o755)
        datadir = self._tmp / "data"
        datadir.mkdir(mode=0o700)
        if self._as_other_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(self._tmp, pw.pw_uid, pw.pw_gid)
            os.chown(datadir, pw.pw_uid, pw.pw_gid)
        self.datadir = datadir
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--auth=trust",
            "--no-sync",
        )

    @property
    def logfile(self) -> Path:
        """The server's log file (outside the data directory)."""
        assert self._tmp is not None
        return self._tmp / "postgres.log"

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the server log, for error messages."""
        try:
            text = self.logfile.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError as exc:
                last = exc
                time.sleep(0.05)
        raise TimeoutError(f"postgres on port {self.port} not reachable: {last}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast``); the data directory is kept."""
        if not self._running or self.datadir is None:
            return
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-m", mode, "stop"
        )
        self._running = False

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server (immediately) and remove the temporary directory."""
        try:
            if self._running:
                try:
                    self.stop(mode="immediate")
                except Exception:
                    self._kill_postmaster()
        finally:
            self._running = False
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
                self.datadir = None

    def _kill_postmaster(self) -> None:
        """Last resort: SIGKILL the postmaster by the pid in its pid file."""
        if self.datadir is None:
            return
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 9)
        except (OSError, ValueError, IndexError):
            pass

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` has not been called since."""
        return self._running

    # -- databases -------------------------------------------------------------------

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run one SQL command through ``psql`` over TCP and return its unaligned output."""
        proc = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-v",
                "ON_ERROR_STOP=1",
                "-XAtq",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout

    def url(self, name: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3) of database ``name`` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (UTF8) and return its SQLAlchemy URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        self.psql(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        return self.url(name)
