"""X.509 certificates for the TLS transports, made once per run with the openssl tool.

One CA signs a server certificate (for localhost and 127.0.0.1) and a client certificate;
`server/` and `client/` hold them in the layout QEMU's tls-creds-x509, nbdkit's
--tls-certificates and libnbd's tls-certificates all read (ca-cert.pem and
server-cert.pem/server-key.pem or client-cert.pem/client-key.pem).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SERVER_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\n"
    "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
)
CLIENT_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def ensure_pki(directory: Path) -> Path:
    """The PKI under `directory`/pki, made if missing; returns that directory."""
    pki = directory / "pki"
    if (pki / "client" / "client-key.pem").exists():
        return pki
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-subj", "/O=bench/CN=bench CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=pki)
    for side, extensions in (("server", SERVER_EXTENSIONS), ("client", CLIENT_EXTENSIONS)):
        (pki / f"{side}.ext").write_text(extensions)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{side}-key.pem",
                 "-out", f"{side}.csr", "-subj", f"/O=bench/CN={side}", cwd=pki)
        _openssl("x509", "-req", "-in", f"{side}.csr", "-CA", "ca-cert.pem",
                 "-CAkey", "ca-key.pem", "-CAcreateserial", "-days", "30",
                 "-extfile", f"{side}.ext", "-out", f"{side}-cert.pem", cwd=pki)
        side_dir = pki / side
        side_dir.mkdir(exist_ok=True)
        for name in ("ca-cert.pem", f"{side}-cert.pem", f"{side}-key.pem"):
            (side_dir / name).write_bytes((pki / name).read_bytes())
    return pki
