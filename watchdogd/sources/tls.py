"""Certificates wherever they live: PEM files, kubeconfigs, TLS secrets, HTTPS endpoints.

Every method returns plain records (one per certificate) that the ``certs``
check judges; none of them decides anything. Two kinds of trouble are kept
apart on purpose:

* what we could not *observe* (a configured file or directory that does not
  exist, a secret list the API refused, an endpoint that is down, not TLS or
  silent) raises :class:`~watchdogd.model.SourceError`: the pass reports
  ``error`` instead of pretending there is nothing to see;
* what we observed but cannot *parse* (a ``.crt`` with garbage, a secret
  without ``tls.crt``, a kubeconfig whose ``client-certificate-data`` is not a
  certificate) is a record with an ``error`` field: the check reports it as
  ``cert-unreadable``, because that certificate will fail whoever uses it.

Only network calls count as requests (an endpoint, a secret list page); file reads
do not. Endpoints are read *without trusting them* (no verification): an expired or
self-signed certificate must still be measured, which a verifying client
cannot do. Private keys are never kept: a TLS secret's ``tls.key`` is dropped
as soon as the list is parsed, and records carry only public facts.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import select
import socket
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from watchdogd.config import ClusterConfig, Config
from watchdogd.model import SourceError
from watchdogd.sources.base import count_request
from watchdogd.urls import split_endpoint

__all__ = [
    "CertificateParseError",
    "TlsSource",
    "certificate_record",
    "parse_certificates",
]

#: File names a directory scan picks up. ``.crt`` files must hold a certificate;
#: ``.pem`` files may be keys only (kubelet's pki directory), which are skipped.
CERT_SUFFIXES = (".crt", ".pem", ".cert")
#: Anything larger is not a certificate file; reading it would only cost memory.
MAX_FILE_BYTES = 1 << 20
TLS_SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 - a secret type, not a secret
#: Secret annotations worth keeping: they say who renews the certificate.
KEEP_ANNOTATIONS = (
    "cert-manager.io/certificate-name",
    "cert-manager.io/issuer-name",
    "cert-manager.io/issuer-kind",
    "cert-manager.io/cluster-issuer",
)
DEFAULT_TIMEOUT = 10.0


class CertificateParseError(ValueError):
    """Bytes that should hold a certificate do not."""


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in PEM ``data`` (a chain keeps its order), or one DER certificate.

    Other PEM blocks (keys) are ignored; no certificate at all, or a
    certificate block that does not decode, raises :class:`CertificateParseError`.
    """
    if b"-----BEGIN" in data:
        if b"CERTIFICATE-----" not in data:
            raise CertificateParseError("no PEM certificate block (only keys or other data)")
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise CertificateParseError(f"a PEM certificate block does not decode "
                                        f"({_short(exc)})") from None
    if not data.strip():
        raise CertificateParseError("empty")
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertificateParseError("neither PEM nor a DER certificate") from None


def _short(exc: Exception) -> str:
    text = str(exc)
    # cryptography appends a FAQ link and a framing code; the code is the useful part.
    return text.rsplit(" ", 1)[-1][:80] if "FAQ" in text or "faq" in text else text[:80]


