"""The command line: ``check``, ``run``, ``digest``, ``demo``, ``config check``, ``findings``,
``actions``, ``silence``, ``ack``, and the operator commands ``repair-session``, ``undo``,
``volumes map`` and ``volumes manifests``.

Exit codes (stable, for cron jobs and CI):

== ==========================================================
0  the pass completed (with or without findings); an operator command did its work
1  ``--exit-code`` was given and there are findings; an operator answered no
2  a check could not complete (a source failed, data implausible)
3  ``volumes manifests``: no claim on the map matches
64 bad usage
65 an operator command cannot do it (no such user or action, rows changed, no undo)
69 a peer that decides whether it is safe did not answer clearly
75 refused: the hub is running (``repair-session``, ``undo`` of one)
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
from watchdogd.text import safe_text, table
from watchdogd.times import iso

if TYPE_CHECKING:
    from watchdogd.metrics import Metrics
    from watchdogd.store import Store

EXIT_FINDINGS = 1
EXIT_INCOMPLETE = 2
EXIT_NOT_ON_MAP = 3
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
                       metrics=app.metrics, server=app.server, elector=app.elector,
                       listener=app.listener, web=app.web))


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
    return _open(_load(config_path))


def _open(config: Config) -> Store:
    try:
        return open_store(config)
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


def _operator(by: str | None) -> str:
    """Who is speaking: ``--by``, else the user behind sudo, else the login name."""
    import getpass  # noqa: PLC0415
    import os  # noqa: PLC0415

    name = by or os.environ.get("SUDO_USER") or getpass.getuser()
    if not name.strip():
        raise Fatal("--by: a name is required (who silenced or acknowledged it)", EXIT_USAGE)
    return name.strip()


@cli.group("silence")
def silence_group() -> None:
    """Silences: findings still tracked and reported, never notified (nor acted on)."""


@silence_group.command("add")
@config_option
@click.option("--check", metavar="CHECK", help="Only findings of this check.")
@click.option("--kind", metavar="KIND", help="Only findings of this kind (stale-session...).")
@click.option("--target", metavar="NAME", help="Only findings of this hub, cloud or cluster.")
@click.option("--subject", metavar="PATTERN",
              help="Only subjects matching this shell pattern (alice, pvc-*, user?).")
@click.option("--for", "duration", metavar="DURATION", help="How long: 2h, 3d, 90m.")
@click.option("--until", "until", metavar="TIME", help="Until this ISO time (UTC if no zone).")
@click.option("--reason", required=True, help="Why: recorded and shown with every match.")
@click.option("--by", metavar="NAME", help="Who (default: the sudo user or login name).")
@click.option("--allow-actions", is_flag=True,
              help="Let its findings' actions run as usual (default: no action either).")
def silence_add(config_path: str | None, check: str | None, kind: str | None,
                target: str | None, subject: str | None, duration: str | None,
                until: str | None, reason: str, by: str | None, allow_actions: bool) -> None:
    """Silence the findings that match every given filter, until it expires."""
    from watchdogd.config import parse_duration  # noqa: PLC0415
    from watchdogd.times import parse_time, utcnow  # noqa: PLC0415

    if not any((check, kind, target, subject)):
        raise Fatal("silence add: give at least one of --check, --kind, --target, --subject "
                    "(a silence of everything would hide every page)", EXIT_USAGE)
    if (duration is None) == (until is None):
        raise Fatal("silence add: give exactly one of --for DURATION and --until TIME",
                    EXIT_USAGE)
    if not reason.strip():
        raise Fatal("--reason: say why (it is shown with every silenced finding)", EXIT_USAGE)
    config = _load(config_path)
    if check is not None:
        from watchdogd.checks import REGISTRY  # noqa: PLC0415

        if check not in REGISTRY:
            raise Fatal(f"--check: unknown check {check!r} (known: "
                        f"{', '.join(sorted(REGISTRY))})", EXIT_USAGE)
    now = utcnow()
    if duration is not None:
        try:
            length = parse_duration(duration)
        except ValueError as exc:
            raise Fatal(f"--for: {exc}", EXIT_USAGE) from None
        if length.total_seconds() <= 0:
            raise Fatal("--for: must be longer than zero", EXIT_USAGE)
        expires = now + length
    else:
        parsed = parse_time(until)
        if parsed is None:
            raise Fatal(f"--until: not an ISO time: {until!r}", EXIT_USAGE)
        if parsed <= now:
            raise Fatal(f"--until: {_iso(parsed)} is already past", EXIT_USAGE)
        expires = parsed
    store = _open(config)
    silence = store.add_silence(reason=reason.strip(), created_by=_operator(by), now=now,
                                expires_at=expires, check=check, target=target, kind=kind,
                                subject=subject, allow_actions=allow_actions)
    click.echo(f"silence {silence.id} added until {_iso(silence.expires_at)}"
               + (" (actions still run)" if allow_actions else " (no actions either)"))


@silence_group.command("list")
@config_option
@click.option("--all", "show_all", is_flag=True, help="Include expired silences.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def silence_list(config_path: str | None, show_all: bool, as_json: bool) -> None:
    """List the silences in force (with --all, every one)."""
    from watchdogd.times import utcnow  # noqa: PLC0415

    now = utcnow()
    rows = _store(config_path).silences(now, include_expired=show_all)
    _listing([r.__dict__ | {"active": r.active(now)} for r in rows] if as_json else None,
             "no silences" if not rows else None,
             ["ID", "CHECK", "TARGET", "KIND", "SUBJECT", "UNTIL", "BY", "ACTIONS", "STATE",
              "REASON"],
             [[str(r.id), r.check or "*", r.target or "*", r.kind or "*", r.subject or "*",
               _iso(r.expires_at), r.created_by, "yes" if r.allow_actions else "no",
               "active" if r.active(now) else (
                   f"expired by {r.expired_by}" if r.expired_at else "expired"),
               safe_text(r.reason, 60)] for r in rows])


@silence_group.command("expire")
@config_option
@click.argument("silence_id", type=int)
@click.option("--by", metavar="NAME", help="Who (default: the sudo user or login name).")
def silence_expire(config_path: str | None, silence_id: int, by: str | None) -> None:
    """End a silence now: its findings are notified again from the next pass."""
    from watchdogd.times import utcnow  # noqa: PLC0415

    now = utcnow()
    silence, ended = _store(config_path).expire_silence(silence_id, _operator(by), now)
    if silence is None:
        raise Fatal(f"silence {silence_id}: no such silence", EXIT_USAGE)
    if not ended:
        click.echo(f"silence {silence_id} had already ended at "
                   f"{_iso(silence.expired_at or silence.expires_at)}")
        return
    click.echo(f"silence {silence_id} expired")


@cli.command()
@config_option
@click.argument("key")
@click.option("--by", metavar="NAME", help="Who (default: the sudo user or login name).")
def ack(config_path: str | None, key: str, by: str | None) -> None:
    """Acknowledge one open finding: no reminders until it escalates or resolves.

    KEY is the finding's key (check/target/kind/subject), as `findings --json` and the
    report show it.
    """
    from watchdogd.times import utcnow  # noqa: PLC0415

    try:
        severity = _store(config_path).ack(key, _operator(by), utcnow())
    except KeyError:
        raise Fatal(f"ack: no open finding with key {safe_text(key, 200)!r} "
                    "(see watchdogd findings --json)", EXIT_USAGE) from None
    click.echo(f"acknowledged {safe_text(key, 200)} ({severity.label}): no reminders until it "
               "escalates or resolves")


@cli.command()
@config_option
@click.option("--since", "since_text", metavar="TIME",
              help="Start of the window: an ISO time (UTC if no zone) or a duration back "
                   "from now (7d, 36h). Default: 7 days ago.")
@click.option("--send", is_flag=True,
              help="Also queue it for [digest] urls_file and deliver it (once per week).")
def digest(config_path: str | None, since_text: str | None, send: bool) -> None:
    """Print the weekly digest; with --send, queue and deliver it (for a timer or CronJob).

    The digest goes out once per ISO week (in [digest] timezone): a second --send in the
    same week, from here or from a daemon, delivers what is still queued and queues nothing.
    """
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    from watchdogd.app import digest_notifier  # noqa: PLC0415
    from watchdogd.config import parse_duration  # noqa: PLC0415
    from watchdogd.digest import digest_rows, make_digest, send_digest  # noqa: PLC0415
    from watchdogd.store import StoreError  # noqa: PLC0415
    from watchdogd.times import parse_time, utcnow  # noqa: PLC0415

    config = _load(config_path)
    now = utcnow()
    since = None
    if since_text is not None:
        since = parse_time(since_text)
        if since is None:
            try:
                since = now - parse_duration(since_text)
            except ValueError:
                raise Fatal(f"--since: neither an ISO time nor a duration: "
                            f"{safe_text(since_text, 60)!r}", EXIT_USAGE) from None
        if since >= now:
            raise Fatal(f"--since: {_iso(since)} is not in the past", EXIT_USAGE)
    notifier = None
    if send:
        try:
            notifier = digest_notifier(config)
        except BuildError as exc:
            raise Fatal(str(exc), EXIT_CONFIG) from None
    store = _open(config)
    settings = config.digest
    try:
        report = make_digest(store, now, since=since, tz=ZoneInfo(settings.timezone),
                             prefix=config.notify.title_prefix, top=settings.top)
        click.echo(f"{report.title}\n\n{report.body}")
        if notifier is None:
            return
        # One sender for the outbox: while a daemon holds the lock it delivers.
        with store.pass_lock() as hold:
            if hold.held:
                queued, when = send_digest(store, notifier, report, now)
            else:
                queued = store.claim_once(
                    f"digest/{report.week}",
                    digest_rows(report, list(notifier.destinations.values())), now)
                when = store.claimed_at(f"digest/{report.week}")
        pending = [row for row in store.outbox()
                   if row["finding_key"] == f"digest/{report.week}"
                   and row["delivered_at"] is None and row["set_aside_at"] is None]
    except StoreError as exc:
        raise Fatal(f"state: {exc}", EXIT_INCOMPLETE) from None
    if not queued:
        click.echo(f"\ndigest {report.week} was already queued"
                   + (f" at {_iso(when)}" if when else "") + "; not queued again", err=True)
    if pending:
        raise Fatal(f"digest {report.week}: {len(pending)} destination(s) not reached yet; "
                    "the outbox retries (watchdogd run, or the next digest --send)",
                    EXIT_INCOMPLETE)
    if queued:
        click.echo(f"\ndigest {report.week} sent to {len(notifier.destinations)} "
                   "destination(s)", err=True)


@cli.command()
@click.option("--passes", default=4, show_default=True, help="How many passes to run.")
@click.option("--json", "as_json", is_flag=True, help="Print each pass's JSON report.")
@click.option("--keep", is_flag=True, help="Keep the world running until Ctrl-C.")
def demo(passes: int, as_json: bool, keep: bool) -> None:
    """Run passes against a built-in simulated world, remediation on."""
    from watchdogd.sim.demo import run_demo  # noqa: PLC0415

    sys.exit(run_demo(passes=passes, as_json=as_json, keep=keep))


@cli.group("volumes")
def volumes_group() -> None:
    """The map of users' disks: which claim is bound to which PV and Cinder volume."""


