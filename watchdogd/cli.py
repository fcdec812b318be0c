"""The command line: ``check``, ``run``, ``demo``, ``config check``, ``findings``, ``actions``.

Exit codes (stable, for cron jobs and CI):

== ==========================================================
0  the pass completed (with or without findings)
1  ``--exit-code`` was given and there are findings
2  a check could not complete (a source failed, data implausible)
64 bad usage
78 bad configuration
== ==========================================================
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from watchdogd.app import App, BuildError, build, load_config, open_store, reload
from watchdogd.config import Config, ConfigError
from watchdogd.report import render_report
from watchdogd.text import table
from watchdogd.times import iso

if TYPE_CHECKING:
    from watchdogd.metrics import Metrics
    from watchdogd.store import Store

EXIT_FINDINGS = 1
EXIT_INCOMPLETE = 2
EXIT_USAGE = 64
EXIT_CONFIG = 78
EXIT_SOFTWARE = 70


class Fatal(Exception):
    """Stop with a one-line message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _load(path: str | None, *, check_files: bool = False) -> Config:
    """The configuration, or exit 78: one line per problem, each naming its field."""
    try:
        return load_config(path, check_files=check_files)
    except ConfigError as exc:
        if len(exc.problems) == 1:
            raise Fatal(f"config: {exc.problems[0]}", EXIT_CONFIG) from None
        for problem in exc.problems:
            click.echo(f"config: {problem}", err=True)
        raise Fatal(f"configuration has {len(exc.problems)} problem(s)", EXIT_CONFIG) from None


def _build(config: Config, dry_run: bool | None, *, service: bool = False,
           metrics: Metrics | None = None) -> App:
    """The application, or exit 78 naming the setting that cannot be built."""
    try:
        return build(config, dry_run=dry_run, service=service, metrics=metrics)
    except BuildError as exc:
        raise Fatal(str(exc), EXIT_CONFIG) from None


config_option = click.option(
    "--config", "-c", "config_path", metavar="FILE", envvar="WATCHDOGD_CONFIG",
    help="TOML configuration file (default $WATCHDOGD_CONFIG, /etc/watchdogd/watchdogd.toml).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="watchdogd")
def cli() -> None:
    """Keep JupyterHub on Kubernetes and OpenStack healthy.

    Checks compare the hub database, the proxy, Kubernetes and OpenStack, fix
    what is safe to fix (dry-run unless configured otherwise), and notify
    people about the rest.
    """


@cli.command()
@config_option
@click.option("--only", multiple=True, metavar="CHECK", help="Run only this check (repeatable).")
@click.option("--target", metavar="NAME", help="Run only the targets with this name.")
@click.option("--dry-run/--no-dry-run", default=None,
              help="Override remediation.dry_run for this pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@click.option("--exit-code", is_flag=True, help="Exit 1 when there are findings.")
def check(config_path: str | None, only: Sequence[str], target: str | None,
          dry_run: bool | None, as_json: bool, exit_code: bool) -> None:
    """Run one pass of the checks and report."""
    from watchdogd import logs  # noqa: PLC0415
    from watchdogd.checks import REGISTRY  # noqa: PLC0415

    logs.configure()
    config = _load(config_path)
    unknown = [name for name in only if name not in REGISTRY]
    if unknown:
        raise Fatal(f"--only: unknown check {unknown[0]!r} (known: "
                    f"{', '.join(sorted(REGISTRY))})", EXIT_USAGE)
    exporting = bool(config.daemon.metrics_textfile or config.daemon.pushgateway_url)
    metrics = _one_shot_metrics() if exporting else None
    app = _build(config, dry_run, metrics=metrics)
    engine = app.engine
    if not engine.plan(only or None, target):
        raise Fatal("nothing to check: no configured target matches"
                    + (f" --target {target}" if target else ""), EXIT_USAGE)
    from watchdogd.store import StoreError  # noqa: PLC0415

    try:
        report = engine.run_pass(only or None, target)
    except StoreError as exc:
        # Without the store there is no confirmation and no audit: stop, act on nothing more.
        raise Fatal(f"state: {exc}", EXIT_INCOMPLETE) from None
    if metrics is not None:
        metrics.observe(report)
        _export_metrics(app, metrics)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, default=str))
    else:
        click.echo(render_report(report.as_json()))
    if report.errors:
        sys.exit(EXIT_INCOMPLETE)
    if exit_code and report.findings:
        sys.exit(EXIT_FINDINGS)


def _one_shot_metrics() -> Metrics:
    from watchdogd.metrics import Metrics  # noqa: PLC0415

    metrics = Metrics()
    metrics.export_leader = False  # not a replica of an election: nothing to sum
    return metrics


def _export_metrics(app: App, metrics: Metrics) -> None:
    """A one-shot run's metrics for a scraper: textfile and/or Pushgateway (``[daemon]``).

    What a scraper should see is the state store's picture (every target's open findings
    and last success), not only this run's: a target that failed now keeps its last
    success time, so an alert on its age fires. A failed export is logged, never fatal.
    """
    import structlog  # noqa: PLC0415

    from watchdogd.metrics import export_one_shot  # noqa: PLC0415
    from watchdogd.store import StoreError  # noqa: PLC0415

    log = structlog.get_logger("watchdogd.metrics")
    metrics.intervals = {name: settings.interval.total_seconds()
                         for name, settings in app.engine.settings.items() if settings.enabled}
    try:
        metrics.observe_open(app.store.findings(status="open"),
                             {key: when.timestamp()
                              for key, when in app.store.last_successes().items()})
        metrics.observe_outbox(app.store.outbox_counts())
    except StoreError as exc:
        log.error("metrics not exported", error=f"state: {exc}")
        return
    for problem in export_one_shot(metrics, app.config.daemon):
        log.error("metrics not exported", problem=problem)


