"""The admin page in a real browser, behind a real JupyterHub's login.

A real JupyterHub 6 with configurable-http-proxy registers watchdogd as a service with a
``url`` (as z2jh's ``hub.services.watchdogd.url`` does); the page is the one ``watchdogd
run`` serves (built by :func:`watchdogd.app.build` from a TOML file, fed by the engine's
listener); the findings come from the engine's passes over the engine test's simulated
hub (two stale sessions, in dry run). Headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``scripts/setup-test-peers.sh``) driven by selenium:

- the admin logs in on the hub's own login form and lands on ``/services/watchdogd/``
  through the hub's OAuth, and sees both findings and why their fix waits (dry run);
- silences one through its form: the CLI (``watchdogd silence list``, ``actions``) shows
  the silence and its audit row by the admin's hub username, and the next pass holds the
  silenced finding's action and only that one;
- a POST with the admin's cookies but without the ``_xsrf`` token is refused (403) and
  changes nothing (the same POST with the page's token is accepted);
- the silence's expire button ends it, and an action's undo button undoes it, the ``undo``
  row naming the admin (the undo itself is a stand-in: the real one talks to Cinder);
- a user the hub lets through OAuth (``access:services``) but who is not an admin gets 403.

With ``WATCHDOGD_SCREENSHOTS=1`` the page's screenshot is also written to
``docs/screenshots/admin-page.png`` (the README shows it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import require_or_skip
from tests.peers.jupyterhub import REPO, RealHub, hub_available
from tests.peers.postgres import free_port
from tests.unit.test_engine import Adapter, FakeWorld
from watchdogd.app import App, build, load_config
from watchdogd.checks import REGISTRY
from watchdogd.cli import main
from watchdogd.engine import Engine
from watchdogd.model import Action, Finding, Severity
from watchdogd.sources import Sources
from watchdogd.times import utcnow
from watchdogd.undo import UNDO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "page-test-pw"
ALICE = "sessions/main/stale-session/alice"


def browser_available() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (shutil.which("chromium") or Path(CHROMIUM).exists()) or \
            not (shutil.which("chromedriver") or Path(CHROMEDRIVER).exists()):
        return "chromium and chromium-driver are not installed: run scripts/setup-test-peers.sh"
    return None


def hub_config(web_port: int) -> str:
    return f"""
c.JupyterHub.services[0].update({{
    "url": "http://127.0.0.1:{web_port}",
    "oauth_no_confirm": True,
}})
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.admin_users = {{"ana"}}
# bob passes the hub's own gate to the service, so the 403 he gets is watchdogd's rule
c.JupyterHub.load_roles.append({{
    "name": "page-visitor", "scopes": ["access:services!service=watchdogd"], "users": ["bob"],
}})
"""


def watchdogd_config(workdir: Path, hub: RealHub, web_port: int) -> Path:
    (workdir / "api_token").write_text(hub.service_token + "\n")
    (workdir / "state_url").write_text(f"sqlite:///{workdir}/state.db\n")
    path = workdir / "watchdogd.toml"
    path.write_text(f"""
[state]
url_file = "state_url"
[remediation]
dry_run = true
confirm_after = 2
min_age = "0s"
[clusters.js2]
kubeconfig = "/nonexistent"
[hubs.main]
cluster = "js2"
api_url = "{hub.api_url}"
api_token_file = "api_token"
proxy_api_url = "http://proxy:8001"
[checks.sessions]
[web]
listen = "127.0.0.1:{web_port}"
hub = "main"
""")
    return path


def poll(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``check()`` until truthy; a browser between two pages (its elements gone) is falsy."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except WebDriverException:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g}s")
        time.sleep(0.1)


def chrome() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,900", "--disable-extensions"):
        options.add_argument(arg)
    service = Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    return driver


def log_in(driver: Any, hub: RealHub, user: str) -> None:
    """The hub's own login form, then its OAuth round trip to the page."""
    from selenium.webdriver.common.by import By

    driver.get(hub.public_url + "services/watchdogd/")
    poll("the hub's login form", lambda: driver.find_elements(By.ID, "username_input"))
    driver.find_element(By.ID, "username_input").send_keys(user)
    driver.find_element(By.ID, "password_input").send_keys(PASSWORD)
    driver.find_element(By.ID, "login_submit").click()
    poll("back on the page", lambda: f"signed in as {user}" in body_text(driver))