def certificate_record(cert: x509.Certificate) -> dict[str, Any]:
    """The public facts of one certificate as plain data (times as ISO 8601 UTC)."""
    dns: list[str] = []
    ips: list[str] = []
    is_ca = False
    ski: bytes | None = None
    aki: bytes | None = None
    try:
        extensions = cert.extensions
    except ValueError:  # duplicate or malformed extensions: the dates still matter
        extensions = x509.Extensions([])
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            dns = [str(v) for v in value.get_values_for_type(x509.DNSName)]
            ips = [str(v) for v in value.get_values_for_type(x509.IPAddress)]
        elif isinstance(value, x509.BasicConstraints):
            is_ca = bool(value.ca)
        elif isinstance(value, x509.SubjectKeyIdentifier):
            ski = value.digest
        elif isinstance(value, x509.AuthorityKeyIdentifier):
            aki = value.key_identifier
    # Self-issued by name and, when both identifiers exist, by key. No signature
    # check: that costs ~100 us a certificate and tells an operator nothing more.
    self_signed = cert.subject == cert.issuer and (aki is None or ski is None or aki == ski)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "dns_names": dns,
        "ip_addresses": ips,
        "is_ca": is_ca,
        "self_signed": self_signed,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def _records(data: bytes, location: str, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per certificate in ``data``; one error record when none parses."""
    try:
        certs = parse_certificates(data)
    except CertificateParseError as exc:
        return [{**base, "location": location, "index": 0, "error": str(exc)}]
    records = []
    for index, cert in enumerate(certs):
        try:
            facts = certificate_record(cert)
        except ValueError as exc:
            # cryptography decodes fields lazily: a certificate that loads can still have
            # a subject, an issuer or dates that do not parse.
            facts = {"error": f"a field of the certificate does not decode ({_short(exc)})"}
        records.append({**base, "location": location, "index": index, **facts})
    return records


def _handshake(tls: ssl.SSLSocket, deadline: float) -> None:
    """The TLS handshake, all of it by ``deadline``.

    A socket timeout bounds each read, so a server that sends its handshake a byte at a
    time would never trip it: the handshake runs non-blocking against one deadline.
    """
    tls.setblocking(False)
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            wait: tuple[list[Any], list[Any]] = ([tls], [])
        except ssl.SSLWantWriteError:
            wait = ([], [tls])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("TLS handshake deadline passed")
        select.select(wait[0], wait[1], [], remaining)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class TlsSource:
    """Certificates seen from this host; ``target`` is a cluster name for the cluster calls."""

    def __init__(self, target: str, config: Config) -> None:
        self.target = target
        self._config = config
        self._kube: Any = None

    def error(self, cause: str) -> SourceError:
        """A SourceError naming this source and target."""
        return SourceError("tls", self.target, cause)

    # -- files ---------------------------------------------------------------------------

    def files(self, path: str) -> list[dict[str, Any]]:
        """Certificates in one file, or in every ``*.crt``/``*.pem`` under a directory.

        A directory is walked recursively (kubeadm keeps etcd's under ``pki/etcd``)
        and in name order. Two names for one file (kubelet's ``-current.pem``
        symlink) count once, under the symlink's stable name.
        """
        root = Path(path).expanduser()
        try:
            is_dir = root.is_dir()
            exists = is_dir or root.exists()
        except OSError as exc:
            raise self.error(f"cannot read {root}: {exc.strerror}") from None
        if not exists:
            raise self.error(f"{root}: no such file or directory (checks.certs.files)")
        if not is_dir:
            return self._read_file(root, strict=True)
        candidates: list[Path] = []

        def walk_error(exc: OSError) -> None:
            raise self.error(f"cannot list {exc.filename}: {exc.strerror}")

        for directory, dirs, names in os.walk(root, onerror=walk_error):
            dirs.sort()
            for name in sorted(names):
                if name.endswith(CERT_SUFFIXES):
                    candidates.append(Path(directory) / name)
        records: list[dict[str, Any]] = []
        for candidate in _prefer_links(candidates):
            records += self._read_file(candidate, strict=candidate.suffix != ".pem")
        return records

    def _read_file(self, path: Path, *, strict: bool) -> list[dict[str, Any]]:
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                return [{"source": "file", "path": str(path), "location": str(path),
                         "index": 0, "error": f"{size} bytes: too large for a certificate"}]
            data = path.read_bytes()
        except OSError as exc:
            raise self.error(f"cannot read {path}: {exc.strerror}") from None
        if not strict and b"CERTIFICATE-----" not in data:
            return []  # a key or CSR next to the certificates; not ours to judge
        return _records(data, str(path), {"source": "file", "path": str(path)})

    # -- kubeconfigs ---------------------------------------------------------------------

    def kubeconfig(self, path: str) -> list[dict[str, Any]]:
        """Client certificates (and cluster CAs) of one kubeconfig file.

        ``client-certificate-data`` is decoded in place; ``client-certificate``
        file references are read relative to the kubeconfig's directory, as
        kubectl does. A reference that cannot be read is a ``cert-unreadable``
        record: that kubeconfig no longer authenticates.
        """
        import yaml  # noqa: PLC0415 - the kubernetes client ships PyYAML

        file = Path(path).expanduser()
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self.error(f"{file}: no such file (checks.certs.kubeconfigs)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(f"cannot read {file}: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        base = {"source": "kubeconfig", "path": str(file)}
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            doc = None
        if not isinstance(doc, dict):
            return [{**base, "location": str(file), "index": 0,
                     "error": "not a kubeconfig (YAML mapping expected)"}]
        records: list[dict[str, Any]] = []
        for section, entry_key, field in (("users", "user", "client-certificate"),
                                          ("clusters", "cluster", "certificate-authority")):
            for item in doc.get(section) or []:
                if not isinstance(item, dict) or not isinstance(item.get(entry_key), dict):
                    continue
                name = str(item.get("name") or "?")
                records += self._kubeconfig_entry(file, item[entry_key], field, entry_key,
                                                  name, base)
        return records

    def _kubeconfig_entry(self, file: Path, entry: dict[str, Any], field: str, role: str,
                          name: str, base: dict[str, Any]) -> list[dict[str, Any]]:
        location = f"{file}#{role}:{name}"
        extra = {**base, "entry": f"{role}:{name}", "role": field}
        inline = entry.get(f"{field}-data")
        if inline:
            try:
                data = base64.b64decode(str(inline), validate=True)
            except (binascii.Error, ValueError):
                return [{**extra, "location": location, "index": 0,
                         "error": f"{field}-data is not base64"}]
            return _records(data, location, extra)
        reference = entry.get(field)
        if not reference:
            return []
        target = Path(str(reference)).expanduser()
        if not target.is_absolute():
            target = file.parent / target
        extra["file"] = str(target)
        try:
            data = target.read_bytes()
        except OSError as exc:
            return [{**extra, "location": location, "index": 0,
                     "error": f"{field} {target}: {exc.strerror}"}]
        return _records(data, location, extra)

    # -- Kubernetes TLS secrets ----------------------------------------------------------

    def _cluster(self) -> ClusterConfig:
        cluster = self._config.clusters.get(self.target)
        if cluster is None:
            raise self.error(f"no cluster named {self.target!r} in [clusters] "
                             "(checks.certs.secrets_clusters / api_servers)")
        return cluster

    def secrets(self) -> list[dict[str, Any]]:
        """The certificates of every ``kubernetes.io/tls`` secret in the cluster, all namespaces.

        The type is filtered by the API server (field selector), so the other
        secrets never cross the wire. A secret without a parseable ``tls.crt`` is
        an error record. ``tls.key`` is discarded unread.
        """
        from watchdogd.sources.kube import KubeSource  # noqa: PLC0415

        if self._kube is None:
            self._kube = KubeSource(self.target, self._cluster())
        items = self._kube.list_objects("Secret", field_selector=f"type={TLS_SECRET_TYPE}")
        records: list[dict[str, Any]] = []
        for secret in items:
            meta = secret.get("metadata") or {}
            if secret.get("type") != TLS_SECRET_TYPE:
                # The API server filtered; anything else means the selector was ignored.
                raise self.error("list secrets: the type field selector was not applied")
            namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
            annotations = meta.get("annotations") or {}
            data_map = secret.get("data") or {}
            if not isinstance(annotations, dict) or not isinstance(data_map, dict):
                # The API server never sends this: the answer cannot be trusted as a whole.
                raise self.error(f"list secrets: secret {namespace}/{name} is malformed")
            base = {"source": "secret", "cluster": self.target, "namespace": namespace,
                    "name": name,
                    "annotations": {k: annotations[k] for k in KEEP_ANNOTATIONS
                                    if k in annotations}}
            location = f"{namespace}/{name}"
            encoded = data_map.get("tls.crt")
            if not encoded:
                records.append({**base, "location": location, "index": 0,
                                "error": "the secret has no tls.crt"})
                continue
            try:
                data = base64.b64decode(str(encoded), validate=True)
            except (binascii.Error, ValueError):
                records.append({**base, "location": location, "index": 0,
                                "error": "tls.crt is not base64"})
                continue
            records += _records(data, location, base)
        return records

    # -- HTTPS endpoints -----------------------------------------------------------------

    def endpoint(self, url: str, server_name: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The certificate an HTTPS endpoint serves, read without verifying it.

        SNI is ``server_name`` if given, else the URL's host name (never an IP
        address, as RFC 6066 says). ``timeout`` bounds the connect and each
        step of the handshake: a peer that accepts and then says nothing is an
        error after ``timeout`` seconds, not a stuck pass.
        """
        try:
            host, port = split_endpoint(url)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        sni = server_name or (None if _is_ip(host) else host)
        where = f"{host}:{port}"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # measuring, not trusting
        count_request()
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw, \
                    context.wrap_socket(raw, server_hostname=sni,
                                        do_handshake_on_connect=False) as tls:
                _handshake(tls, time.monotonic() + timeout)
                der = tls.getpeercert(binary_form=True)
                version = tls.version()
        except TimeoutError:
            raise self.error(f"{where}: no TLS handshake within {timeout:g}s") from None
        except ConnectionRefusedError:
            raise self.error(f"{where}: connection refused") from None
        except socket.gaierror as exc:
            raise self.error(f"{where}: cannot resolve {host} ({exc.strerror})") from None
        except ssl.SSLError as exc:
            reason = exc.reason or type(exc).__name__
            hint = " (is it plain HTTP?)" if reason in ("WRONG_VERSION_NUMBER",
                                                        "RECORD_LAYER_FAILURE") else ""
            raise self.error(f"{where}: TLS handshake failed: {reason}{hint}") from None
        except OSError as exc:
            raise self.error(f"{where}: {exc.strerror or type(exc).__name__} "
                             "during the TLS handshake") from None
        if not der:
            raise self.error(f"{where}: the server sent no certificate")
        try:
            cert = x509.load_der_x509_certificate(der)
            facts = certificate_record(cert)  # fields decode lazily: they can fail here too
        except ValueError:
            raise self.error(f"{where}: the served certificate does not parse") from None
        return {"source": "endpoint", "url": url, "host": host, "port": port,
                "server_name": sni, "hostname": server_name or host,
                "location": where if not server_name else f"{server_name}@{where}",
                "tls_version": version, "index": 0, **facts}

    def api_server(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The certificate the cluster's API server serves (address from its kubeconfig)."""
        from watchdogd.sources.kube import api_client  # noqa: PLC0415

        api = api_client(self.target, self._cluster())
        try:
            host = str(api.configuration.host or "")
            server_name = getattr(api.configuration, "tls_server_name", None) or None
        finally:
            api.close()  # type: ignore[no-untyped-call]
        if not host.startswith("https://"):
            raise self.error(f"the API server {host or '(none)'} is not served over https")
        record = self.endpoint(host, server_name, timeout)
        record.update(source="api-server", cluster=self.target)
        return record

    def close(self) -> None:
        """Close the Kubernetes client, if one was built."""
        if self._kube is not None:
            self._kube.close()


def _prefer_links(paths: Iterable[Path]) -> list[Path]:
    """Drop second names of one file, keeping a symlink's name over its target's."""
    chosen: dict[str, Path] = {}
    order: list[str] = []
    for path in paths:
        try:
            real = os.path.realpath(path)
        except OSError:
            real = str(path)
        if real not in chosen:
            chosen[real] = path
            order.append(real)
        elif path.is_symlink() and not chosen[real].is_symlink():
            chosen[real] = path
    return [chosen[r] for r in order]