@cli.command()
@config_option
@click.option("--dry-run/--no-dry-run", default=None,
              help="Override remediation.dry_run.")
def run(config_path: str | None, dry_run: bool | None) -> None:
    """Run the daemon: passes on schedule until SIGTERM; SIGHUP reloads the configuration.

    Under systemd (``Type=notify``) it reports readiness, pings the watchdog
    while passes complete, and announces its shutdown. With
    ``[daemon] leader_election`` only the replica holding the Lease remediates
    and notifies; the others detect, for their metrics.
    """
    import signal  # noqa: PLC0415

    from watchdogd import logs  # noqa: PLC0415
    from watchdogd.daemon import supervise  # noqa: PLC0415
    from watchdogd.sdnotify import SystemdNotifier, watchdog_period  # noqa: PLC0415

    # SIGHUP's default action kills: until the daemon's handler is in place (after the
    # store and the metrics endpoint are up), a reload request is ignored instead.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.configure()
    app = _build(_load(config_path), dry_run, service=True)
    daemon = app.daemon(reloader=lambda: reload(app, config_path, dry_run))
    sys.exit(supervise(daemon, systemd=SystemdNotifier.from_env(),
                       watchdog_period=watchdog_period(), health=app.health,
                       metrics=app.metrics, server=app.server, elector=app.elector))


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@config_option
def config_check(config_path: str | None) -> None:
    """Validate the configuration; print every problem with its path.

    Beyond what ``check`` and ``run`` require to start, the kubeconfig and clouds.yaml
    files must exist and name the configured context and cloud, and the state database's
    folder must exist. ``run`` applies the same validation to a file it reloads on SIGHUP.
    """
    config = _load(config_path, check_files=True)
    hubs, clusters, clouds = len(config.hubs), len(config.clusters), len(config.clouds)
    click.echo(f"configuration is valid: {hubs} hub(s), {clusters} cluster(s), "
               f"{clouds} cloud(s); remediation "
               + ("dry-run" if config.remediation.dry_run else "ON: "
                  + ", ".join(config.remediation.enabled)))


def _store(config_path: str | None) -> Store:
    try:
        return open_store(_load(config_path))
    except BuildError as exc:
        raise Fatal(str(exc), EXIT_CONFIG) from None


@cli.command()
@config_option
@click.option("--all", "show_all", is_flag=True, help="Include resolved findings.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def findings(config_path: str | None, show_all: bool, as_json: bool) -> None:
    """List the findings in the state store."""
    rows = _store(config_path).findings(status=None if show_all else "open")
    _listing(rows if as_json else None, "no open findings" if not rows else None,
             ["SEVERITY", "KIND", "SUBJECT", "TARGET", "SEEN", "FIRST SEEN", "STATUS"],
             [[r["severity"], r["kind"], r["subject"], f"{r['check']}/{r['target']}",
               str(r["sightings"]), _iso(r["first_seen"]), r["status"]] for r in rows])


@cli.command()
@config_option
@click.option("--limit", default=50, show_default=True, help="How many actions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def actions(config_path: str | None, limit: int, as_json: bool) -> None:
    """Show the action audit log, newest first."""
    records = _store(config_path).actions(limit=limit)
    _listing([r.__dict__ for r in records] if as_json else None,
             "no actions recorded" if not records else None,
             ["ID", "STARTED", "ACTION", "TARGET", "FINDING", "STATUS", "DETAIL"],
             [[str(r.id), _iso(r.started_at), r.name, r.target, r.finding_key, r.status,
               (r.detail or "")[:60]] for r in records])


@cli.command()
@click.option("--passes", default=4, show_default=True, help="How many passes to run.")
@click.option("--json", "as_json", is_flag=True, help="Print each pass's JSON report.")
@click.option("--keep", is_flag=True, help="Keep the world running until Ctrl-C.")
def demo(passes: int, as_json: bool, keep: bool) -> None:
    """Run passes against a built-in simulated world, remediation on."""
    from watchdogd.sim.demo import run_demo  # noqa: PLC0415

    sys.exit(run_demo(passes=passes, as_json=as_json, keep=keep))



def _listing(as_json: list[Any] | None, empty: str | None, headers: list[str],
             rows: list[list[str]]) -> None:
    """A store listing: JSON when asked, else the ``empty`` line or a table."""
    if as_json is not None:
        click.echo(json.dumps(as_json, indent=2, default=_iso))
    elif empty is not None:
        click.echo(empty)
    else:
        click.echo(table(headers, rows))


def _iso(value: Any) -> str:
    return iso(value, timespec="seconds") if isinstance(value, datetime) else str(value)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: map usage errors to 64 and fatal errors to their codes."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"usage: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort:
        sys.exit(130)
    except Fatal as exc:
        click.echo(f"watchdogd: {exc}", err=True)
        sys.exit(exc.code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # A bug: say so plainly (exit 70, EX_SOFTWARE), never exit 1, which means findings.
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        click.echo(f"watchdogd: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_SOFTWARE)
