"""Certificates: see expiry coming, wherever the certificate lives. Notify only.

A JupyterHub on Kubernetes depends on certificates nobody looks at until they
expire: kubeadm's PKI (one year by default), the client certificates in
kubeconfigs (``admin.conf`` stops working on the same day), the TLS secrets of
the ingress (cert-manager or z2jh's autohttps usually renew them, until they
silently stop), and the certificate the hub's public URL actually serves.

=========================  ==========================================================
kind                       when
=========================  ==========================================================
``cert-expiring``          fewer than ``warn_days`` left (warning), fewer than
                           ``critical_days`` or already expired (critical)
``cert-hostname-mismatch`` an endpoint serves a certificate whose subjectAltNames do
                           not cover the name clients use (critical)
``cert-unreadable``        a file, kubeconfig entry or TLS secret that should hold a
                           certificate does not parse (warning)
=========================  ==========================================================

Every finding names where the certificate lives and the runbook step that
renews it. Nothing is ever changed: renewing a certificate is an operator's job.

Targets: ``files`` (the files, directories and kubeconfigs on this host), one
per HTTPS endpoint (named by its host), and one per cluster whose TLS secrets
or API server are watched (named by the cluster). A failure to observe
anything of a target (a missing directory, a refused list, an endpoint that
does not answer TLS) makes that target ``error``; it never reads as "nothing
expires".
"""

from __future__ import annotations

import ipaddress
import posixpath
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from watchdogd.config import CheckConfig, Duration, Inventory
from watchdogd.model import CheckTarget, Detection, Finding, Need, Severity, Snapshot
from watchdogd.ports import Tls, call
from watchdogd.times import parse_time
from watchdogd.urls import split_endpoint

NAME = "certs"
KINDS = ("cert-expiring", "cert-hostname-mismatch", "cert-unreadable")

FILES_TARGET = "files"


class Endpoint(BaseModel):
    """An endpoint as a table: ``{url = "https://10.0.0.7", server_name = "hub.example.org"}``.

    ``server_name`` is the SNI sent and the name the certificate must cover
    (connect to one address, ask for another name); ``name`` is the target name
    in findings (default: the server name or host, plus ``:port`` unless 443).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str
    server_name: str | None = None
    name: str | None = None

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        split_endpoint(value)
        return value

    @property
    def target_name(self) -> str:
        """The check target this endpoint is reported under."""
        if self.name:
            return self.name
        host, port = split_endpoint(self.url)
        shown = self.server_name or host
        return shown if port == 443 else f"{shown}:{port}"


class Settings(CheckConfig):
    """``[checks.certs]``: where certificates live and how early to warn.

    Nothing is watched until something is configured: reading every TLS secret
    needs ``list secrets`` on the whole cluster, which an operator grants on
    purpose, and the right files exist only on control-plane hosts.

    ``files``
        PEM/DER files or directories (walked for ``*.crt``, ``*.pem``,
        ``*.cert``); kubeadm's is ``/etc/kubernetes/pki``.
    ``kubeconfigs``
        kubeconfig files whose client certificates (inline or referenced) and
        cluster CAs are measured: ``/etc/kubernetes/admin.conf``, ...
    ``endpoints``
        ``https://`` URLs (or ``host:port``) whose *served* certificate is
        measured, e.g. the hub's public URL; or tables with ``server_name``.
    ``secrets_clusters``
        clusters (``[clusters.X]``) whose ``kubernetes.io/tls`` secrets, in all
        namespaces, are measured.
    ``api_servers``
        clusters whose API server certificate is measured (address from the
        cluster's kubeconfig).
    ``warn_days`` / ``critical_days``
        30 and 7: a month is time to fix a renewal that stopped; a week is the
        last call. An expired certificate is always critical.
    ``timeout``
        bound on each connection to an endpoint (10 s).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(hours=6)
    warn_days: int = Field(30, ge=1)
    critical_days: int = Field(7, ge=0)
    files: list[str] = Field(default_factory=list)
    kubeconfigs: list[str] = Field(default_factory=list)
    endpoints: list[str | Endpoint] = Field(default_factory=list)
    secrets_clusters: list[str] = Field(default_factory=list)
    api_servers: list[str] = Field(default_factory=list)
    timeout: Duration = timedelta(seconds=10)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str | Endpoint]) -> list[str | Endpoint]:
        for item in value:
            if isinstance(item, str):
                split_endpoint(item)
        return value

    @model_validator(mode="after")
    def _days(self) -> Settings:
        if self.critical_days > self.warn_days:
            raise ValueError("critical_days must not exceed warn_days")
        return self

    def endpoint_list(self) -> list[Endpoint]:
        """Every endpoint as an :class:`Endpoint`."""
        return [Endpoint(url=e) if isinstance(e, str) else e for e in self.endpoints]


