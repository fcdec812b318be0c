"""The tls source and the certs check against real local servers on free ports.

HTTPS servers (``ssl`` + ``http.server``) serve certificates generated here: valid,
expiring in 5 and 20 days, expired, for the wrong host name, self-signed; one picks its
certificate by SNI and records the names it was asked for. Raw sockets stand in for an
endpoint that is not TLS (plain HTTP), one that accepts and never answers, and a port
nothing listens on. An expired served certificate must still be measured.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.model import SourceError
from watchdogd.sim._http import free_port
from watchdogd.sim.kube import KubeSim
from watchdogd.sim.tls import CertAuthority, TlsServer
from watchdogd.sources import Sources
from watchdogd.sources.tls import TlsSource
from watchdogd.store import Store

pytestmark = pytest.mark.integration

HUB = "hub.example.org"


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority()


def source(config: Config | None = None) -> TlsSource:
    return TlsSource("local", config or Config())


class PlainHttp:
    """An HTTP server without TLS: its answer to a ClientHello is not TLS."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Silent:
    """Accepts connections and never says a word (a hung load balancer)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def plain() -> Iterator[PlainHttp]:
    server = PlainHttp()
    yield server
    server.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


# -- the source -------------------------------------------------------------------------------


@pytest.mark.parametrize("days", [365, 20, 5, -3])
def test_served_certificate_is_measured_whatever_its_expiry(ca: CertAuthority,
                                                            days: int) -> None:
    issued = ca.issue(HUB, days=days)
    with TlsServer(issued) as server:
        record = source().endpoint(server.url, HUB, timeout=5)
    assert datetime.fromisoformat(record["not_after"]) == issued.not_after
    assert record["dns_names"] == [HUB]
    assert (record["host"], record["port"], record["server_name"]) == (
        "127.0.0.1", server.port, HUB)
    assert record["hostname"] == HUB and record["source"] == "endpoint"
    assert record["tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_sni_picks_the_certificate_and_ip_urls_send_none(ca: CertAuthority) -> None:
    default = ca.issue("default.example.org")
    jupyter = ca.issue("jupyter.example.org", days=9)
    with TlsServer(default, by_name={"jupyter.example.org": jupyter}) as server:
        named = source().endpoint(server.url, "jupyter.example.org", timeout=5)
        bare = source().endpoint(server.url, timeout=5)
        local = source().endpoint(f"https://localhost:{server.port}", timeout=5)
        seen = list(server.seen_sni)
    assert named["dns_names"] == ["jupyter.example.org"]
    assert bare["dns_names"] == ["default.example.org"]
    assert bare["server_name"] is None and bare["hostname"] == "127.0.0.1"
    assert local["server_name"] == "localhost"
    assert seen == ["jupyter.example.org", None, "localhost"]


def test_self_signed_certificate_is_read(ca: CertAuthority) -> None:
    with TlsServer(ca.issue(HUB, self_signed=True)) as server:
        record = source().endpoint(server.url, HUB, timeout=5)
    assert record["self_signed"] is True
    assert record["issuer"] == record["subject"] == f"CN={HUB}"


def test_plain_http_is_not_tls(plain: PlainHttp) -> None:
    with pytest.raises(SourceError, match=r"TLS handshake failed.*plain HTTP"):
        source().endpoint(plain.url, timeout=5)


def test_silent_endpoint_times_out(silent: Silent) -> None:
    with pytest.raises(SourceError, match=r"no TLS handshake within 0.3s"):
        source().endpoint(silent.url, timeout=0.3)


def test_closed_port_is_refused() -> None:
    with pytest.raises(SourceError, match="connection refused"):
        source().endpoint(f"https://127.0.0.1:{free_port()}", timeout=5)


def test_api_server_certificate_from_the_cluster_kubeconfig(ca: CertAuthority,
                                                            tmp_path: Path) -> None:
    issued = ca.issue("kube-apiserver", days=4, dns=["kubernetes", "kubernetes.default.svc"],
                      ips=["127.0.0.1"])
    with TlsServer(issued) as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": server.url,
                                                   "tls-server-name": "kubernetes"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
        config = Config.model_validate({"clusters": {"js2": {"kubeconfig": str(kubeconfig)}}})
        record = TlsSource("js2", config).api_server(timeout=5)
        assert server.seen_sni == ["kubernetes"]
    assert record["source"] == "api-server" and record["cluster"] == "js2"
    assert record["hostname"] == "kubernetes"
    with KubeSim() as kube:
        config = Config.model_validate({"clusters": {
            "sim": {"kubeconfig": kube.write_kubeconfig(tmp_path / "sim")},
            "plain": {"kubeconfig": kube.write_kubeconfig(tmp_path / "plain", tls=False)}}})
        sim = TlsSource("sim", config).api_server(timeout=5)
        with pytest.raises(SourceError, match="not served over https"):
            TlsSource("plain", config).api_server(timeout=5)
    assert sim["subject"] == "CN=kube-apiserver" and "127.0.0.1" in sim["ip_addresses"]
    with pytest.raises(SourceError, match="no cluster named 'nope'"):
        TlsSource("nope", config).api_server(timeout=5)


# -- the certs check through the engine ------------------------------------------------------


def test_certs_check_on_real_endpoints(ca: CertAuthority, tmp_path: Path,
                                       silent: Silent, plain: PlainHttp) -> None:
    servers = {
        "valid": TlsServer(ca.issue(HUB, days=365)),
        "soon": TlsServer(ca.issue("soon.example.org", days=5)),
        "later": TlsServer(ca.issue("later.example.org", days=20)),
        "expired": TlsServer(ca.issue("old.example.org", days=-3)),
        "wrong": TlsServer(ca.issue("elsewhere.example.org", days=365)),
        "self": TlsServer(ca.issue("self.example.org", days=365, self_signed=True)),
    }
    try:
        endpoints: list[Any] = [
            {"url": servers["valid"].url, "server_name": HUB, "name": "valid"},
            {"url": servers["soon"].url, "server_name": "soon.example.org", "name": "soon"},
            {"url": servers["later"].url, "server_name": "later.example.org", "name": "later"},
            {"url": servers["expired"].url, "server_name": "old.example.org",
             "name": "expired"},
            {"url": servers["wrong"].url, "server_name": HUB, "name": "wrong"},
            {"url": servers["self"].url, "server_name": "self.example.org", "name": "self"},
            {"url": silent.url, "name": "silent"},
            {"url": plain.url, "name": "plain"},
        ]
        config = Config.model_validate({
            "state": {"url": f"sqlite:///{tmp_path}/state.db"},
            "checks": {"certs": {"endpoints": endpoints, "timeout": "0.5s"}},
        })
        engine = Engine(config, Store(config.state.resolved_url()), Sources(config))
        report = engine.run_pass(only=["certs"]).as_json()
        engine.sources.close()
    finally:
        for server in servers.values():
            server.close()
    by_target = {c["target"]: c for c in report["checks"]}
    got = {name: sorted((f["kind"], f["severity"]) for f in c["findings"])
           for name, c in by_target.items() if c["status"] != "error"}
    assert got == {
        "valid": [], "self": [],
        "soon": [("cert-expiring", "critical")],
        "later": [("cert-expiring", "warning")],
        "expired": [("cert-expiring", "critical")],
        "wrong": [("cert-hostname-mismatch", "critical")],
    }
    expired = by_target["expired"]["findings"][0]
    assert "expired 3 days ago" in expired["message"]
    assert expired["evidence"]["days_left"] < -2.9
    # A failing endpoint is an error of its own target only: the others are still judged.
    assert by_target["silent"]["status"] == "error"
    assert "no TLS handshake within 0.5s" in by_target["silent"]["error"]
    assert by_target["plain"]["status"] == "error"
    assert report["summary"]["errors"] == 2
