"""Acknowledge from the phone: ntfy buttons, signed links, and the listener over real HTTP.

The engine runs the plain-data hub of the engine tests and delivers to a local stand-in
for an ntfy server (apprise's ntfy plugin posts to it), so the acknowledge link is taken
from the ``X-Actions`` header apprise actually sent. The listener is the real HTTP server
on a free port; requests are real HTTP requests. The oracle is the store (who is
acknowledged) and the outbox (whether the reminder is still queued).
"""

from __future__ import annotations

import base64
import json
import select
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from structlog.testing import capture_logs

from tests.peers.postgres import free_port
from tests.safety.receiver import Receiver
from tests.unit.test_engine import T0, Adapter, FakeWorld, make_config
from watchdogd import app as app_module
from watchdogd.acklinks import AckLinks, LinkRefused
from watchdogd.checks import REGISTRY
from watchdogd.config import Config, ConfigError, ListenerConfig, NotifyConfig, load_config
from watchdogd.engine import Engine
from watchdogd.listener import ACKED_BY, MAX_BODY, AckListener
from watchdogd.model import Severity
from watchdogd.notify import Notifier, finding_tag, load_destinations
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.store import Notice, Store

ALICE = "sessions/main/stale-session/alice"
BOB = "sessions/main/stale-session/bob"
KEY = b"k" * 16 + b"0123456789abcdef0123"  # 36 bytes
TIMEOUT = 10


class Phone:
    """One engine with an ntfy destination, links to a listener, and the listener."""

    def __init__(self, tmp_path: Path, receiver: Receiver, *users: str,
                 report_url: str | None = "https://watchdogd.example.org/report") -> None:
        self.world = FakeWorld()
        for user in users:
            self.world.add(user, pod=False)  # a stale session: stays open (report only)
        self.clock = SimClock(T0)
        config = make_config(tmp_path, enabled=[])
        urls = tmp_path / "apprise.txt"
        urls.write_text(f"ntfy://127.0.0.1:{receiver.port}/alerts\n")
        config = config.model_copy(update={"notify": NotifyConfig(
            urls_file=str(urls), repeat_after=timedelta(hours=1), report_url=report_url)})
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.links = AckLinks(KEY, self.base, timedelta(hours=24))
        factories = {n: (lambda _c, _n: Adapter(self.world))
                     for n in ("hubdb", "hubapi", "proxy", "kube")}
        self.store = Store(config.state.resolved_url())
        self.engine = Engine(config, self.store, Sources(config, factories),
                             notifier=Notifier.from_config(config.notify, self.links),
                             clock=self.clock, registry={"sessions": REGISTRY["sessions"]})
        self.listener = AckListener(self.links, self.store, f"127.0.0.1:{port}", timeout=5,
                                    clock=self.clock)
        self.receiver = receiver

    def events(self, key: str = ALICE) -> list[str]:
        return [r["event"] for r in self.store.outbox() if r["finding_key"] == key]

    def actions(self, index: int = -1) -> list[dict[str, Any]]:
        header = self.receiver.headers[index].get("X-Actions")
        return json.loads(header) if header else []

    def ack_url(self, index: int = -1) -> str:
        [url] = [a["url"] for a in self.actions(index) if a["label"] == "acknowledge"]
        return str(url)

    def acked_by(self) -> dict[str, str]:
        with self.store.engine.connect() as conn:
            return {r.finding_key: r.acked_by for r in conn.execute(sa.text(
                "SELECT finding_key, acked_by FROM acks"))}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


def opened(tmp_path: Path, receiver: Receiver, *users: str, **kwargs: Any) -> Phone:
    """A phone whose findings were announced (two passes: ``confirm_after`` is 2)."""
    phone = Phone(tmp_path, receiver, *users, **kwargs)
    phone.engine.run_pass()
    phone.clock.advance(minutes=5)
    phone.engine.run_pass()
    phone.listener.start()
    return phone


def post(url: str, **kwargs: Any) -> requests.Response:
    return requests.post(url, timeout=TIMEOUT, **kwargs)


