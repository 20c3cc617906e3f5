"""Data encryption under a tenant's encryption key: the ciphertext format and its AEAD.

A ciphertext is ``TKD1 | len(kid) | kid | nonce (12) | AES-256-GCM body``. It names the key
version's kid, so it decrypts after any number of rotations with the version that made it.
The associated data binds the tenant and the kid along with the caller's own data, so a
ciphertext moved to another tenant (or re-labelled with another kid) does not open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenantkeys.errors import ErrorCode, IntegrityError, InvalidRequest
from tenantkeys.providers import canonical_context

#: JWE-style name of the algorithm (RFC 7518 §5.3).
ALGORITHM = "A256GCM"
_MAGIC = b"TKD1"
_NONCE_BYTES = 12


@dataclass(frozen=True)
class DataCiphertext:
    """A parsed ciphertext: which key version made it, its nonce and sealed body."""

    kid: str
    nonce: bytes
    body: bytes


def seal(
    secret: bytes, tenant_id: str, kid: str, plaintext: bytes, associated_data: bytes = b""
) -> bytes:
    """``plaintext`` sealed under ``secret`` (the version ``kid`` of ``tenant_id``)."""
    nonce = os.urandom(_NONCE_BYTES)
    body = AESGCM(secret).encrypt(nonce, bytes(plaintext), _aad(tenant_id, kid, associated_data))
    encoded_kid = kid.encode()
    return _MAGIC + bytes([len(encoded_kid)]) + encoded_kid + nonce + body


def parse(ciphertext: bytes) -> DataCiphertext:
    """The parts of a ciphertext; ``TK-INVALID-ENCODING`` when it is not one of ours."""
    try:
        if not ciphertext.startswith(_MAGIC):
            raise ValueError
        size = ciphertext[len(_MAGIC)]
        start = len(_MAGIC) + 1
        kid = ciphertext[start : start + size].decode("ascii")
        nonce = ciphertext[start + size : start + size + _NONCE_BYTES]
        body = ciphertext[start + size + _NONCE_BYTES :]
    except (ValueError, IndexError, UnicodeDecodeError):
        raise InvalidRequest(
            "not a tenantkeys ciphertext", code=ErrorCode.INVALID_ENCODING
        ) from None
    return DataCiphertext(kid, nonce, body)


def open_data(
    secret: bytes, tenant_id: str, parsed: DataCiphertext, associated_data: bytes = b""
) -> bytes:
    """The plaintext of ``parsed``; ``TK-DECRYPT-FAILED`` when it does not open."""
    try:
        return AESGCM(secret).decrypt(
            parsed.nonce, parsed.body, _aad(tenant_id, parsed.kid, associated_data)
        )
    except InvalidTag:
        raise IntegrityError(
            "ciphertext does not open: wrong tenant, wrong associated data, or tampered",
            code=ErrorCode.DECRYPT_FAILED,
        ) from None


def _aad(tenant_id: str, kid: str, associated_data: bytes) -> bytes:
    # Tenant binding: the tenant and kid take part in the AEAD along with the caller's data.
    return (
        canonical_context({"tenant_id": tenant_id, "kid": kid}) + b"\x00" + bytes(associated_data)
    )