at_option = click.option(
    "--at", "at_text", metavar="TIME",
    help="The map as it was then: an ISO time (2026-12-01T10:00:00Z) or a time ago (6h, 2d).")


def _map_at(config_path: str | None, at_text: str | None) -> tuple[list[dict[str, Any]], str]:
    """The recorded map (now, or at ``--at``) and a line saying which one it is."""
    from watchdogd.diskmap import parse_at  # noqa: PLC0415
    from watchdogd.times import utcnow  # noqa: PLC0415

    at = None
    if at_text is not None:
        try:
            at = parse_at(at_text, utcnow())
        except ValueError as exc:
            raise Fatal(f"--at: {exc}", EXIT_USAGE) from None
    store = _store(config_path)
    rows = store.disks(at)
    if at is None:
        return rows, "the map of users' disks as the last complete orphans pass saw it"
    first = store.disks_recorded_since()
    when = f"the map of users' disks at {iso(at, timespec='seconds')}"
    if first is None or first > at:
        when += (" (nothing was recorded then; the first map is from "
                 f"{iso(first, timespec='seconds')})" if first else " (no map recorded yet)")
    return rows, when


@volumes_group.command("map")
@config_option
@at_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def volumes_map(config_path: str | None, at_text: str | None, as_json: bool) -> None:
    """Show each claim with its user, PV, Cinder volume, size and reclaim policy."""
    from watchdogd.diskmap import map_table  # noqa: PLC0415

    rows, when = _map_at(config_path, at_text)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=_iso))
    elif not rows:
        click.echo(f"no claims on {when}")
    else:
        click.echo(map_table(rows))


