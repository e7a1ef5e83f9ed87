"""TLS and basic auth for the exporter's own endpoints in tests (``--web.config.file``):
a CA and a server certificate made for the test, web config files, the basic auth header,
one request over TLS that tells whether its session was resumed, and an exporter config
to start with them."""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import bcrypt
import trustme
import yaml

from tests.conftest import ACCOUNT, APP
from tests.procs import LOOPBACK

if TYPE_CHECKING:
    from pathlib import Path

USER = "prometheus"
PASSWORD = "correct horse battery staple"
# Cost 4, the lowest bcrypt allows, keeps the tests fast; the exporter treats all alike.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@dataclass(frozen=True)
class Tls:
    """A CA made for the test and a server certificate it signed for 127.0.0.1."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    ca: trustme.CA

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls(directory: Path, name: str = "server") -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert(LOOPBACK, "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(
        ca_file=directory / f"{name}-ca.crt",
        cert_file=directory / f"{name}.crt",
        key_file=directory / f"{name}.key",
        ca=ca,
    )
    ca.cert_pem.write_to_path(str(tls.ca_file))
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(tls.cert_file), append=i > 0)
    cert.private_key_pem.write_to_path(str(tls.key_file))
    return tls


def write_web_config(path: Path, tls: Tls | None, users: dict[str, str] | None = None) -> Path:
    document: dict[str, object] = {}
    if tls is not None:
        document["tls_server_config"] = {
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
        }
    if users:
        document["basic_auth_users"] = users
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def exporter_config(tmp_path: Path) -> Path:
    """An exporter config to start with a web config: the token inline, one discovering
    app, an API address nobody answers."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "api:\n  base_url: http://127.0.0.1:9/client/v4\n  token: abcdefgh12345678\n"
        f"apps:\n  - account_id: {ACCOUNT}\n    app_id: {APP}\n    discover: true\n",
        encoding="utf-8",
    )
    return path


def client_ca(tmp_path: Path, name: str) -> tuple[trustme.CA, Path]:
    """A client CA, written where a web config's client_ca_file can name it."""
    ca = trustme.CA()
    path = tmp_path / f"{name}.crt"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def requiring(tls: Tls, ca_file: Path) -> str:
    return (
        f"tls_server_config:\n  cert_file: {tls.cert_file}\n  key_file: {tls.key_file}\n"
        f"  client_ca_file: {ca_file}\n  client_auth_type: RequireAndVerifyClientCert\n"
    )


def fetch_over_tls(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None, path: str = "/"
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """One request over a fresh connection, closed cleanly (a session survives only a
    clean close): the answer (empty if refused), the session, whether it was resumed."""
    raw = socket.create_connection((LOOPBACK, port), timeout=5)
    try:
        with context.wrap_socket(raw, server_hostname=LOOPBACK, session=session) as conn:
            reused = bool(conn.session_reused)
            conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
            sess = conn.session
            with contextlib.suppress(ssl.SSLError, OSError):
                conn.unwrap()
            return answer, sess, reused
    except (ssl.SSLError, OSError):
        return b"", None, False
    finally:
        raw.close()
