"""X.509 certificates for the TLS transports, made once per run with the openssl tool.

One CA signs a server certificate (for localhost and 127.0.0.1); `server/` holds
ca-cert.pem, server-cert.pem and server-key.pem, the layout QEMU's tls-creds-x509 and
nbdkit's --tls-certificates read.  Clients do not check the server's certificate and
servers ask none of clients (verify-peer=off): libnbd reads certificate files named in a
URI only when its caller allows it, which fio's nbd engine does not.  The sessions are
encrypted all the same, which is what the figures measure.
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


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def ensure_pki(directory: Path) -> Path:
    """The PKI under `directory`/pki, made if missing; returns that directory."""
    pki = directory / "pki"
    if (pki / "server" / "server-key.pem").exists():
        return pki
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-subj", "/O=bench/CN=bench CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=pki)
    (pki / "server.ext").write_text(SERVER_EXTENSIONS)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server-key.pem",
             "-out", "server.csr", "-subj", "/O=bench/CN=localhost", cwd=pki)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-days", "30", "-extfile", "server.ext",
             "-out", "server-cert.pem", cwd=pki)
    server = pki / "server"
    server.mkdir(exist_ok=True)
    for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem"):
        (server / name).write_bytes((pki / name).read_bytes())
    return pki
