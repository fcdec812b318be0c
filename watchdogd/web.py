"""The admin page: what watchdogd sees and why each fix waits, behind the hub's own login.

``watchdogd run`` serves it (``[web] listen``) in a thread of its own, as the JupyterHub
service ``/services/watchdogd/``: the hub's OAuth says who the visitor is
(``jupyterhub.services.auth.HubOAuth``, the optional extra ``watchdogd[web]``), and
:func:`allowed` decides whether that visitor may see it (hub admins, or the configured
hub groups and roles). The page is rendered on the server and needs no JavaScript.

Everything on it comes through :func:`render_page`: a jinja2 template with autoescape
whose every value first goes through :func:`~watchdogd.text.safe_text` (no control
character reaches the page), and evidence through
:func:`~watchdogd.text.without_secrets`. Its buttons are POSTs checked against the hub's
XSRF token; each one is audited with the admin's hub username (:func:`add_silence`,
:func:`acknowledge`, :func:`expire_silence`, :func:`undo_action`) and none starts a
destructive action.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from watchdogd.config import Config, WebConfig, parse_duration
from watchdogd.maintenance import window_silences
from watchdogd.model import Action, Finding, PreconditionFailed, Severity, Silence
from watchdogd.report import PassReport
from watchdogd.store import Store
from watchdogd.text import safe_text, store_key, without_secrets
from watchdogd.times import iso

__all__ = ["Latest", "PageData", "WebServer", "allowed", "gather", "render_page"]

log = structlog.get_logger("watchdogd.web")

#: the longest silence the page gives (a longer one is a decision for the CLI)
MAX_SILENCE = timedelta(days=30)

#: why a planned action waits, in words, by the report's action status
WAITS = {
    "dry-run": "dry run: remediation.dry_run is on, nothing is changed",
    "unconfirmed": "not confirmed yet: seen fewer times or for less time than required",
    "over-budget": "the action budget is spent (remediation.max_per_pass / max_per_hour)",
    "breaker-open": "the circuit breaker is open: too many findings at once",
    "silenced": "silenced: no action while the silence lasts",
    "disabled": "not enabled (remediation.enabled)",
    "held": "held: acted on too often, watchdogd's picture may be wrong",
    "excluded": "the subject is exempt from actions",
    "planned": "planned for the next pass that may act",
}


@dataclass
class Latest:
    """The latest pass report per check target, kept in memory for the page.

    An engine listener (:meth:`observe`), like the metrics: the store keeps findings and
    actions, but why a planned action waits is only in the pass's report.
    """

    _checks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _subjects: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, report: PassReport) -> None:
        """Keep this pass's check targets (and their findings' planned actions)."""
        with self._lock:
            for check in report.checks:
                self._checks[(check.check, check.target)] = check.as_json() | {
                    "finished_at": report.finished_at, "dry_run": report.dry_run,
                    "acting": report.acting, "not_acting_reason": report.not_acting_reason}
                for finding in check.findings:
                    raw = finding.tracked.finding
                    self._subjects[store_key(raw.key)] = raw.subject

    def checks(self) -> list[dict[str, Any]]:
        """The latest result of every check target seen, by name."""
        with self._lock:
            return [self._checks[k] for k in sorted(self._checks)]

    def subject(self, key: str) -> str | None:
        """The finding's subject as the check saw it (the store keeps a printable copy)."""
        with self._lock:
            return self._subjects.get(key)


@dataclass
class PageData:
    """Everything one page shows."""

    now: datetime
    findings: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    failing: list[dict[str, Any]]
    silences: list[dict[str, Any]]
    windows: list[dict[str, Any]]
    passes: list[dict[str, Any]]


