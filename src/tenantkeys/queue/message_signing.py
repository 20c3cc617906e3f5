"""Producer authentication: Celery message signing, shared by producers, workers and Beat.

With ``TENANTKEYS_MESSAGE_SIGNING=true`` every task message is serialized by Celery's ``auth``
serializer: the JSON body plus a signature by this process's key and the id of its
certificate. A worker accepts only such messages, signed by a certificate in its store; an
unsigned or forged one is refused before any task runs (see ``workers/consumer.py``).
Results and events stay JSON: they carry no work to do.

The certificate that signed a message names its producer: :func:`signer_subject` reads it from
a message the serializer has verified (``workers/producers.py`` checks producer scopes by it).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from pathlib import Path

from celery import Celery
from celery.exceptions import SecurityError
from celery.security.certificate import Certificate, CertStore
from celery.security.key import PrivateKey
from celery.security.serialization import DEFAULT_SEPARATOR, SecureSerializer
from cryptography import x509
from kombu.serialization import loads, registry

from tenantkeys.config import Settings
from tenantkeys.queue.config import BINARY_SERIALIZER

log = logging.getLogger(__name__)

#: Celery's serializer name (content type ``application/data``) for signed messages.
SIGNED = "auth"
#: The same envelope over a msgpack body (a compact sign_batch's raw payloads); a worker reads
#: both with one decoder, which takes the body's content type from the signed envelope.
SIGNED_BINARY = "auth-msgpack"
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
        #: The subject (RFC 4514) of each certificate, by Celery's id (issuer and serial).
        self._subjects: dict[str, str] = {}
        self._certs = self._load()

    def _load(self) -> dict[str, Certificate]:
        certs: dict[str, Certificate] = {}
        subjects: dict[str, str] = {}
        ambiguous: set[str] = set()
        for path in sorted(self.directory.glob("*.pem")):
            try:
                pem = path.read_text()
                cert = Certificate(pem)
                subject = x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()
            except (OSError, ValueError, SecurityError) as exc:
                log.warning("trusted certificate %s not loaded (%s)", path.name, exc)
                continue
            if cert.has_expired():
                log.warning("trusted certificate %s has expired; ignored", path.name)
                continue
            cert_id = str(cert.get_id())
            if cert_id in subjects and subjects[cert_id] != subject:
                # Celery finds a signer by issuer and serial: two subjects under one id would
                # make the producer of a message ambiguous, so neither is trusted.
                log.error("trusted certificates share issuer and serial %s; both ignored", cert_id)
                ambiguous.add(cert_id)
            certs[cert_id] = cert
            subjects[cert_id] = subject
        for cert_id in ambiguous:
            del certs[cert_id], subjects[cert_id]
        self._subjects = subjects
        return certs

    def subject(self, cert_id: str) -> str | None:
        """The subject of a trusted certificate, by Celery's certificate id; None if unknown."""
        if cert_id not in self._subjects:
            with self._lock:
                self._certs = self._load()
        return self._subjects.get(cert_id) if cert_id in self._certs else None

    def __getitem__(self, cert_id: str | bytes) -> Certificate:
        try:
            return super().__getitem__(cert_id)
        except SecurityError:
            # Unknown signer: maybe a certificate added since; a forged one stays unknown.
            with self._lock:
                self._certs = self._load()
            return super().__getitem__(cert_id)


#: The bodies a signed envelope may carry: JSON, and msgpack (a compact sign_batch).
SIGNED_BODY_TYPES = frozenset({"application/json", "application/x-msgpack"})


class SignedJobs(SecureSerializer):  # type: ignore[misc]
    """Celery's ``auth`` serializer, refusing every inner body but JSON and msgpack.

    The envelope names its body's content type, and Celery's ``deserialize`` loads whatever it
    names with ``force=True``: a holder of a trusted certificate (a producer scoped to one
    tenant, say) could have a worker unpickle its body. Here the signature is checked as
    Celery does, then the content type, then the body is loaded. Built on Celery's
    ``_unpack``, ``_cert_store`` and ``_digest`` (checked against Celery 5.6;
    tests/unit/test_message_signing.py pins them).
    """

    def deserialize(self, data: bytes | str) -> object:
        try:
            payload = self._unpack(data)
            body: bytes = payload["body"]
            self._cert_store[payload["signer"]].verify(body, payload["signature"], self._digest)
        except SecurityError:
            raise
        except Exception as exc:  # as Celery's reraise_errors: any failure is a SecurityError
            raise SecurityError(f"Unable to deserialize: {exc!r}") from exc
        content_type = payload["content_type"]
        if content_type not in SIGNED_BODY_TYPES:
            raise SecurityError(
                f"a signed message body of content type {content_type[:64]!r} is refused: "
                "only JSON and msgpack are loaded"
            )
        return loads(body, content_type, payload["content_encoding"], force=True)  # type: ignore[no-untyped-call]


_trusted: TrustedCertificates | None = None
#: Base64 characters (a multiple of 4) decoded to find a signed message's signer id.
_HEAD = 4096


def signer_subject(body: bytes | str) -> str | None:
    """The subject (RFC 4514) of the certificate that signed ``body``, a signed message body.

    Call it only for a body the ``auth`` serializer has verified (the message decoded): the
    signer it names is then the one whose certificate checked the signature. None when
    message signing is off here, or the body or its signer is unknown.
    """
    if _trusted is None:
        return None
    data = body.encode() if isinstance(body, str) else body
    try:
        # Celery's envelope (celery.security.serialization, checked against Celery 5.6):
        # base64 of b64(signer) SEP b64(signature) SEP content type SEP encoding SEP body.
        # The signer comes first: decode a head of the envelope, not a whole payload.
        head = base64.b64decode(data[:_HEAD])
        if DEFAULT_SEPARATOR not in head:
            head = base64.b64decode(data)
        signer = base64.b64decode(head.split(DEFAULT_SEPARATOR, 1)[0]).decode()
    except (binascii.Error, ValueError):
        return None
    return _trusted.subject(signer)


def binary_serializer(app: Celery) -> str:
    """The serializer of a msgpack job from ``app``: signed like its JSON jobs, when they are."""
    return SIGNED_BINARY if app.conf.task_serializer == SIGNED else BINARY_SERIALIZER


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
    global _trusted  # noqa: PLW0603 - the one store of this process, read by signer_subject
    _trusted = TrustedCertificates(store)
    # One decoder reads both (it takes the body's type from the envelope); registered last,
    # "auth" stays the name of the content type.
    for name, inner in ((SIGNED_BINARY, BINARY_SERIALIZER), (SIGNED, "json")):
        signed = SignedJobs(
            PrivateKey(key.read_text()), Certificate(cert.read_text()), _trusted, DIGEST, inner
        )
        registry.register(  # type: ignore[no-untyped-call]
            name,
            signed.serialize,
            signed.deserialize,
            content_type=SIGNED_CONTENT_TYPE,
            content_encoding="utf-8",
        )
