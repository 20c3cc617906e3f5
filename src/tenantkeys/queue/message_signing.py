"""Producer authentication: Celery message signing, shared by producers, workers and Beat.

With ``TENANTKEYS_MESSAGE_SIGNING=true`` every task message is serialized by Celery's ``auth``
serializer: the JSON body plus a signature by this process's key and the id of its
certificate. A worker accepts only such messages, signed by a certificate in its store; an
unsigned or forged one is refused before any task runs (see ``workers/consumer.py``).
Results and events stay JSON: they carry no work to do.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from celery import Celery
from celery.exceptions import SecurityError
from celery.security.certificate import Certificate, CertStore
from celery.security.key import PrivateKey
from celery.security.serialization import SecureSerializer
from kombu.serialization import registry

from tenantkeys.config import Settings

log = logging.getLogger(__name__)

#: Celery's serializer name (content type ``application/data``) for signed messages.
SIGNED = "auth"
SIGNED_CONTENT_TYPE = "application/data"
DIGEST = "sha256"


class TrustedCertificates(CertStore):  # type: ignore[misc]
    """The ``*.pem`` certificates of a directory, re-read when a message names an unknown one.

    So a producer's certificate copied into the store is trusted without restarting the
    workers. Expired certificates are skipped (Celery's own store would refuse to start).
    """

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self._lock = threading.Lock()
        self._certs = self._load()

    def _load(self) -> dict[str, Certificate]:
        certs: dict[str, Certificate] = {}
        for path in sorted(self.directory.glob("*.pem")):
            try:
                cert = Certificate(path.read_text())
            except (OSError, SecurityError) as exc:
                log.warning("trusted certificate %s not loaded (%s)", path.name, exc)
                continue
            if cert.has_expired():
                log.warning("trusted certificate %s has expired; ignored", path.name)
                continue
            certs[str(cert.get_id())] = cert
        return certs

    def __getitem__(self, cert_id: str | bytes) -> Certificate:
        try:
            return super().__getitem__(cert_id)
        except SecurityError:
            # Unknown signer: maybe a certificate added since; a forged one stays unknown.
            with self._lock:
                self._certs = self._load()
            return super().__getitem__(cert_id)


def setup_message_signing(app: Celery, settings: Settings) -> None:
    """Make ``app`` sign what it publishes and accept only signed task messages.

    Call after ``app.conf.update(celery_config(settings))``; does nothing when message
    signing is off; raises :class:`ConfigurationError` if its files are missing.
    """
    files = settings.message_signing_files()
    if files is None:
        return
    key, cert, store = files
    app.conf.update(
        task_serializer=SIGNED,
        accept_content=[SIGNED],
        # Results are read by producers, which hold no trusted store of worker certificates.
        result_serializer="json",
        result_accept_content=["json"],
        security_digest=DIGEST,
    )
    # Celery's checks (task_serializer/accept_content) and the serializer whitelist.
    app.setup_security(
        allowed_serializers=["json"],
        key=str(key),
        cert=str(cert),
        store=str(store / "*.pem"),
        digest=DIGEST,
        serializer="json",
    )
    # Then the same "auth" serializer over a store that picks up added certificates.
    # Authenticity: only a body signed by a key whose certificate is in the store decodes.
    signed = SecureSerializer(
        PrivateKey(key.read_text()),
        Certificate(cert.read_text()),
        TrustedCertificates(store),
        DIGEST,
        serializer="json",
    )
    registry.register(  # type: ignore[no-untyped-call]
        SIGNED,
        signed.serialize,
        signed.deserialize,
        content_type=SIGNED_CONTENT_TYPE,
        content_encoding="utf-8",
    )