def test_a_valid_link_acknowledges_once_and_the_reminder_stops(
        tmp_path: Path, receiver: Receiver) -> None:
    phone = opened(tmp_path, receiver, "alice")
    try:
        assert phone.events() == ["new"]
        headers = receiver.headers[-1]
        assert headers.get("X-Priority") == "max"
        # apprise sorts the tags
        assert set(headers["X-Tags"].split(",")) == {"rotating_light", finding_tag(ALICE)}
        assert [(a["action"], a["label"]) for a in phone.actions()] == [
            ("view", "open report"), ("http", "acknowledge")]
        assert phone.actions()[0]["url"] == "https://watchdogd.example.org/report"
        url = phone.ack_url()
        assert url.startswith(f"{phone.base}/ack/") and phone.actions()[1]["method"] == "POST"
        with capture_logs() as logs:
            answer = post(url)
            assert answer.status_code == 200, answer.text
            assert answer.text.startswith(f"acknowledged {ALICE} (critical)")
            replay = post(url)
        assert replay.status_code == 409 and "already used" in replay.text
        assert phone.acked_by() == {ALICE: ACKED_BY}
        # The token is a credential until used: no log line carries it, whole or half.
        token = url.rsplit("/", 1)[1]
        assert logs and not any(token[:40] in repr(entry) for entry in logs), logs
        assert [e["event"] for e in logs] == ["acknowledged from the phone",
                                              "acknowledge link replayed"]
        phone.clock.advance(hours=2)  # a reminder would be due (repeat_after = 1h)
        phone.engine.run_pass()
        assert phone.events() == ["new"]
    finally:
        phone.listener.stop()


def test_without_the_listener_the_reminder_goes_out(tmp_path: Path, receiver: Receiver) -> None:
    """The control of the test above: the same world, nobody taps, a reminder is sent."""
    phone = opened(tmp_path, receiver, "alice")
    try:
        phone.clock.advance(hours=2)
        phone.engine.run_pass()
        assert phone.events() == ["new", "reminder"]
        assert phone.acked_by() == {}
    finally:
        phone.listener.stop()


def tampered(token: str, key: str) -> str:
    """The token with its payload's finding key replaced, signature kept."""
    body, mac = token.split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    payload = payload[:25] + key.encode()
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + "." + mac


def test_forged_tampered_expired_and_resolved_links_are_refused(
        tmp_path: Path, receiver: Receiver) -> None:
    phone = opened(tmp_path, receiver, "alice", "bob")
    try:
        alice_url = next(phone.ack_url(i) for i in range(len(receiver.headers))
                         if finding_tag(ALICE) in receiver.headers[i]["X-Tags"])
        token = alice_url.rsplit("/", 1)[1]
        body, mac = token.split(".")
        flipped = mac[:5] + ("A" if mac[5] != "A" else "B") + mac[6:]
        other_key = AckLinks(b"x" * 40, phone.base, timedelta(hours=1)).token(ALICE, phone.clock())
        with capture_logs() as logs:
            for bad, status in [
                    (f"{body}.{flipped}", 403),               # forged signature
                    (other_key, 403),                         # signed with another key
                    (tampered(token, BOB), 403),              # bob's link made from alice's
                    ("not-a-token", 403), (f"{body}.", 403), ("a.b.c", 403), ("%%%.%%%", 403)]:
                answer = post(f"{phone.base}/ack/{bad}")
                assert answer.status_code == status, (bad, answer.text)
            expired = phone.links.url(ALICE, phone.clock() - timedelta(hours=24, seconds=1))
            answer = post(expired)
            assert answer.status_code == 410 and "expired" in answer.text
        # Refusals are logged (one line each), without the token they refused.
        assert len(logs) == 8 and all(e["event"] == "acknowledge link refused" for e in logs)
        assert not any(part in repr(logs) for part in (body[:24], mac[:24], other_key[:24],
                                                         expired.rsplit("/", 1)[1][:24]))
        assert phone.acked_by() == {}
        # A link only acknowledges its own finding.
        assert post(alice_url).status_code == 200
        assert phone.acked_by() == {ALICE: ACKED_BY}
        # Bob's problem goes away: his still-unused link is refused, nothing written.
        bob_url = phone.links.url(BOB, phone.clock())
        phone.world.pods.append({
            "metadata": {"name": "jupyter-bob", "namespace": "jhub", "uid": "b2",
                         "annotations": {"hub.jupyter.org/username": "bob"}},
            "status": {"phase": "Running"}})
        phone.clock.advance(minutes=5)
        phone.engine.run_pass()
        assert phone.events(BOB)[-1] == "resolved"
        answer = post(bob_url)
        assert answer.status_code == 410 and "no longer open" in answer.text
        assert phone.acked_by() == {ALICE: ACKED_BY}
        # The resolved notice is low, ticked, and offers no acknowledge button.
        last = receiver.headers[-1]
        assert last.get("X-Priority") == "low"
        assert set(last["X-Tags"].split(",")) == {"white_check_mark", finding_tag(BOB)}
        assert [a["label"] for a in phone.actions()] == ["open report"]
    finally:
        phone.listener.stop()