def gather(config: Config, store: Store, latest: Latest, now: datetime) -> PageData:
    """Read the store and the latest reports into what the page shows."""
    from watchdogd.undo import NO_UNDO, UNDO  # noqa: PLC0415

    planned: dict[str, dict[str, Any]] = {}
    checks = latest.checks()
    for check in checks:
        for finding in check["findings"]:
            planned[store_key(finding["key"])] = finding | {"pass_dry_run": check["dry_run"]}
    acks = store.acks()
    in_force = store.silences(now) + window_silences(config.maintenance, now)
    findings = []
    for row in store.findings():
        seen = planned.get(row["key"], {})
        action = seen.get("action")
        status = action["status"] if action else None
        subject = latest.subject(row["key"]) or row["subject"]
        # The silences in force now, not only at the last pass: one added from the page
        # shows at once.
        silence = next((s for s in in_force if s.matches(row["check"], row["target"],
                                                           row["kind"], subject)), None)
        findings.append(row | {
            "age": _age(now - row["first_seen"]),
            "evidence": without_secrets(row["evidence"]),
            "action": action,
            "waits": WAITS.get(status or "", "") if action else "",
            "silenced": None if silence is None else _silence(silence, now),
            "acked": row["key"] in acks,
            "severity_rank": Severity.parse(row["severity"]).value,
        })
    # Per hub, cloud and cluster; in each, the worst and oldest first.
    findings.sort(key=lambda f: (-f["severity_rank"], f["first_seen"]))
    for order, finding in enumerate(findings):
        finding["order"] = order
        finding["where"] = f"{_kind_of(config, finding['target'])} {finding['target']}"
    undone = {r.params.get("undoes") for r in store.actions(name="undo", limit=100_000)
              if r.status == "done"}
    actions = [{
        "id": r.id, "name": r.name, "target": r.target, "finding": r.finding_key,
        "status": r.status, "detail": r.detail or "", "started_at": iso(r.started_at),
        "by": r.params.get("by") or ("operator" if r.pass_id.startswith("operator-")
                                     else "watchdogd"),
        "before": _summary(without_secrets(r.before)),
        "undo": (r.name in UNDO and r.status == "done" and r.id not in undone),
        "no_undo": NO_UNDO.get(r.name, ""),
    } for r in store.actions(limit=config.web.recent_actions)]
    failing = [c for c in checks if c["status"] == "error" or c.get("breaker")]
    silences = [_silence(s, now) for s in in_force if s.window is None]
    windows = [_silence(s, now) for s in in_force if s.window is not None]
    successes = store.last_successes()
    passes = [{"check": check, "target": target, "last_success": iso(when),
               "ago": _age(now - when)} for (check, target), when in sorted(successes.items())]
    return PageData(now, findings, actions, failing, silences, windows, passes)


def _kind_of(config: Config, target: str) -> str:
    """What a check target is: a hub, a cloud or a cluster (a name may be more than one)."""
    kinds = [kind for kind, names in (("hub", config.hubs), ("cloud", config.clouds),
                                      ("cluster", config.clusters)) if target in names]
    return "/".join(kinds) or "target"


def _silence(silence: Silence, now: datetime) -> dict[str, Any]:
    return {"id": silence.id, "window": silence.window, "check": silence.check or "*",
            "target": silence.target or "*", "kind": silence.kind or "*",
            "subject": silence.subject or "*", "until": iso(silence.expires_at),
            "left": _age(silence.expires_at - now), "by": silence.created_by,
            "reason": silence.reason, "allow_actions": silence.allow_actions}


