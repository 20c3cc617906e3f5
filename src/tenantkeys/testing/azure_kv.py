"""A loopback HTTPS Azure Key Vault: get key, wrapkey and unwrapkey with a real RSA key.

The real ``azure-keyvault-keys`` SDK drives it: the server answers the first unauthenticated
request with the bearer challenge the SDK expects, serves a self-signed certificate made at
start-up (SAN 127.0.0.1 / localhost), and has switches to deny (403), fail (503), answer
slowly or report the key disabled.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from azure.core.credentials import AccessToken, AccessTokenInfo
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

#: A fake bearer token: the stand-in accepts it, no identity provider is involved.
TOKEN = "tk-test-token"  # noqa: S105 (the stand-in's fixed token, not a secret)
CHALLENGE = (
    'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000",'
    ' resource="https://vault.azure.net"'
)
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class StaticCredential:
    """A credential that always returns :data:`TOKEN` (no Azure AD involved)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(TOKEN, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(TOKEN, int(time.time()) + 3600)

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class Switches:
    """Failure modes; reset between tests."""

    deny: bool = False
    unavailable: bool = False
    delay_seconds: float = 0.0
    disabled: bool = False

    def reset(self) -> None:
        self.deny = self.unavailable = self.disabled = False
        self.delay_seconds = 0.0


class AzureKeyVaultStandIn:
    """``url`` is ``https://127.0.0.1:PORT``; ``cert_path`` is the CA bundle to trust."""

    def __init__(self, workdir: Path, key_name: str = "tenantkeys") -> None:
        self.key_name = key_name
        self.version = uuid.uuid4().hex
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.switches = Switches()
        self.cert_path, key_path = _self_signed(workdir)
        handler = type("Handler", (_Handler,), {"vault": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    @property
    def kid(self) -> str:
        return f"{self.url}/keys/{self.key_name}/{self.version}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def key_bundle(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "key": {
                "kid": self.kid,
                "kty": "RSA",
                "key_ops": ["wrapKey", "unwrapKey", "encrypt", "decrypt"],
                "n": _b64url(numbers.n.to_bytes(256, "big")),
                "e": _b64url(numbers.e.to_bytes(3, "big")),
            },
            "attributes": {"enabled": not self.switches.disabled, "recoveryLevel": "Purgeable"},
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: clients that time out on purpose drop their connections mid-reply."""


class _Handler(BaseHTTPRequestHandler):
    vault: ClassVar[AzureKeyVaultStandIn]
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read results, not access logs."""

    def _serve(self, method: str) -> None:  # noqa: PLR0912 (one route table, top to bottom)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        vault, switches = self.vault, self.vault.switches
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._reply(401, _error("Unauthorized", "missing bearer token"), CHALLENGE)
        if switches.delay_seconds:
            time.sleep(switches.delay_seconds)
        if switches.unavailable:
            return self._reply(503, _error("ServiceUnavailable", "try again later"))
        if switches.deny:
            return self._reply(403, _error("Forbidden", "caller lacks key permission"))
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 2 or parts[0] != "keys" or parts[1] != vault.key_name:
            return self._reply(404, _error("KeyNotFound", f"key {self.path} not found"))
        if parts[2:3] not in ([], [""], [vault.version]):
            return self._reply(404, _error("KeyNotFound", "version not found"))
        operation = parts[3] if len(parts) > 3 else "get"
        if method == "GET" and operation == "get":
            return self._reply(200, vault.key_bundle())
        if switches.disabled:
            return self._reply(
                403, _error("Forbidden", "Operation is not allowed on a disabled key")
            )
        if method == "POST" and operation in ("wrapkey", "unwrapkey"):
            if body.get("alg") != "RSA-OAEP-256":
                return self._reply(400, _error("BadParameter", "unsupported algorithm"))
            value = _unb64url(body["value"])
            try:
                if operation == "wrapkey":
                    result = vault.private_key.public_key().encrypt(value, _OAEP)
                else:
                    result = vault.private_key.decrypt(value, _OAEP)
            except ValueError:
                return self._reply(400, _error("BadParameter", "Unwrap failed"))
            return self._reply(200, {"kid": vault.kid, "value": _b64url(result)})
        return self._reply(400, _error("BadParameter", f"unsupported {method} {self.path}"))

    def _reply(self, status: int, payload: dict[str, Any], challenge: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if challenge:
            self.send_header("WWW-Authenticate", challenge)
        self.end_headers()
        self.wfile.write(data)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _self_signed(workdir: Path) -> tuple[str, str]:
    """A self-signed CA-flagged certificate for 127.0.0.1 / localhost, written as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "azure-kv.crt", workdir / "azure-kv.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)