def test_only_post_to_ack_is_served(tmp_path: Path, receiver: Receiver) -> None:
    phone = opened(tmp_path, receiver, "alice")
    try:
        url = phone.ack_url()
        # A browser, a link preview or a crawler opening the link acknowledges nothing.
        for method in ("GET", "HEAD", "PUT", "DELETE"):
            answer = requests.request(method, url, timeout=TIMEOUT)
            assert answer.status_code == 405, method
            assert answer.headers["Allow"] == "POST"
        for path in ("/", "/ack", "/metrics", "/healthz", "/acknowledge/x", "/ACK/x"):
            assert post(phone.base + path).status_code == 404, path
            assert requests.get(phone.base + path, timeout=TIMEOUT).status_code == 404, path
        assert post(url, data=b"x" * (MAX_BODY + 1)).status_code == 413
        chunked = post(url, data=iter([b"x" * 100]))  # a generator: sent chunked
        assert chunked.status_code == 411
        assert phone.acked_by() == {}
        # A small body (what some clients send) is fine; the query string is ignored.
        assert post(url + "?from=phone", data=b"{}").status_code == 200
        assert phone.acked_by() == {ALICE: ACKED_BY}
    finally:
        phone.listener.stop()


def test_a_client_that_trickles_is_cut_off_and_others_are_served(
        tmp_path: Path, receiver: Receiver) -> None:
    """The deadline is for the whole request: a byte every 0.2 s never lets a per-read
    timeout (1 s here) fire, yet the listener closes the connection."""
    phone = Phone(tmp_path, receiver, "alice")
    phone.listener.timeout = 1.0
    phone.listener.start()
    try:
        slow = socket.create_connection(("127.0.0.1", phone.listener.port), timeout=TIMEOUT)
        slow.sendall(b"POST /ack/x HTTP/1.1\r\nX-Pad: ")
        # Another request is answered meanwhile.
        assert requests.get(phone.base + "/", timeout=TIMEOUT).status_code == 404
        closed = False
        for _ in range(40):  # up to 8 s of trickling, 8 times the deadline
            readable, _, _ = select.select([slow], [], [], 0.2)  # the trickle's pace
            if readable:
                try:
                    closed = slow.recv(1024) == b""
                except ConnectionResetError:
                    closed = True
                break
            try:
                slow.send(b"a")
            except OSError:
                closed = True
                break
        assert closed
        slow.close()
    finally:
        phone.listener.stop()


