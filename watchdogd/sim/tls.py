"""Certificates and a local HTTPS endpoint for the certs check's worlds.

Certificates are generated with ``cryptography`` (EC P-256, one shared leaf key per authority
so that thousands of them cost a fraction of a second); :class:`TlsServer` serves one on a free
local port for the endpoint source. The server is a plain ``http.server`` wrapped in TLS, not
an :class:`~watchdogd.sim._http.HttpSim`: it answers one GET, and what it is for is the
handshake (SNI, the certificate served), which the shared base does not do.
"""

from __future__ import annotations

import contextlib
import ssl
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["GARBAGE_PEM", "CertAuthority", "Issued", "TlsServer", "key_pem"]


@dataclass(frozen=True)
class Issued:
    """A generated certificate and its key, PEM encoded."""

    cert_pem: bytes
    key_pem: bytes
    not_after: datetime

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.crt`` and ``stem.key`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertAuthority:
    """A test CA that issues leaf certificates valid, expiring or expired, as asked.

    ``now`` anchors every validity period, so a test with a fixed clock gets
    exactly "expires in 5 days".
    """

    def __init__(self, name: str = "watchdogd-sim-ca", *, now: datetime | None = None,
                 days: int = 3650) -> None:
        self.now = now or datetime.now(UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - timedelta(days=1))
            .not_valid_after(self.now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self._serial = 1000

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, days: float = 90, dns: Sequence[str] | None = None,
              ips: Sequence[str] = (), self_signed: bool = False, client: bool = False,
              lifetime_days: float = 365, own_key: bool = False) -> Issued:
        """A certificate for ``common_name`` that expires ``days`` from ``now`` (negative:
        expired). ``dns`` defaults to ``[common_name]``; ``self_signed`` makes it its own
        issuer; ``own_key`` generates a key instead of the shared leaf key."""
        key = ec.generate_private_key(ec.SECP256R1()) if own_key or self_signed \
            else self.leaf_key
        not_after = self.now + timedelta(days=days)
        not_before = min(not_after - timedelta(days=lifetime_days),
                         self.now - timedelta(hours=1))
        self._serial += 1
        subject = _name(common_name)
        names: list[x509.GeneralName] = [
            x509.DNSName(d) for d in ([common_name] if dns is None else dns)]
        names += [x509.IPAddress(ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self.name)
            .public_key(key.public_key())
            .serial_number(self._serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(key if self_signed else self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem(key),
                      cert.not_valid_after_utc)


GARBAGE_PEM = (b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGUgYXQgYWxsLCBqdXN0IGdh"
               b"cmJhZ2U=\n-----END CERTIFICATE-----\n")


# -- a local HTTPS endpoint ---------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""


class _TlsHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the connection's thread, so a client that connects and says
        # nothing holds only its own thread, never the accept loop.
        with contextlib.suppress(OSError):
            request.settimeout(10)
            request.do_handshake()
            super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up mid-handshake are normal here."""


class TlsServer:
    """An HTTPS server on 127.0.0.1 and a free port, serving ``issued``.

    ``by_name`` serves another certificate to clients that ask for that SNI
    name; ``seen_sni`` records every name clients asked for (None: no SNI).
    """

    def __init__(self, issued: Issued, *, by_name: dict[str, Issued] | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="watchdogd-tls-")
        self.seen_sni: list[str | None] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        context = self._context(issued, "default")
        for name, other in (by_name or {}).items():
            self._contexts[name] = self._context(other, f"sni{len(self._contexts)}")
        context.sni_callback = self._pick
        self._server = _TlsHttpServer(("127.0.0.1", 0), _Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"tls-{self.port}")
        self._thread.start()

    def _context(self, issued: Issued, stem: str) -> ssl.SSLContext:
        cert, key = issued.write(Path(self._dir.name), stem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context

    def _pick(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
              _context: ssl.SSLContext) -> None:
        self.seen_sni.append(name)
        if name in self._contexts:
            sock.context = self._contexts[name]

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop serving and remove the key files."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._dir.cleanup()

    def __enter__(self) -> TlsServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