@volumes_group.command("manifests")
@config_option
@click.argument("user", required=False)
@click.option("--all", "every", is_flag=True, help="Every claim on the map.")
@click.option("--cluster", metavar="NAME", help="Only the claims of this cluster.")
@at_option
def volumes_manifests(config_path: str | None, user: str | None, every: bool,
                      cluster: str | None, at_text: str | None) -> None:
    """Print the PV and PVC manifests that bind USER's volumes to their claims again.

    For ``kubectl apply -f -`` after a tear-down and reinstall: each PV names its Cinder
    volume and is pre-bound to its claim (reclaim policy Retain), each claim names its PV.
    kubectl applies to one cluster: with claims in several, pick one with ``--cluster``.
    """
    from watchdogd.diskmap import for_user, render_manifests  # noqa: PLC0415

    if (user is not None) == every:
        raise Fatal("volumes manifests: give a USER or --all (not both)", EXIT_USAGE)
    recorded, when = _map_at(config_path, at_text)
    rows = recorded if user is None else for_user(recorded, user)
    if cluster is not None:
        rows = [r for r in rows if r["cluster"] == cluster]
    who = "any user" if user is None else f"user {safe_text(user)!r}"
    if not rows:
        raise Fatal(f"no claim of {who} on {when}"
                    + (f" in cluster {safe_text(cluster)!r}" if cluster else ""),
                    EXIT_NOT_ON_MAP)
    clusters = sorted({str(r["cluster"]) for r in rows})
    if len(clusters) > 1:
        raise Fatal(f"the claims of {who} are in clusters {', '.join(map(safe_text, clusters))}; "
                    "kubectl applies to one: pick it with --cluster", EXIT_USAGE)
    click.echo(render_manifests(rows, f"watchdogd volumes manifests: {len(rows)} claim(s) of "
                                      f"{who} in cluster {safe_text(clusters[0])}\n{when}"),
               nl=False)