def test_two_taps_at_once_acknowledge_once(tmp_path: Path, receiver: Receiver) -> None:
    phone = opened(tmp_path, receiver, "alice")
    try:
        url = phone.ack_url()
        codes: list[int] = []
        barrier = threading.Barrier(4)

        def tap() -> None:
            barrier.wait()
            codes.append(post(url).status_code)

        threads = [threading.Thread(target=tap) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(codes) == [200, 409, 409, 409]
    finally:
        phone.listener.stop()


def test_links_check_signature_before_payload() -> None:
    links = AckLinks(KEY, "https://w.example.org/", timedelta(minutes=5))
    token = links.token(ALICE, T0)
    link = links.check(token, T0 + timedelta(minutes=4))
    assert link.finding_key == ALICE and len(link.nonce) == 32
    assert links.url(ALICE, T0).startswith("https://w.example.org/ack/")
    assert links.token(ALICE, T0) != token  # a fresh nonce every time
    with pytest.raises(LinkRefused) as refused:
        links.check(token, T0 + timedelta(minutes=5))
    assert refused.value.status == 410
    with pytest.raises(ValueError, match="at least 32 bytes"):
        AckLinks(b"short", "https://w.example.org", timedelta(minutes=5))


def test_without_a_listener_ntfy_gets_no_acknowledge_button(
        tmp_path: Path, receiver: Receiver) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(f"ntfy://127.0.0.1:{receiver.port}/alerts?priority=min&tags=ops\n")
    [destination] = load_destinations(NotifyConfig(urls_file=str(urls)))
    notifier = Notifier(NotifyConfig(urls_file=str(urls)), [destination])
    notice = Notice(1, ALICE, "new", Severity.WARNING, "t", "b", destination.id, 0)
    params = notifier.push_params(destination, notice, T0)
    assert params == {"priority": "high", "xtags": "warning"}
    destination.send("t", "b", Severity.WARNING, ALICE, params)
    # The severity's priority replaces the URL's; tags are merged; no report URL and no
    # listener: no button.
    headers = receiver.headers[-1]
    assert headers.get("X-Priority") == "high"
    assert set(headers["X-Tags"].split(",")) == {"ops", "warning", finding_tag(ALICE)}
    assert "X-Actions" not in headers


PUSHOVER = "pover://" + "u" * 30 + "@" + "a" * 30


@pytest.mark.parametrize(("severity", "event", "retry", "expected"), [
    (Severity.CRITICAL, "new", None, (1, None, None)),
    (Severity.CRITICAL, "reminder", timedelta(minutes=5), (2, 300, 1800)),
    (Severity.WARNING, "new", timedelta(minutes=5), (0, None, None)),
    (Severity.INFO, "new", None, (-1, None, None)),
    (Severity.INFO, "resolved", timedelta(minutes=5), (-1, None, None)),
])
def test_pushover_priority_per_severity(tmp_path: Path, severity: Severity, event: str,
                                        retry: timedelta | None,
                                        expected: tuple[int, int | None, int | None]) -> None:
    import apprise

    urls = tmp_path / "urls.txt"
    urls.write_text(PUSHOVER + "\n")
    config = NotifyConfig(urls_file=str(urls), pushover_retry=retry,
                          pushover_expire=timedelta(minutes=30))
    [destination] = load_destinations(config)
    assert destination.is_pushover and not destination.is_ntfy
    notifier = Notifier(config, [destination],
                        AckLinks(KEY, "https://w.example.org", timedelta(hours=1)))
    notice = Notice(1, ALICE, event, severity, "t", "b", destination.id, 0)
    url = destination.url_for(ALICE, notifier.push_params(destination, notice, T0))
    # The URL is what apprise is given: its own plugin reads it back.
    plugin = apprise.Apprise.instantiate(url)
    assert plugin is not None
    priority, interval, expire = expected
    assert plugin.priority == priority
    if interval is not None:
        assert (plugin.interval, plugin.expire) == (interval, expire)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_listener_configuration(tmp_path: Path) -> None:
    write(tmp_path / "ack.key", "s" * 48 + "\n")
    short = write(tmp_path / "short.key", "s" * 20)
    base = '[listener]\n'
    good = write(tmp_path / "good.toml", base + 'listen = "127.0.0.1:0"\n'
                 'public_url = "https://w.example.org"\nkey_file = "ack.key"\n'
                 'link_ttl = "2h"\n')
    config = load_config(good)
    assert config.listener.key is not None and config.listener.key.get_secret_value() == "s" * 48
    assert config.listener.link_ttl == timedelta(hours=2)
    assert ListenerConfig().listen is None  # off by default
    for text, problem in [
            ('listen = "127.0.0.1:0"\nkey_file = "ack.key"\n', "public_url"),
            ('listen = "127.0.0.1:0"\npublic_url = "https://w.example.org"\n', "key_file"),
            ('listen = "127.0.0.1:0"\npublic_url = "https://w.example.org"\n'
             f'key_file = "{short.name}"\n', "at least 32 bytes"),
            ('listen = "127.0.0.1:0"\npublic_url = "ftp://w"\nkey_file = "ack.key"\n',
             "public_url"),
            ('key = "inline"\n', "secrets do not belong in the config file")]:
        with pytest.raises(ConfigError) as error:
            load_config(write(tmp_path / "bad.toml", base + text))
        assert problem in str(error.value), (text, error.value)
    with pytest.raises(ConfigError, match="pushover_retry"):
        load_config(write(tmp_path / "bad.toml", '[notify]\npushover_retry = "10s"\n'))


def test_the_daemon_builds_the_listener_and_signs_links(tmp_path: Path) -> None:
    key = write(tmp_path / "ack.key", "s" * 48)
    data = make_config(tmp_path).model_dump(mode="python")
    data["listener"] = {"listen": "127.0.0.1:0", "public_url": "https://w.example.org",
                        "key": "s" * 48, "key_file": str(key)}
    config = Config.model_validate(data)
    app = app_module.build(config, service=True, notify=True)
    try:
        assert app.listener is not None and app.links is not None
        assert app.notifier is not None and app.notifier.links is app.links
        host, port = app.listener.start()
        answer = requests.post(f"http://{host}:{port}/ack/x", timeout=TIMEOUT)
        assert answer.status_code == 403
    finally:
        app.close()
    plain = app_module.build(make_config(tmp_path), service=True)
    try:
        assert plain.listener is None and plain.links is None  # off by default
    finally:
        plain.close()
