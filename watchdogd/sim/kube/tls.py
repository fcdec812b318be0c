"""TLS for the simulated API server: a fixed test-only CA and serving certificate, the context.

HTTPS is not optional for faithfulness: kubectl (client-go's clientcmd) only sends a
kubeconfig's credentials to https servers, so token auth with kubectl needs TLS.
"""

from __future__ import annotations

import os
import ssl
import tempfile

__all__ = ["SIM_CA_PEM", "server_context"]

# A fixed, public, test-only CA and server certificate (EC P-256, valid 2025-2125, SANs
# 127.0.0.1, localhost, kubernetes, kubernetes.default.svc).  HTTPS is not optional for
# faithfulness: kubectl (client-go's clientcmd) only sends a kubeconfig's credentials to https
# servers, so token auth with kubectl needs TLS.  Never use these anywhere but the simulator.
SIM_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBbzCCARagAwIBAgIUe+lTQ13ZGNpPYWh55FpagKBAVPAwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXNpbS1jYTAgFw0yNTAxMDEwMDAwMDBaGA8yMTI1MDEw
MTAwMDAwMFowFTETMBEGA1UEAwwKa3ViZXNpbS1jYTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABMwtNOjxfB9MlrFIqQiLzi0gHC0yQN53Eb/AbOf1LhB24wXc95qp
m37kz1kyEhTfdSy97lRsY6tx1i/YqosAvLGjQjBAMA8GA1UdEwEB/wQFMAMBAf8w
DgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBTDBIdv3e1Pfg8ZqpIts5BRtMMdLDAK
BggqhkjOPQQDAgNHADBEAiBCxGpwFTYpgaNuC+OnHi3fJwJLyAMJ3S36Stn+NiMA
FgIgEspj+r/3U0xu+qaRjNzqkxLzwouOL/yfLxNXj7Xo/KI=
-----END CERTIFICATE-----
"""
_SIM_CERT_PEM = """\
-----BEGIN CERTIFICATE-----
MIIByTCCAXCgAwIBAgIUBoEq8B8obgtuOArveKNAM1/xVD8wCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXNpbS1jYTAgFw0yNTAxMDEwMDAwMDBaGA8yMTI1MDEw
MTAwMDAwMFowGTEXMBUGA1UEAwwOa3ViZS1hcGlzZXJ2ZXIwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAARQzXL3fw7YeVWdSC8OS1Unih6A3N3lNq18Q30UDb+/F58/
Hsc3LORG90+oh1az2liJdk8kpgrveK5L04wETY3lo4GXMIGUMAwGA1UdEwEB/wQC
MAAwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMD4GA1UdEQQ3
MDWCCWxvY2FsaG9zdIIKa3ViZXJuZXRlc4IWa3ViZXJuZXRlcy5kZWZhdWx0LnN2
Y4cEfwAAATAfBgNVHSMEGDAWgBTDBIdv3e1Pfg8ZqpIts5BRtMMdLDAKBggqhkjO
PQQDAgNHADBEAiBj6PnJFA3eOqg2qpwnrVKwFE+tENt1maVF0jNsW9V3KQIgbv42
yV3fg0k6IXz5JsnChnLbOfWAGlqK645l23iYszI=
-----END CERTIFICATE-----
"""
_SIM_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+kqlGpPXAhX6VaF7
cPdIvJxV4b3MunxW8e6L/JjHN/KhRANCAARQzXL3fw7YeVWdSC8OS1Unih6A3N3l
Nq18Q30UDb+/F58/Hsc3LORG90+oh1az2liJdk8kpgrveK5L04wETY3l
-----END PRIVATE KEY-----
"""


def server_context(cert_files: tuple[str, str | None] | None = None) -> ssl.SSLContext:
    """The server-side context: ``cert_files`` (cert, key), else the built-in certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(["http/1.1"])  # Go would otherwise try HTTP/2
    if cert_files is not None:
        ctx.load_cert_chain(*cert_files)
        return ctx
    with tempfile.TemporaryDirectory(prefix="kubesim-") as tmp:  # load_cert_chain reads files
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        with open(cert, "w", encoding="ascii") as fh:
            fh.write(_SIM_CERT_PEM + SIM_CA_PEM)
        with open(key, "w", encoding="ascii") as fh:
            fh.write(_SIM_KEY_PEM)
        ctx.load_cert_chain(cert, key)
    return ctx
