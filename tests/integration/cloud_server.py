"""Test helpers for the cloud server: tokens, certificates, and the launcher (re-exported)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def write_tokens(path: Path) -> Path:
    path.write_text(f"# accepted tokens\n\n{TOKEN}\nanother-token\n")
    return path


def make_certs(folder: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    key_opts = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    openssl(
        "req", "-x509", *key_opts, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=autoglm test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    exts = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in exts.items():
        (folder / f"{name}.ext").write_text(ext)
        openssl("req", *key_opts, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=autoglm test {name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
                "-extfile", f"{name}.ext")  # fmt: skip
    names = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    return {n: folder / n for n in names}