@dataclass(frozen=True)
class TargetSettings:
    """What detect() needs: the check settings and the keys of what was collected."""

    check: Settings
    keys: tuple[str, ...]



def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """``files`` for this host's files, one target per endpoint and per watched cluster."""
    timeout = check.timeout.total_seconds()
    needs: dict[str, list[Need]] = {}
    for path in check.files:
        needs.setdefault(FILES_TARGET, []).append(
            Need.bind(f"file:{path}", call(Tls.files, "local", path=path)))
    for path in check.kubeconfigs:
        needs.setdefault(FILES_TARGET, []).append(
            Need.bind(f"kubeconfig:{path}", call(Tls.kubeconfig, "local", path=path)))
    for endpoint in check.endpoint_list():
        needs.setdefault(endpoint.target_name, []).append(
            Need.bind(f"endpoint:{endpoint.server_name or ''}@{endpoint.url}",
                      call(Tls.endpoint, "local", url=endpoint.url,
                           server_name=endpoint.server_name, timeout=timeout)))
    for cluster in dict.fromkeys(check.secrets_clusters):
        needs.setdefault(cluster, []).append(Need.bind("secrets", call(Tls.secrets, cluster)))
    for cluster in dict.fromkeys(check.api_servers):
        needs.setdefault(cluster, []).append(
            Need.bind("api_server", call(Tls.api_server, cluster, timeout=timeout)))
    result = []
    for name, target_needs in needs.items():
        unique = tuple(dict.fromkeys(target_needs))
        result.append(CheckTarget(name, unique, TargetSettings(
            check=check, keys=tuple(dict.fromkeys(n.key for n in unique)))))
    return result


# -- detection --------------------------------------------------------------------------


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Judge every certificate record the target collected."""
    s: TargetSettings = snapshot.settings
    findings: list[Finding] = []
    subjects = 0
    for key in s.keys:
        value = snapshot[key]
        records: list[dict[str, Any]] = value if isinstance(value, list) else [value]
        for record in records:
            subjects += 1
            findings += judge(record, snapshot.target, s.check, now)
    return Detection(findings, subjects)


def subject_of(record: dict[str, Any]) -> str:
    """The stable subject: where the certificate lives, ``#n`` for the n-th of a chain."""
    index = int(record.get("index") or 0)
    location = str(record.get("location") or "?")
    return f"{location}#{index}" if index else location