def _age(delta: timedelta) -> str:
    """A short age: ``3d4h``, ``2h5m``, ``40s``."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _summary(before: Any, limit: int = 200) -> str:
    """A before-image in one short line (the CLI's ``actions --json`` has all of it)."""
    if not before:
        return ""
    return safe_text(json.dumps(before, sort_keys=True, default=str), limit)


# -- who may see it ---------------------------------------------------------------


def allowed(model: Mapping[str, Any], web: WebConfig) -> bool:
    """Whether the hub's user model may see the page.

    The token must carry access to this service (the hub grants it through OAuth), and
    the user must be a hub admin (``allow_admins``), or in one of ``allowed_groups``, or
    hold one of ``allowed_roles``. Services and unknown kinds never.
    """
    if model.get("kind", "user") != "user" or not model.get("name"):
        return False
    scopes = set(model.get("scopes") or ())
    if not scopes & {"access:services", f"access:services!service={web.service_name}"}:
        return False
    if web.allow_admins and model.get("admin") is True:
        return True
    if set(model.get("groups") or ()) & set(web.allowed_groups):
        return True
    return bool(set(model.get("roles") or ()) & set(web.allowed_roles))


# -- the buttons: each audited with the admin's hub username ------------------------


class Refusal(Exception):
    """A button's request cannot be done: said to the admin as it is."""


def _audit(store: Store, name: str, target: str, subject: str, by: str,
           params: dict[str, Any], detail: str, now: datetime) -> int:
    """One done row in the audit log; its finding key is the button's own (``web/...``),
    so that it never counts as an action on the finding it is about (see
    :meth:`Store.done_actions_by_finding`)."""
    finding = Finding("web", target, name, subject, Severity.INFO, f"{name} by {by}")
    action = Action(name, "web", target, name, params={"by": by, **params},
                    destructive=False)
    action_id = store.begin_action(f"web-{uuid.uuid4().hex[:12]}", finding, action, now)
    store.finish_action(action_id, "done", detail, now)
    return action_id


def _open_finding(store: Store, key: str) -> dict[str, Any]:
    for row in store.findings():
        if row["key"] == key:
            return row
    raise Refusal(f"no open finding {safe_text(key, 200)}: it may have resolved")


def add_silence(store: Store, latest: Latest, *, key: str, duration: str, reason: str,
                by: str, now: datetime) -> Silence:
    """Silence one open finding (its check, target, kind and exact subject) for a while."""
    reason = reason.strip()
    if not reason:
        raise Refusal("reason: say why (it is shown with every silenced finding)")
    try:
        length = parse_duration(duration.strip())
    except ValueError as exc:
        raise Refusal(f"duration: {exc}") from None
    if not timedelta(0) < length <= MAX_SILENCE:
        raise Refusal("duration: longer than zero and at most 30d")
    row = _open_finding(store, key)
    subject = latest.subject(key) or row["subject"]
    silence = store.add_silence(reason=reason, created_by=by, now=now,
                                expires_at=now + length, check=row["check"],
                                target=row["target"], kind=row["kind"],
                                subject=_literal(subject))
    _audit(store, "silence-add", row["target"], str(silence.id), by,
           {"silence": silence.id, "finding": key, "until": iso(silence.expires_at),
            "reason": silence.reason}, f"silence {silence.id} of {key}", now)
    return silence


def _literal(subject: str) -> str:
    """A shell pattern that matches exactly ``subject`` (a name may contain ``*?[``)."""
    return re.sub(r"([*?\[])", r"[\1]", subject)


def acknowledge(store: Store, *, key: str, by: str, now: datetime) -> Severity:
    """Acknowledge one open finding: no reminders until it escalates or resolves."""
    row = _open_finding(store, key)
    severity = store.ack(key, by, now)
    _audit(store, "ack", row["target"], key, by, {"finding": key, "severity": severity.label},
           f"acknowledged {key}", now)
    return severity


def expire_silence(store: Store, *, silence_id: int, by: str, now: datetime) -> bool:
    """End an operator's silence now; False when it had already ended."""
    silence, ended = store.expire_silence(silence_id, by, now)
    if silence is None:
        raise Refusal(f"no silence {silence_id}")
    if ended:
        _audit(store, "silence-expire", silence.target or "*", str(silence_id), by,
               {"silence": silence_id}, f"silence {silence_id} expired", now)
    return ended


def undo_action(config: Config, store: Store, *, action_id: int, by: str) -> str:
    """Undo one audited action; the POST is the operator's confirmation.

    The undo's own audit row (``undo``) names the admin. Returns what was said.
    """
    from watchdogd.repair import Console, Refused  # noqa: PLC0415
    from watchdogd.undo import UndoContext, undo  # noqa: PLC0415

    said: list[str] = []
    console = Console(echo=said.append, ask=lambda _q: True, yes=True)
    try:
        undo(UndoContext(config, store, console, by=by), action_id)
    except (Refused, PreconditionFailed) as exc:
        raise Refusal(str(exc)) from None
    return "; ".join(line for line in said if not line.endswith("yes (--yes)"))


# -- the page ----------------------------------------------------------------------

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>watchdogd</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.critical{color:#b00;font-weight:bold}.warning{color:#a60}
.note{padding:6px 10px;background:#eef6ee;border:1px solid #9c9}
.error{padding:6px 10px;background:#fbeaea;border:1px solid #c99}
pre{margin:0;white-space:pre-wrap;max-width:40em;font-size:12px}
form{display:inline}input[type=text]{width:10em}small{color:#666}
</style></head><body>
<h1>watchdogd <small>signed in as {{ user }}</small></h1>
{% if note %}<p class="note" id="note">{{ note }}</p>{% endif %}
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
<p><small>page made at {{ now }}</small></p>

<h2>Open findings ({{ data.findings|length }})</h2>
{% for where, group in data.findings|groupby("where") %}
<h3>{{ where }} ({{ group|length }})</h3>
<table class="findings"><tr><th>severity</th><th>check</th><th>kind</th><th>subject</th>
<th>age</th><th>evidence</th><th>planned action</th><th>why it waits</th><th></th></tr>
{% for f in group|sort(attribute="order") %}
<tr data-key="{{ f.key }}"><td class="{{ f.severity }}">{{ f.severity }}</td>
<td>{{ f.check }}</td><td>{{ f.kind }}</td><td>{{ f.subject }}
<br><small>{{ f.message }}</small></td>
<td>{{ f.age }} <small>({{ f.sightings }} sightings)</small></td>
<td><pre>{% for line in f.evidence_lines %}{{ line }}
{% endfor %}</pre></td>
<td>{% if f.action %}{{ f.action.name }}: {{ f.action.status }}{% else %}none{% endif %}</td>
<td>{% if f.silenced %}silenced{% if f.silenced.window %} by maintenance window
{{ f.silenced.window }}{% endif %} until {{ f.silenced.until }} by {{ f.silenced.by }}:
{{ f.silenced.reason }}{% if not f.silenced.allow_actions %} (no action meanwhile){% endif %}
{% elif f.action %}{{ f.waits }}
{% if f.action.detail %}<br><small>{{ f.action.detail }}</small>{% endif %}{% endif %}
{% if f.acked %}<br><b>acknowledged</b>{% endif %}</td>
<td><form method="post" action="{{ base }}silence">
<input type="hidden" name="_xsrf" value="{{ xsrf }}">
<input type="hidden" name="key" value="{{ f.key }}">
<input type="text" name="duration" value="4h" size="4" aria-label="duration">
<input type="text" name="reason" placeholder="reason" required aria-label="reason">
<button type="submit" name="silence">silence</button></form>
{% if not f.acked %}<form method="post" action="{{ base }}ack">
<input type="hidden" name="_xsrf" value="{{ xsrf }}">
<input type="hidden" name="key" value="{{ f.key }}">
<button type="submit" name="ack">acknowledge</button></form>{% endif %}</td></tr>
{% endfor %}</table>
{% else %}<p>No open findings.</p>{% endfor %}

<h2>Failing checks</h2>
{% if data.failing %}<table id="failing"><tr><th>check</th><th>error</th><th>breaker</th></tr>
{% for c in data.failing %}<tr><td>{{ c.check }}/{{ c.target }}</td><td>{{ c.error or "" }}</td>
<td>{{ c.breaker or "" }}</td></tr>{% endfor %}</table>
{% else %}<p>None in the latest passes.</p>{% endif %}

<h2>Silences</h2>
{% if data.silences or data.windows %}
<table id="silences"><tr><th>id</th><th>check</th><th>target</th><th>kind</th><th>subject</th>
<th>until</th><th>by</th><th>reason</th><th></th></tr>
{% for s in data.silences %}<tr><td>{{ s.id }}</td><td>{{ s.check }}</td><td>{{ s.target }}</td>
<td>{{ s.kind }}</td><td>{{ s.subject }}</td><td>{{ s.until }} <small>({{ s.left }} left)</small>
</td><td>{{ s.by }}</td><td>{{ s.reason }}</td>
<td><form method="post" action="{{ base }}expire">
<input type="hidden" name="_xsrf" value="{{ xsrf }}">
<input type="hidden" name="silence" value="{{ s.id }}">
<button type="submit" name="expire">expire</button></form></td></tr>{% endfor %}
{% for s in data.windows %}<tr><td>window {{ s.window }}</td><td>{{ s.check }}</td>
<td>{{ s.target }}</td><td>*</td><td>*</td><td>{{ s.until }}</td><td>config</td>
<td>{{ s.reason }}</td><td></td></tr>{% endfor %}
</table>{% else %}<p>No silences and no open maintenance window.</p>{% endif %}

<h2>Recent actions</h2>
{% if data.actions %}<table id="actions"><tr><th>id</th><th>started</th><th>action</th>
<th>target</th><th>finding</th><th>by</th><th>result</th><th>before</th><th></th></tr>
{% for a in data.actions %}<tr><td>{{ a.id }}</td><td>{{ a.started_at }}</td><td>{{ a.name }}</td>
<td>{{ a.target }}</td><td>{{ a.finding }}</td><td>{{ a.by }}</td>
<td>{{ a.status }} <small>{{ a.detail }}</small></td><td><small>{{ a.before }}</small></td>
<td>{% if a.undo %}<form method="post" action="{{ base }}undo">
<input type="hidden" name="_xsrf" value="{{ xsrf }}">
<input type="hidden" name="action" value="{{ a.id }}">
<button type="submit" name="undo">undo</button></form>{% endif %}</td></tr>{% endfor %}
</table>{% else %}<p>No actions recorded.</p>{% endif %}

<h2>Last successful passes</h2>
{% if data.passes %}<table id="passes"><tr><th>check</th><th>last success</th></tr>
{% for p in data.passes %}<tr><td>{{ p.check }}/{{ p.target }}</td>
<td>{{ p.last_success }} <small>({{ p.ago }} ago)</small></td></tr>{% endfor %}</table>
{% else %}<p>No pass has completed yet.</p>{% endif %}
</body></html>
"""


def _printable(value: Any) -> Any:
    """Every value printed on the page: one printable line (escaped for HTML after)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return safe_text(value)


def _evidence(evidence: Any) -> list[str]:
    """A finding's evidence, one ``key: value`` line each, secrets masked."""
    clean = without_secrets(evidence)
    if not isinstance(clean, dict):
        return [json.dumps(clean, default=str, ensure_ascii=False)]
    return [f"{k}: {json.dumps(v, default=str, ensure_ascii=False)}"
            for k, v in sorted(clean.items())]


def _environment() -> Any:
    import jinja2  # noqa: PLC0415

    return jinja2.Environment(autoescape=True, finalize=_printable,
                              undefined=jinja2.StrictUndefined)


def render_page(data: PageData, *, user: str, xsrf: str, base: str,
                note: str | None = None, error: str | None = None) -> str:
    """The page as HTML: every value escaped, evidence without secrets."""
    template = _environment().from_string(_TEMPLATE)
    findings = [f | {"evidence_lines": _evidence(f["evidence"])} for f in data.findings]
    page = PageData(data.now, findings, data.actions, data.failing, data.silences,
                    data.windows, data.passes)
    return str(template.render(data=page, user=user, xsrf=xsrf, base=base, note=note,
                               error=error, now=iso(data.now)))


# -- the server --------------------------------------------------------------------

#: the buttons' results, by the ``done`` argument of the redirect (never free text)
_NOTES = {"silence": "silence {id} added", "ack": "finding acknowledged",
          "expire": "silence {id} expired", "expired": "silence {id} had already ended",
          "undo": "action {id} undone"}


#: the cookie that carries a refused button's reason to the next page view
_ERROR_COOKIE = "watchdogd-refused"


class WebServer:
    """The page's tornado application on its own event loop, in a background thread."""

    def __init__(self, config: Config, store: Store, latest: Latest,
                 clock: Callable[[], datetime]) -> None:
        from watchdogd.metrics import parse_listen  # noqa: PLC0415

        if config.web.listen is None or config.web.hub is None:
            raise ValueError("web.listen and web.hub are required for the page")
        self.config = config
        self.store = store
        self.latest = latest
        self.clock = clock
        self.host, self.port = parse_listen(config.web.listen, "web.listen")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None

    def application(self) -> Any:
        """The tornado application (its handlers close over this server)."""
        return make_app(self)

    def start(self) -> tuple[str, int]:
        """Bind and serve in a thread; return the bound (host, port). Raises OSError."""
        from tornado.httpserver import HTTPServer  # noqa: PLC0415
        from tornado.netutil import bind_sockets  # noqa: PLC0415

        sockets = bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)

            async def listen() -> None:
                self._server = HTTPServer(self.application(), xheaders=True)
                self._server.add_sockets(sockets)

            loop.run_until_complete(listen())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="web", daemon=True)
        self._thread.start()
        ready.wait(10)
        log.info("admin page listening", address=f"{self.host}:{self.port}",
                 path=self.config.web.base_url)
        return self.host, self.port

    def stop(self) -> None:
        """Stop serving."""
        loop = self._loop
        if loop is None:
            return
        if self._server is not None:
            loop.call_soon_threadsafe(self._server.stop)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = self._thread = self._server = None


def make_app(server: WebServer) -> Any:
    """The tornado application of ``server``: the page, its four buttons, the OAuth callback."""
    from jupyterhub.services.auth import (  # noqa: PLC0415
        HubOAuth,
        HubOAuthCallbackHandler,
        HubOAuthenticated,
    )
    from tornado import web  # noqa: PLC0415

    config = server.config
    hub = config.hubs[config.web.hub or ""]
    base = config.web.base_url
    token = hub.api_token.get_secret_value() if hub.api_token is not None else ""
    auth = HubOAuth(api_url=hub.api_url.rstrip("/") + "/", api_token=token, base_url=base,
                    hub_prefix="/hub/", oauth_client_id=f"service-{config.web.service_name}",
                    oauth_redirect_uri=base + "oauth_callback",
                    access_scopes={f"access:services!service={config.web.service_name}"},
                    cache_max_age=60)

    class Base(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
        hub_auth = auth

        def check_hub_user(self, model: dict[str, Any]) -> dict[str, Any] | None:
            from jupyterhub.services.auth import UserNotAllowed  # noqa: PLC0415

            if not allowed(model, config.web):
                raise UserNotAllowed(model)
            return model

        def set_default_headers(self) -> None:
            self.set_header("Content-Security-Policy",
                            "default-src 'none'; style-src 'unsafe-inline'; "
                            "form-action 'self'; frame-ancestors 'none'")
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Referrer-Policy", "same-origin")
            self.set_header("Cache-Control", "no-store")

        @property
        def who(self) -> str:
            return str(self.current_user["name"])

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            # Never tornado's traceback page; the reason is ours or the status line's.
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"{status_code} {self._reason}\n")

    class Page(Base):
        @web.authenticated  # type: ignore[misc]
        def get(self) -> None:
            data = gather(config, server.store, server.latest, server.clock())
            done = self.get_argument("done", "")
            ident = self.get_argument("id", "")
            note = (_NOTES[done].format(id=int(ident) if ident.isdigit() else "")
                    if done in _NOTES else None)
            # A refusal comes back in a signed cookie of this page's own making, never in
            # the URL: a link cannot put words of its own on the page.
            error = self.get_signed_cookie(_ERROR_COOKIE, max_age_days=1 / 1440)
            if error is not None:
                self.clear_cookie(_ERROR_COOKIE, path=base)
            self.write(render_page(data, user=self.who, xsrf=self.xsrf_token.decode(),
                                   base=base, note=note,
                                   error=safe_text(error.decode("utf-8", "replace"), 300)
                                   if error else None))

    class Button(Base):
        def back(self, done: str, ident: object = "") -> None:
            self.redirect(f"{base}?done={done}&id={ident}", status=303)

        def refuse(self, exc: Exception) -> None:
            self.set_signed_cookie(_ERROR_COOKIE, safe_text(exc, 300), expires_days=None,
                                   path=base, httponly=True, samesite="Strict")
            self.redirect(base, status=303)

        def number(self, name: str) -> int:
            value = self.get_body_argument(name, "")
            if not value.isdigit():
                raise web.HTTPError(400, f"{name}: a number is required")
            return int(value)

    class SilenceButton(Button):
        @web.authenticated  # type: ignore[misc]
        def post(self) -> None:
            try:
                silence = add_silence(
                    server.store, server.latest, key=self.get_body_argument("key", ""),
                    duration=self.get_body_argument("duration", ""),
                    reason=self.get_body_argument("reason", ""), by=self.who,
                    now=server.clock())
            except Refusal as exc:
                self.refuse(exc)
                return
            log.info("silence added from the page", silence=silence.id, by=self.who)
            self.back("silence", silence.id)

    class AckButton(Button):
        @web.authenticated  # type: ignore[misc]
        def post(self) -> None:
            try:
                acknowledge(server.store, key=self.get_body_argument("key", ""), by=self.who,
                            now=server.clock())
            except Refusal as exc:
                self.refuse(exc)
                return
            self.back("ack")

    class ExpireButton(Button):
        @web.authenticated  # type: ignore[misc]
        def post(self) -> None:
            silence_id = self.number("silence")
            try:
                ended = expire_silence(server.store, silence_id=silence_id, by=self.who,
                                       now=server.clock())
            except Refusal as exc:
                self.refuse(exc)
                return
            self.back("expire" if ended else "expired", silence_id)

    class UndoButton(Button):
        @web.authenticated  # type: ignore[misc]
        async def post(self) -> None:
            action_id = self.number("action")
            who = self.who
            loop = asyncio.get_running_loop()
            try:
                # An undo talks to the cloud, the cluster or the hub's database: off the
                # page's event loop, so the page stays up meanwhile.
                await loop.run_in_executor(None, lambda: undo_action(
                    config, server.store, action_id=action_id, by=who))
            except Refusal as exc:
                self.refuse(exc)
                return
            self.back("undo", action_id)

    class Callback(HubOAuthCallbackHandler):  # type: ignore[misc]
        hub_auth = auth

    settings = {"cookie_secret": secrets.token_bytes(32), "xsrf_cookies": True,
                "login_url": auth.login_url}
    return web.Application([
        (base, Page),
        (base.rstrip("/"), web.RedirectHandler, {"url": base}),
        (base + "silence", SilenceButton),
        (base + "ack", AckButton),
        (base + "expire", ExpireButton),
        (base + "undo", UndoButton),
        (base + "oauth_callback", Callback),
    ], **settings)
