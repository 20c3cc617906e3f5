"""A key version's secret: minted, sealed under its context, and opened again (unlocked).

Minting generates the secret (an Ed25519 or P-256 signing key, or a 256-bit AES key), seals it
with the envelope bound to the version's context, and zeroes the plaintext. Unlocking opens it
with the provider that wrapped it and keeps only what signing or encryption needs; a
:class:`UnlockedKey` never shows its secret in ``repr``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tenantkeys import signing
from tenantkeys.errors import KeyNotFound, KeyRevoked
from tenantkeys.keys import encryption
from tenantkeys.keys.envelope import Sealed, open_sealed, seal
from tenantkeys.keys.model import KeyVersion, Purpose, Status
from tenantkeys.providers import KmsProvider

_AES_KEY_BYTES = 32


@dataclass(frozen=True)
class UnlockedKey:
    """A key version with its secret opened. ``repr`` shows the kid only."""

    version: KeyVersion
    material: signing.KeyMaterial | None = field(default=None, repr=False)
    secret: bytes | None = field(default=None, repr=False)  # AES key of an encryption version
    #: The encoded JWS protected header of a signing key, built once per unlock.
    protected: str = ""

    def __repr__(self) -> str:
        v = self.version
        return f"UnlockedKey(tenant_id={v.tenant_id!r}, purpose={v.purpose.value!r}, kid={v.kid!r})"


def mint(
    tenant_id: str,
    purpose: Purpose,
    number: int,
    provider: KmsProvider,
    *,
    algorithm: str,
    now: datetime,
    rotate_after: timedelta,
) -> KeyVersion:
    """Generate a key, seal its secret bound to its context, and describe the new row."""
    if purpose is Purpose.SIGNING:
        made, secret = signing.generate(algorithm)
        kid, algorithm, public = made.kid, made.algorithm, made.public_bytes
    else:
        secret = bytearray(os.urandom(_AES_KEY_BYTES))
        kid, algorithm, public = (
            "enc-" + signing.b64url(os.urandom(16)),
            encryption.ALGORITHM,
            None,
        )
    draft = KeyVersion(
        tenant_id=tenant_id,
        purpose=purpose,
        version=number,
        kid=kid,
        algorithm=algorithm,
        status=Status.ACTIVE,
        created_at=now,
        rotate_after=now + rotate_after,
        provider=provider.name,
        provider_key_id=provider.key_id,
        public_key=public,
    )
    try:
        sealed = seal(secret, draft.context, provider)
    finally:
        secret[:] = bytes(len(secret))  # drop the plaintext as soon as it is sealed
    return draft.evolve(
        wrapped_secret=sealed.wrapped_secret, wrapped_data_key=sealed.wrapped_data_key
    )


def unlock(version: KeyVersion, provider: KmsProvider) -> UnlockedKey:
    """Open ``version``'s secret with the provider that wrapped it (one KMS unwrap)."""
    if version.status is Status.REVOKED:
        raise KeyRevoked(f"key {version.kid!r} of tenant {version.tenant_id!r} was revoked")
    if not version.has_secret:
        raise KeyNotFound(f"key {version.kid!r} has no private material (retired)")
    assert version.wrapped_secret is not None and version.wrapped_data_key is not None
    secret = open_sealed(
        Sealed(version.wrapped_secret, version.wrapped_data_key), version.context, provider
    )
    public = version.evolve(wrapped_secret=None, wrapped_data_key=None)
    try:
        if version.purpose is Purpose.SIGNING:
            header = {
                "alg": version.algorithm,
                "kid": version.kid,
                signing.TENANT_HEADER: version.tenant_id,
            }
            return UnlockedKey(
                public,
                material=signing.load(version.algorithm, secret),
                protected=signing.encode_protected(header),
            )
        return UnlockedKey(public, secret=bytes(secret))
    finally:
        secret[:] = bytes(len(secret))  # the plaintext lives on only inside the key object