def judge(record: dict[str, Any], target: str, check: Settings,
          now: datetime) -> list[Finding]:
    """The findings of one certificate record (pure: exposed for tests and reuse)."""
    subject = subject_of(record)
    where = describe_location(record)
    if record.get("error"):
        return [Finding(NAME, target, "cert-unreadable", subject, Severity.WARNING,
                        f"{where} does not hold a readable certificate: {record['error']}",
                        {"location": record.get("location"), "source": record.get("source"),
                         "error": record["error"], "renew": renew_hint(record)})]
    findings: list[Finding] = []
    not_after = parse_time(record.get("not_after"))
    evidence: dict[str, Any] = {
        "location": record.get("location"), "source": record.get("source"),
        "subject": record.get("subject"), "issuer": record.get("issuer"),
        "not_after": record.get("not_after"), "serial": record.get("serial"),
        "sha256": record.get("sha256"), "self_signed": record.get("self_signed"),
        "renew": renew_hint(record),
    }
    if not_after is not None:
        days = (not_after - now).total_seconds() / 86400
        evidence["days_left"] = round(days, 2)
        severity = None
        if days <= check.critical_days:
            severity = Severity.CRITICAL
        elif days <= check.warn_days:
            severity = Severity.WARNING
        if severity is not None:
            when = (f"expired {_span(-days)} ago" if days <= 0
                    else f"expires in {_span(days)}")
            findings.append(Finding(
                NAME, target, "cert-expiring", subject, severity,
                f"{_name(record)} ({where}) {when}, on {not_after:%Y-%m-%d %H:%M} UTC. "
                f"Renew: {evidence['renew']}", evidence))
    if record.get("source") in ("endpoint", "api-server"):
        hostname = str(record.get("hostname") or record.get("host") or "")
        names = list(record.get("dns_names") or []) + list(record.get("ip_addresses") or [])
        if hostname and not hostname_matches(hostname, record.get("dns_names") or [],
                                             record.get("ip_addresses") or []):
            covered = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            findings.append(Finding(
                NAME, target, "cert-hostname-mismatch", subject, Severity.CRITICAL,
                f"{record.get('location')} serves {_name(record)}, which does not cover "
                f"{hostname!r} "
                f"(it covers: {covered or 'no subjectAltName at all'}); clients refuse it. "
                "Issue a certificate with this name in its subjectAltNames (the ingress's "
                "TLS hosts, or the cert-manager Certificate's dnsNames).",
                {**evidence, "hostname": hostname, "dns_names": record.get("dns_names"),
                 "ip_addresses": record.get("ip_addresses")}))
    return findings


def hostname_matches(hostname: str, dns_names: list[str], ip_addresses: list[str]) -> bool:
    """Whether a certificate's subjectAltNames cover ``hostname`` (RFC 6125, as browsers do).

    The common name is ignored (browsers and Go have for years). A wildcard
    covers exactly one left-most label: ``*.example.org`` covers
    ``hub.example.org``, not ``example.org`` nor ``a.hub.example.org``.
    """
    host = hostname.strip().rstrip(".").lower()
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        for value in ip_addresses:
            try:
                if ipaddress.ip_address(value) == address:
                    return True
            except ValueError:
                continue
        return False
    for pattern in dns_names:
        name = pattern.strip().rstrip(".").lower()
        if name == host:
            return True
        if name.startswith("*.") and "." in host:
            label, rest = host.split(".", 1)
            if label and rest == name[2:] and "*" not in rest:
                return True
    return False


# -- where it lives and how to renew it ------------------------------------------------

#: kubeadm's certificates (path tail) -> the ``kubeadm certs renew`` argument.
KUBEADM_CERTS = {
    "apiserver.crt": "apiserver",
    "apiserver-kubelet-client.crt": "apiserver-kubelet-client",
    "apiserver-etcd-client.crt": "apiserver-etcd-client",
    "front-proxy-client.crt": "front-proxy-client",
    "etcd/server.crt": "etcd-server",
    "etcd/peer.crt": "etcd-peer",
    "etcd/healthcheck-client.crt": "etcd-healthcheck-client",
}
KUBEADM_CAS = ("ca.crt", "front-proxy-ca.crt", "etcd/ca.crt")
KUBEADM_KUBECONFIGS = ("admin.conf", "super-admin.conf", "controller-manager.conf",
                       "scheduler.conf")
_RESTART = ("then restart the control-plane static pods (move their manifests out of "
            "/etc/kubernetes/manifests and back) on every control-plane node")
_CA_ROTATION = ("kubeadm does not renew CAs: rotate it "
                "(https://kubernetes.io/docs/tasks/tls/manual-rotation-of-ca-certificates/)")