def body_text(driver: Any) -> str:
    """The page's text now; "" while the browser is between two pages."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except WebDriverException:  # stale, missing, or "node does not belong to the document"
        return ""


def cli(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    """``watchdogd ARGS --config CONFIG``'s output (in this process: a CLI start is slow)."""
    capsys.readouterr()
    try:
        main([*args, "--config", str(config)])
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[RealHub, App, Engine, Path]]:
    require_or_skip(hub_available())
    require_or_skip(browser_available())
    from watchdogd.sim.kube import KubeSim

    web_port = free_port()
    with KubeSim() as kube:
        hub = RealHub(tmp_path / "hub", kube_url=kube.url, kube_token=kube.token,
                      extra_config=hub_config(web_port))
        # The page is up before the hub starts, as a deployed service usually is (a hub
        # that starts before its services waits for them).
        hub.hub_port, hub.public_port, hub.proxy_api_port = free_port(), free_port(), free_port()
        hub.api_url = f"http://127.0.0.1:{hub.hub_port}/hub/api"
        config_path = watchdogd_config(tmp_path, hub, web_port)
        app = build(load_config(config_path), service=True, notify=False)
        try:
            assert app.web is not None
            world = FakeWorld()
            world.add("alice", pod=False)
            world.add("bob", pod=False)
            factories = {n: (lambda _c, _n: Adapter(world))
                         for n in ("hubdb", "hubapi", "proxy", "kube")}
            # The engine's passes over the simulated hub, reported to the page as the
            # daemon's engine reports them (the listener build() installed).
            engine = Engine(app.config, app.store, Sources(app.config, factories),
                            clock=utcnow, registry={"sessions": REGISTRY["sessions"]})
            engine.listeners.extend(app.engine.listeners)
            app.web.start()
            with hub:
                yield hub, app, engine, config_path
        finally:
            app.close()


