"""Envelope encryption of key secrets, bound to their tenant context.

A secret (Ed25519 seed, ES256 scalar, AES key) is sealed with AES-256-GCM under a fresh data
key, with associated data = the canonical context ``{tenant_id, purpose, version, kid}``. The
data key is wrapped by the KMS provider under the same context. Copying a wrapped secret into
another tenant's row therefore fails to open on every provider, even those (Azure RSA) whose
wrapping carries no context of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenantkeys.errors import IntegrityError
from tenantkeys.providers import Context, KmsProvider, canonical_context

_MAGIC = b"TKE1"
_NONCE = 12


@dataclass(frozen=True)
class Sealed:
    """A sealed secret and its wrapped data key; safe to store and to cache in Redis."""

    wrapped_secret: bytes = field(repr=False)
    wrapped_data_key: bytes = field(repr=False)


def seal(secret: bytes | bytearray, context: Context, provider: KmsProvider) -> Sealed:
    """Seal ``secret`` under a fresh data key wrapped by ``provider``."""
    data_key = provider.generate_data_key(context)
    try:
        nonce = os.urandom(_NONCE)
        # Context binding: the AES-GCM associated data is the canonical tenant context.
        body = AESGCM(bytes(data_key.plaintext)).encrypt(
            nonce, bytes(secret), canonical_context(context)
        )
    finally:
        data_key.wipe()
    return Sealed(wrapped_secret=_MAGIC + nonce + body, wrapped_data_key=data_key.wrapped)


def open_sealed(sealed: Sealed, context: Context, provider: KmsProvider) -> bytearray:
    """The plaintext secret; :class:`IntegrityError` if anything about the context differs."""
    blob = sealed.wrapped_secret
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _NONCE + 16:
        raise IntegrityError("sealed secret is malformed")
    data_key = provider.decrypt(sealed.wrapped_data_key, context)
    try:
        nonce, body = blob[len(_MAGIC) : len(_MAGIC) + _NONCE], blob[len(_MAGIC) + _NONCE :]
        return bytearray(AESGCM(bytes(data_key)).decrypt(nonce, body, canonical_context(context)))
    except InvalidTag:
        raise IntegrityError(
            "sealed secret does not open under its context (row copied from another tenant, "
            "purpose or version, or tampered with)"
        ) from None
    finally:
        data_key[:] = bytes(len(data_key))


def rewrap(
    wrapped_data_key: bytes, context: Context, source: KmsProvider, target: KmsProvider
) -> bytes:
    """Unwrap a data key with ``source`` and wrap it with ``target``; the secret is untouched."""
    data_key = source.decrypt(wrapped_data_key, context)
    try:
        return target.encrypt(bytes(data_key), context)
    finally:
        data_key[:] = bytes(len(data_key))