def describe_location(record: dict[str, Any]) -> str:
    """Where a certificate lives, in words an operator can act on."""
    source = record.get("source")
    if source == "secret":
        return (f"TLS secret {record.get('namespace')}/{record.get('name')} "
                f"in cluster {record.get('cluster')}")
    if source == "kubeconfig":
        return f"kubeconfig {record.get('path')} ({record.get('entry')})"
    if source == "endpoint":
        return f"the certificate served by {record.get('location')}"
    if source == "api-server":
        return (f"the API server certificate of cluster {record.get('cluster')} "
                f"({record.get('host')}:{record.get('port')})")
    return f"file {record.get('path') or record.get('location')}"


def _tail(path: str, parts: int) -> str:
    return "/".join(posixpath.normpath(path).split("/")[-parts:])


def renew_hint(record: dict[str, Any]) -> str:
    """The runbook step that renews this certificate."""
    source = record.get("source")
    index = int(record.get("index") or 0)
    if index and source != "kubeconfig":
        return (f"this is an issuer certificate in the chain (#{index}): serve the current "
                "chain from the issuer with the renewed certificate")
    if source == "secret":
        ns, name = record.get("namespace"), record.get("name")
        annotations = record.get("annotations") or {}
        certificate = annotations.get("cert-manager.io/certificate-name")
        if certificate:
            return (f"cert-manager should renew it: `kubectl -n {ns} describe certificate "
                    f"{certificate}` shows why it did not; force it with `cmctl renew -n {ns} "
                    f"{certificate}`")
        if name == "proxy-public-tls-acme":
            return (f"z2jh's autohttps (Traefik, Let's Encrypt) renews it: read the autohttps "
                    f"pod's logs in {ns}; deleting this secret and the autohttps pod forces a "
                    "new certificate")
        return (f"replace the secret: `kubectl -n {ns} create secret tls {name} "
                "--cert=NEW.crt --key=NEW.key --dry-run=client -o yaml | kubectl apply -f -`")
    if source == "api-server":
        return ("`kubeadm certs renew apiserver` on every control-plane node, " + _RESTART)
    if source == "endpoint":
        return (f"renew the certificate behind {record.get('location')}: the TLS secret its "
                "ingress serves (cert-manager or z2jh autohttps) or the load balancer's "
                "certificate")
    path = str(record.get("path") or "")
    if source == "kubeconfig":
        base = posixpath.basename(path)
        entry = str(record.get("entry") or "")
        if entry.startswith("cluster:"):
            return ("this is the cluster CA embedded in the kubeconfig: " + _CA_ROTATION
                    + ", then update certificate-authority-data")
        if base in KUBEADM_KUBECONFIGS:
            return f"`kubeadm certs renew {base}`, " + _RESTART
        if base == "kubelet.conf":
            return ("the kubelet renews its client certificate when rotateCertificates is on: "
                    "read the kubelet's logs; once expired, `kubeadm init phase kubeconfig "
                    "kubelet` (control plane) or re-join the node")
        return (f"issue a new client certificate for {entry or 'this user'} and update "
                f"{path}")
    for tail, name in KUBEADM_CERTS.items():
        if _tail(path, tail.count("/") + 1) == tail and "/pki" in path:
            return f"`kubeadm certs renew {name}`, " + _RESTART
    for tail in KUBEADM_CAS:
        if _tail(path, tail.count("/") + 1) == tail and "/pki" in path:
            return _CA_ROTATION
    if "kubelet" in posixpath.basename(path) and "/pki" in path:
        return ("the kubelet rotates this certificate when rotateCertificates is on (client) "
                "or serverTLSBootstrap is on (serving): read the kubelet's logs, then restart "
                "the kubelet")
    return f"replace {path} with a renewed certificate and restart what reads it"


def _name(record: dict[str, Any]) -> str:
    subject = str(record.get("subject") or "")
    for part in subject.split(","):
        if part.startswith("CN="):
            return f"certificate {part[3:]!r}"
    dns = record.get("dns_names") or []
    return f"certificate for {dns[0]!r}" if dns else "the certificate"


def _span(days: float) -> str:
    if days < 2:
        hours = max(0, round(days * 24))
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{round(days)} days"