def test_admin_silences_a_finding_in_the_browser(deployment: tuple[RealHub, App, Engine, Path],
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By

    hub, _app, engine, config_path = deployment
    engine.run_pass()
    engine.run_pass()
    driver = chrome()
    try:
        log_in(driver, hub, "ana")
        body = body_text(driver)
        assert "signed in as ana" in body
        rows = {r.get_attribute("data-key"): r.text
                for r in driver.find_elements(By.CSS_SELECTOR, ".findings tr[data-key]")}
        assert set(rows) == {ALICE, "sessions/main/stale-session/bob"}
        assert "stop-server: dry-run" in rows[ALICE]
        assert "dry run: remediation.dry_run is on" in rows[ALICE]

        # Silence alice's finding through its form.
        row = driver.find_element(By.CSS_SELECTOR, f'.findings tr[data-key="{ALICE}"]')
        row.find_element(By.NAME, "duration").clear()
        row.find_element(By.NAME, "duration").send_keys("2h")
        row.find_element(By.NAME, "reason").send_keys("alice is testing a new image")
        row.find_element(By.NAME, "silence").click()
        poll("the page's note", lambda: driver.find_elements(By.ID, "note"))
        assert "silence 1 added" in driver.find_element(By.ID, "note").text
        row = driver.find_element(By.CSS_SELECTOR, f'.findings tr[data-key="{ALICE}"]')
        assert "alice is testing a new image" in row.text
        shot = tmp_path / "admin-page.png"
        assert driver.save_screenshot(str(shot))
        if os.environ.get("WATCHDOGD_SCREENSHOTS"):
            target = REPO / "docs" / "screenshots" / "admin-page.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)

        # What the CLI and the next pass see.
        [silence] = json.loads(cli(capsys, config_path, "silence", "list", "--json"))
        assert (silence["created_by"], silence["kind"], silence["subject"]) == \
            ("ana", "stale-session", "alice")
        audit = json.loads(cli(capsys, config_path, "actions", "--json"))
        assert [(a["name"], a["params"]["by"]) for a in audit] == [("silence-add", "ana")]
        findings = json.loads(cli(capsys, config_path, "findings", "--json"))
        assert {f["subject"] for f in findings} == {"alice", "bob"}
        report = engine.run_pass().as_json()
        statuses = {f["subject"]: f["action"]["status"]
                    for c in report["checks"] for f in c["findings"]}
        assert statuses == {"alice": "silenced", "bob": "dry-run"}

        # A forged POST: the admin's own cookies, no _xsrf token.
        import requests

        cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
        forged = requests.post(hub.public_url + "services/watchdogd/silence",
                               data={"key": "sessions/main/stale-session/bob",
                                     "duration": "1h", "reason": "forged"},
                               cookies=cookies, allow_redirects=False, timeout=10)
        assert forged.status_code == 403
        assert len(json.loads(cli(capsys, config_path, "silence", "list", "--json"))) == 1
        # The same cookies with the page's own token are accepted (the 403 was the token's).
        token = driver.find_element(By.NAME, "_xsrf").get_attribute("value")
        accepted = requests.post(hub.public_url + "services/watchdogd/ack",
                                 data={"key": "sessions/main/stale-session/bob",
                                       "_xsrf": token},
                                 cookies=cookies, allow_redirects=False, timeout=10)
        assert accepted.status_code == 303, accepted.text
        assert "sessions/main/stale-session/bob" in engine.store.acks()
        # A refused button (no reason given) says why on the next page, and changes nothing.
        session = requests.Session()
        session.cookies.update(cookies)
        refused = session.post(hub.public_url + "services/watchdogd/silence",
                               data={"key": "sessions/main/stale-session/bob",
                                     "duration": "1h", "reason": " ", "_xsrf": token},
                               timeout=10)
        assert refused.status_code == 200
        assert "reason: say why" in refused.text
        assert len(json.loads(cli(capsys, config_path, "silence", "list", "--json"))) == 1

        # Expire the silence, and undo an undoable action, through their buttons.
        driver.get(hub.public_url + "services/watchdogd/")
        driver.find_element(By.CSS_SELECTOR, "#silences button[name=expire]").click()
        poll("the page's note", lambda: "silence 1 expired" in body_text(driver))
        assert engine.store.silences(utcnow()) == []
        finding = Finding("orphans", "cloud", "orphan-volume", "v1", Severity.INFO, "m")
        action_id = engine.store.begin_action(
            "p1", finding, Action("quarantine", "openstack", "cloud", "quarantine",
                                  destructive=False), utcnow())
        engine.store.finish_action(action_id, "done", "marked", utcnow())
        # The real undo talks to Cinder: here it only says what it would have done.
        monkeypatch.setitem(UNDO, "quarantine", lambda _ctx, _record: "unmarked v1")
        driver.get(hub.public_url + "services/watchdogd/")
        driver.find_element(By.CSS_SELECTOR, "#actions button[name=undo]").click()
        poll("the page's note", lambda: f"action {action_id} undone" in body_text(driver))
        [undone] = engine.store.actions(name="undo")
        assert undone.params == {"undoes": action_id, "action": "quarantine", "by": "ana"}
        assert not driver.find_elements(By.CSS_SELECTOR, "#actions button[name=undo]")
    finally:
        driver.quit()

    # bob: let through by the hub, refused by watchdogd's rule.
    driver = chrome()
    try:
        from selenium.webdriver.common.by import By

        driver.get(hub.public_url + "services/watchdogd/")
        poll("the hub's login form", lambda: driver.find_elements(By.ID, "username_input"))
        driver.find_element(By.ID, "username_input").send_keys("bob")
        driver.find_element(By.ID, "password_input").send_keys(PASSWORD)
        driver.find_element(By.ID, "login_submit").click()
        poll("watchdogd's answer", lambda: "403" in body_text(driver))
        assert "alice" not in body_text(driver)
        cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
        answer = requests.get(hub.public_url + "services/watchdogd/", cookies=cookies,
                              allow_redirects=False, timeout=10)
        assert answer.status_code == 403
    finally:
        driver.quit()