def _console(yes: bool) -> Any:
    from watchdogd.repair import Console  # noqa: PLC0415

    return Console(echo=click.echo,
                   ask=lambda question: click.confirm(question, default=False),
                   yes=yes)


@cli.command("repair-session")
@config_option
@click.argument("user")
@click.option("--server", "server_name", default="", metavar="NAME",
              help="A named server of the user (default: the default server).")
@click.option("--hub", required=True, metavar="HUB", help="The [hubs.HUB] to repair.")
@click.option("--stop-hub", is_flag=True,
              help="Scale the hub Deployment to 0 for the repair, and back afterwards.")
@click.option("--deployment", default="hub", show_default=True, metavar="NAME",
              help="The hub's Deployment (in the hub's namespace), for --stop-hub.")
@click.option("--wait", default=120.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the hub to stop and a deleted pod to vanish.")
@click.option("--yes", is_flag=True, help="Answer yes to every question.")
def repair_session_command(config_path: str | None, user: str, server_name: str, hub: str,
                           stop_hub: bool, deployment: str, wait: float, yes: bool) -> None:
    """Clear USER's stuck session in the hub database (the runbook's last resort).

    Refuses while the hub runs (exit 75); changes only the session (the servers row,
    the spawner's server_id, started and process keys of state), never users rows;
    shows the SQL and asks first; archives every changed row in the audit log, so
    that ``watchdogd undo ACTION_ID`` can put them back.
    """
    from watchdogd.repair import Refused, RepairOptions, repair_session  # noqa: PLC0415

    config = _load(config_path)
    store = _store_of(config)
    try:
        sys.exit(repair_session(config, store, RepairOptions(
            hub, user, server_name, stop_hub=stop_hub, deployment=deployment, wait=wait),
            _console(yes)))
    except Refused as exc:
        raise Fatal(str(exc), exc.code) from None
    finally:
        store.close()


@cli.command("undo")
@config_option
@click.argument("action_id", type=int)
@click.option("--yes", is_flag=True, help="Answer yes to every question.")
def undo_command(config_path: str | None, action_id: int, yes: bool) -> None:
    """Undo the audited action ACTION_ID (see ``watchdogd actions``).

    Each kind of action has its own undo (repair-session: the hub rows put back, the hub
    must be down; quarantine: the volume's mark removed); others are refused with the
    reason. The undo is audited, and an action is undone once.
    """
    from watchdogd.repair import Refused  # noqa: PLC0415
    from watchdogd.undo import UndoContext, undo  # noqa: PLC0415

    config = _load(config_path)
    store = _store_of(config)
    try:
        sys.exit(undo(UndoContext(config, store, _console(yes)), action_id))
    except Refused as exc:
        raise Fatal(str(exc), exc.code) from None
    finally:
        store.close()


def _store_of(config: Config) -> Store:
    try:
        return open_store(config)
    except BuildError as exc:
        raise Fatal(str(exc), EXIT_CONFIG) from None


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
