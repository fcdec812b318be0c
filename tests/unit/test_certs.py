"""The certs check: settings, targets, detect() on records, and the tls source on local files.

Certificates are generated here (valid, expiring in 5 and 20 days, expired, wrong
hostname, self-signed) and stored in files and kubeconfigs; secrets are in the scenario
test, served certificates in tests/integration/test_tls_endpoints.py.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from watchdogd.checks import REGISTRY, certs
from watchdogd.config import Config
from watchdogd.model import Need, Severity, Snapshot, SourceError
from watchdogd.sim.tls import GARBAGE_PEM, CertAuthority, Issued
from watchdogd.sources.tls import TlsSource, parse_certificates

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority(now=NOW)


def config(**section: Any) -> Config:
    return Config.model_validate({
        "clusters": {"js2": {"kubeconfig": "/nonexistent"}, "mvu": {"in_cluster": True}},
        "checks": {"certs": section},
    })


def record(days: float | None = 90, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"source": "file", "path": "/etc/ssl/site.crt",
                            "location": "/etc/ssl/site.crt", "index": 0,
                            "subject": "CN=site.example.org", "issuer": "CN=ca",
                            "dns_names": ["site.example.org"], "ip_addresses": [],
                            "self_signed": False, "sha256": "ab", "serial": "1"}
    if days is not None:
        base["not_after"] = (NOW + timedelta(days=days)).isoformat()
    base.update(extra)
    return base


def run(*records: dict[str, Any] | list[dict[str, Any]], target: str = "files",
        **check: Any) -> list[Any]:
    keys = tuple(f"k{i}" for i in range(len(records)))
    snapshot = Snapshot("certs", target, dict(zip(keys, records, strict=True)),
                        settings=certs.TargetSettings(certs.Settings(**check), keys))
    return certs.detect(snapshot, NOW).findings


def kinds(findings: list[Any]) -> list[tuple[str, str, str]]:
    return [(f.kind, f.subject, f.severity.label) for f in findings]


# -- settings and targets -------------------------------------------------------------------


def test_registered_with_its_kinds() -> None:
    assert REGISTRY["certs"].kinds == ("cert-expiring", "cert-hostname-mismatch",
                                       "cert-unreadable")


def test_defaults_watch_nothing() -> None:
    assert REGISTRY["certs"].targets_for(config()) == []
    s = certs.Settings()
    assert (s.warn_days, s.critical_days, s.interval) == (30, 7, timedelta(hours=6))


@pytest.mark.parametrize("section, message", [
    ({"warn_days": 5, "critical_days": 7}, "critical_days must not exceed warn_days"),
    ({"endpoints": ["http://hub.example.org"]}, "not an https endpoint"),
    ({"endpoints": [{"url": "https://hub", "sni": "x"}]}, "Extra inputs"),
    ({"warn_day": 3}, "Extra inputs"),
])
def test_bad_settings_are_rejected(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        certs.Settings.model_validate(section)


def test_targets_group_files_endpoints_and_clusters() -> None:
    cfg = config(files=["/etc/kubernetes/pki"], kubeconfigs=["/etc/kubernetes/admin.conf"],
                 endpoints=["https://hub.example.org", "https://10.0.0.7:6443",
                            {"url": "https://10.0.0.8", "server_name": "jupyter.example.org"}],
                 secrets_clusters=["js2", "js2"], api_servers=["js2", "mvu"], timeout="3s")
    targets = {t.name: t for t in REGISTRY["certs"].targets_for(cfg)}
    assert sorted(targets) == ["10.0.0.7:6443", "files", "hub.example.org",
                               "js2", "jupyter.example.org", "mvu"]
    assert [n.call for n in targets["files"].needs] == ["files", "kubeconfig"]
    assert targets["js2"].needs == (
        Need.of("secrets", "tls", "js2", "secrets"),
        Need.of("api_server", "tls", "js2", "api_server", timeout=3.0))
    sni = targets["jupyter.example.org"].needs[0]
    assert dict(sni.params) == {"url": "https://10.0.0.8", "server_name": "jupyter.example.org",
                                "timeout": 3.0}
    assert targets["files"].settings.keys == ("file:/etc/kubernetes/pki",
                                              "kubeconfig:/etc/kubernetes/admin.conf")


# -- detect on records ------------------------------------------------------------------------


def test_valid_certificate_is_quiet() -> None:
    assert run(record(90)) == []


@pytest.mark.parametrize("days, severity, words", [
    (30, "warning", "expires in 30 days"),
    (20, "warning", "expires in 20 days"),
    (7.5, "warning", "expires in 8 days"),
    (7, "critical", "expires in 7 days"),
    (5, "critical", "expires in 5 days"),
    (0.5, "critical", "expires in 12 hours"),
    (-3, "critical", "expired 3 days ago"),
])
def test_expiry_thresholds(days: float, severity: str, words: str) -> None:
    [finding] = run(record(days))
    assert (finding.kind, finding.severity.label) == ("cert-expiring", severity)
    assert words in finding.message
    assert finding.subject == "/etc/ssl/site.crt"
    assert finding.evidence["days_left"] == round(days, 2)
    assert finding.action is None  # notify only, always


def test_thresholds_follow_settings() -> None:
    assert run(record(40), warn_days=45, critical_days=10)[0].severity is Severity.WARNING
    assert run(record(9), warn_days=45, critical_days=10)[0].severity is Severity.CRITICAL
    assert run(record(20), warn_days=14, critical_days=3) == []


def test_unreadable_record_names_the_problem() -> None:
    [finding] = run([{"source": "secret", "cluster": "js2", "namespace": "jhub",
                      "name": "hub-tls", "location": "jhub/hub-tls", "index": 0,
                      "annotations": {}, "error": "the secret has no tls.crt"}], target="js2")
    assert kinds([finding]) == [("cert-unreadable", "jhub/hub-tls", "warning")]
    assert "TLS secret jhub/hub-tls in cluster js2" in finding.message
    assert "no tls.crt" in finding.message


def test_chain_members_get_their_own_subject() -> None:
    findings = run([record(200), record(10, index=1, subject="CN=R11", issuer="CN=ISRG")])
    assert kinds(findings) == [("cert-expiring", "/etc/ssl/site.crt#1", "warning")]
    assert "issuer certificate in the chain" in findings[0].evidence["renew"]


def endpoint(days: float = 90, hostname: str = "hub.example.org",
             **extra: Any) -> dict[str, Any]:
    return record(days, source="endpoint", url=f"https://{hostname}", host=hostname,
                  port=443, server_name=hostname, hostname=hostname,
                  location=f"{hostname}:443", **extra)


def test_endpoint_hostname_mismatch_and_expiry_are_both_reported() -> None:
    findings = run(endpoint(5, dns_names=["other.example.org"]), target="hub.example.org")
    assert kinds(findings) == [("cert-expiring", "hub.example.org:443", "critical"),
                               ("cert-hostname-mismatch", "hub.example.org:443", "critical")]
    assert "does not cover 'hub.example.org'" in findings[1].message
    assert "other.example.org" in findings[1].message


def test_self_signed_endpoint_with_the_right_name_is_fine() -> None:
    assert run(endpoint(dns_names=["hub.example.org"], self_signed=True,
                        issuer="CN=hub.example.org")) == []


def test_files_are_not_judged_for_hostnames() -> None:
    assert run(record(dns_names=["elsewhere.org"])) == []


@pytest.mark.parametrize("host, dns, ips, ok", [
    ("hub.example.org", ["hub.example.org"], [], True),
    ("HUB.example.org.", ["hub.EXAMPLE.org"], [], True),
    ("hub.example.org", ["*.example.org"], [], True),
    ("a.hub.example.org", ["*.example.org"], [], False),
    ("example.org", ["*.example.org"], [], False),
    ("hub.example.org", ["*.*.org"], [], False),
    ("hub.example.org", [], [], False),
    ("10.0.0.7", ["10.0.0.7"], [], False),  # an IP must be an IP SAN
    ("10.0.0.7", [], ["10.0.0.7"], True),
    ("::1", [], ["0:0:0:0:0:0:0:1"], True),
    ("10.0.0.8", [], ["10.0.0.7"], False),
])
def test_hostname_matching(host: str, dns: list[str], ips: list[str], ok: bool) -> None:
    assert certs.hostname_matches(host, dns, ips) is ok


@pytest.mark.parametrize("rec, hint", [
    (record(path="/etc/kubernetes/pki/apiserver.crt"), "`kubeadm certs renew apiserver`"),
    (record(path="/etc/kubernetes/pki/etcd/server.crt"), "`kubeadm certs renew etcd-server`"),
    (record(path="/etc/kubernetes/pki/etcd/ca.crt"), "kubeadm does not renew CAs"),
    (record(path="/var/lib/kubelet/pki/kubelet-client-current.pem"), "rotateCertificates"),
    (record(path="/srv/certs/x.crt"), "replace /srv/certs/x.crt"),
    (record(source="kubeconfig", path="/etc/kubernetes/admin.conf", entry="user:admin"),
     "`kubeadm certs renew admin.conf`"),
    (record(source="kubeconfig", path="/etc/kubernetes/kubelet.conf", entry="user:node"),
     "kubelet renews"),
    (record(source="kubeconfig", path="/home/me/.kube/config", entry="cluster:js2"),
     "cluster CA"),
    (record(source="secret", namespace="jhub", name="hub-tls",
            annotations={"cert-manager.io/certificate-name": "hub"}),
     "cmctl renew -n jhub hub"),
    (record(source="secret", namespace="jhub", name="proxy-public-tls-acme", annotations={}),
     "autohttps"),
    (record(source="secret", namespace="jhub", name="manual", annotations={}),
     "kubectl -n jhub create secret tls manual"),
    (record(source="api-server", cluster="js2", host="10.0.0.1", port=6443),
     "`kubeadm certs renew apiserver`"),
    (endpoint(), "the TLS secret its ingress serves"),
])
def test_every_finding_says_how_to_renew(rec: dict[str, Any], hint: str) -> None:
    assert hint in certs.renew_hint(rec)
    findings = run(rec | {"not_after": (NOW + timedelta(days=3)).isoformat()})
    [finding] = [f for f in findings if f.kind == "cert-expiring"]
    assert hint in finding.message
    assert finding.evidence["renew"] == certs.renew_hint(rec)


# -- the tls source on files and kubeconfigs --------------------------------------------------


def source() -> TlsSource:
    return TlsSource("local", config())


def test_files_in_a_kubeadm_like_directory(tmp_path: Path, ca: CertAuthority) -> None:
    pki = tmp_path / "pki"
    ca.issue("kube-apiserver", days=5).write(pki, "apiserver")
    ca.issue("front-proxy-client", days=20).write(pki, "front-proxy-client")
    ca.issue("kube-etcd", days=-2).write(pki / "etcd", "server")
    ca.issue("kube-ca", days=3000, self_signed=True).write(pki, "ca")
    (pki / "garbage.crt").write_bytes(GARBAGE_PEM)
    (pki / "only-a-key.pem").write_bytes(ca.issue("x").key_pem)  # skipped: no certificate
    (pki / "notes.txt").write_text("not a certificate, not looked at")
    records = source().files(str(pki))
    by_path = {Path(r["path"]).relative_to(pki).as_posix(): r for r in records}
    assert sorted(by_path) == ["apiserver.crt", "ca.crt", "etcd/server.crt",
                               "front-proxy-client.crt", "garbage.crt"]
    assert by_path["ca.crt"]["self_signed"] is True
    assert by_path["apiserver.crt"]["self_signed"] is False
    assert "does not decode" in by_path["garbage.crt"]["error"]
    assert not any("key" in k for r in records for k in r if k != "sha256")  # no key material
    findings = run(records)
    got = {(f.kind, Path(f.subject).name, f.severity.label) for f in findings}
    assert got == {("cert-expiring", "apiserver.crt", "critical"),
                   ("cert-expiring", "front-proxy-client.crt", "warning"),
                   ("cert-expiring", "server.crt", "critical"),
                   ("cert-unreadable", "garbage.crt", "warning")}
    apiserver = next(f for f in findings if f.subject.endswith("apiserver.crt"))
    assert "`kubeadm certs renew apiserver`" in apiserver.message
    etcd = next(f for f in findings if f.subject.endswith("/etcd/server.crt"))
    assert "expired 2 days ago" in etcd.message
    assert "etcd-server" in etcd.message


def test_single_files_chains_der_and_symlinks(tmp_path: Path, ca: CertAuthority) -> None:
    leaf = ca.issue("hub.example.org", days=20)
    chain = tmp_path / "fullchain.pem"
    chain.write_bytes(leaf.cert_pem + ca.cert_pem)
    [first, second] = source().files(str(chain))
    assert (first["index"], second["index"]) == (0, 1)
    assert second["is_ca"] is True
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = tmp_path / "der.crt"
    der.write_bytes(x509.load_pem_x509_certificate(leaf.cert_pem).public_bytes(
        serialization.Encoding.DER))
    assert source().files(str(der))[0]["dns_names"] == ["hub.example.org"]
    pki = tmp_path / "kubelet"
    pki.mkdir()
    (pki / "kubelet-client-2026-11-01.pem").write_bytes(leaf.cert_pem + leaf.key_pem)
    (pki / "kubelet-client-current.pem").symlink_to("kubelet-client-2026-11-01.pem")
    [only] = source().files(str(pki))
    assert only["location"].endswith("kubelet-client-current.pem")  # the stable name


@pytest.mark.parametrize("content, error", [
    (GARBAGE_PEM, "a PEM certificate block does not decode"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no PEM certificate"),
    (b"", "empty"),
    (b"\x00\x01binary junk", "neither PEM nor a DER certificate"),
])
def test_bad_pem_is_an_unreadable_record(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "bad.crt"
    path.write_bytes(content)
    [rec] = source().files(str(path))
    assert error in rec["error"]
    with pytest.raises(ValueError, match=error.split(maxsplit=1)[0]):
        parse_certificates(content)


def test_a_configured_path_that_is_missing_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        source().files(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="no such file"):
        source().kubeconfig(str(tmp_path / "nope.conf"))


def kubeconfig(path: Path, users: list[dict[str, Any]], ca_pem: bytes | None = None) -> str:
    cluster: dict[str, Any] = {"server": "https://10.0.0.1:6443"}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "js2", "cluster": cluster}],
        "users": users, "contexts": [], "current-context": ""}))
    return str(path)


def test_kubeconfig_inline_and_referenced_client_certificates(tmp_path: Path,
                                                              ca: CertAuthority) -> None:
    admin = ca.issue("kubernetes-admin", days=5, dns=[], client=True)
    node = ca.issue("system:node:n1", days=20, dns=[], client=True)
    node.write(tmp_path / "pki", "node")
    path = kubeconfig(tmp_path / "admin.conf", [
        {"name": "admin", "user": {
            "client-certificate-data": base64.b64encode(admin.cert_pem).decode(),
            "client-key-data": base64.b64encode(admin.key_pem).decode()}},
        {"name": "node", "user": {"client-certificate": "pki/node.crt",
                                  "client-key": "pki/node.key"}},
        {"name": "gone", "user": {"client-certificate": "/nonexistent/x.crt"}},
        {"name": "junk", "user": {"client-certificate-data": "%%% not base64"}},
        {"name": "token", "user": {"token": "abc"}},
    ], ca_pem=ca.cert_pem)
    records = source().kubeconfig(path)
    by_entry = {r["entry"]: r for r in records}
    assert sorted(by_entry) == ["cluster:js2", "user:admin", "user:gone", "user:junk",
                                "user:node"]
    assert by_entry["user:node"]["file"] == str(tmp_path / "pki" / "node.crt")
    assert "No such file" in by_entry["user:gone"]["error"]
    assert "not base64" in by_entry["user:junk"]["error"]
    assert all("key" not in json.dumps({k: v for k, v in r.items() if k != "sha256"}).lower()
               or "key" in r.get("error", "") for r in records)
    findings = run(records)
    assert {(f.kind, f.subject.rsplit("#", 1)[-1], f.severity.label) for f in findings} == {
        ("cert-expiring", "user:admin", "critical"), ("cert-expiring", "user:node", "warning"),
        ("cert-unreadable", "user:gone", "warning"), ("cert-unreadable", "user:junk", "warning")}
    admin_finding = next(f for f in findings if f.subject.endswith("user:admin"))
    assert "`kubeadm certs renew admin.conf`" in admin_finding.message


def test_kubeconfig_that_is_not_yaml_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "broken.conf"
    path.write_text("[ this is : not yaml")
    [rec] = source().kubeconfig(str(path))
    assert rec["error"].startswith("not a kubeconfig")


def test_generated_certificates_parse_back(ca: CertAuthority) -> None:
    issued: Issued = ca.issue("hub.example.org", days=5, ips=["10.0.0.7"])
    [cert] = parse_certificates(issued.cert_pem)
    assert cert.not_valid_after_utc == NOW + timedelta(days=5)
    wrong = ca.issue("hub.example.org", dns=["other.example.org"])
    from watchdogd.sources.tls import certificate_record

    assert certificate_record(parse_certificates(wrong.cert_pem)[0])["dns_names"] == [
        "other.example.org"]
