"""A local RFC 3161 time-stamping authority: ``openssl ts -reply`` behind ``http.server``.

Real TSA code (OpenSSL's), real HTTP (``application/timestamp-query`` POSTs), its own CA and a
TSA certificate with the critical ``timeStamping`` EKU RFC 3161 section 2.3 requires. Tokens
carry the TSA certificate; ``ca_pem`` is what a verifier trusts. ``fail_with`` makes it answer
an HTTP error instead (a TSA outage), and ``answered``/``refused`` count what it did, so a
test proves the fault hit the requests it meant to.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import service_missing

CONFIG = """\
[ tsa ]
default_tsa = local_tsa

[ local_tsa ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.55555.1
other_policies = 1.3.6.1.4.1.55555.2
digests = sha256, sha384, sha512
accuracy = millisecs:1
clock_precision_digits = 3
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


@dataclass
class LocalTsa:
    """A running TSA: POST a TimeStampReq to ``url``; trust ``ca_pem`` (also at ``ca_file``)."""

    url: str
    ca_file: Path
    tsa_cert_file: Path
    directory: Path
    fail_with: int | None = None
    answered: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def reply(self, query: bytes) -> bytes:
        """``openssl ts -reply`` for one query; one at a time (the serial file is shared)."""
        with self.lock, tempfile.TemporaryDirectory(dir=self.directory) as scratch:
            query_file, reply_file = Path(scratch, "q.tsq"), Path(scratch, "r.tsr")
            query_file.write_bytes(query)
            done = subprocess.run(
                [
                    "openssl", "ts", "-reply", "-config", str(self.directory / "tsa.cnf"),
                    "-queryfile", str(query_file), "-out", str(reply_file),
                ],
                capture_output=True,
                check=False,
                timeout=30,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(done.stderr.decode(errors="replace"))
            self.answered += 1
            return reply_file.read_bytes()


def make_pki(directory: Path, *, name: str = "tenantkeys test") -> tuple[Path, Path, Path]:
    """A CA and a TSA certificate it issued (critical EKU timeStamping); their PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} TSA root")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    tsa = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} TSA")]))
        .issuer_name(ca_name)
        .public_key(tsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, tsa_file, key_file = directory / "ca.pem", directory / "tsa.pem", directory / "tsa.key"
    ca_file.write_bytes(ca.public_bytes(pem))
    tsa_file.write_bytes(tsa.public_bytes(pem))
    key_file.write_bytes(
        tsa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return ca_file, tsa_file, key_file


def _handler(tsa: LocalTsa) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            query = self.rfile.read(length)
            if tsa.fail_with is not None:
                tsa.refused += 1
                self.send_error(tsa.fail_with)
                return
            if self.headers.get("Content-Type") != "application/timestamp-query":
                self.send_error(415)
                return
            try:
                body = tsa.reply(query)
            except RuntimeError:
                self.send_error(400)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # quiet test output
            pass

    return Handler


def start_tsa(directory: Path) -> tuple[LocalTsa, ThreadingHTTPServer]:
    if shutil.which("openssl") is None:
        service_missing("the openssl command (the local TSA runs `openssl ts -reply`)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, tsa_file, _ = make_pki(directory)
    (directory / "serial").write_text("01\n")
    (directory / "tsa.cnf").write_text(CONFIG.format(dir=directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), None)  # type: ignore[arg-type]
    tsa = LocalTsa(f"http://127.0.0.1:{server.server_port}/tsr", ca_file, tsa_file, directory)
    server.RequestHandlerClass = _handler(tsa)
    threading.Thread(target=server.serve_forever, name="local-tsa", daemon=True).start()
    return tsa, server


@pytest.fixture
def local_tsa(tmp_path: Path) -> Iterator[LocalTsa]:
    """A TSA on a free loopback port for one test; stopped after it."""
    tsa, server = start_tsa(tmp_path / "tsa")
    try:
        yield tsa
    finally:
        server.shutdown()
        server.server_close()
