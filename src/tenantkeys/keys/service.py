"""KeyService: create, find, use, rotate and revoke a tenant's keys.

Lookups go L1 (unwrapped, in process) -> L2 (wrapped, Redis) -> KeyStore, then one KMS unwrap.
Every public method validates the tenant id first. Nothing here imports Celery.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tenantkeys import signing, telemetry
from tenantkeys.config.concerns import RedisDownPolicy
from tenantkeys.errors import (
    ErrorCode,
    IntegrityError,
    InvalidRequest,
    KeyNotFound,
    KeyRevoked,
    TenantKeysError,
    VerificationError,
)
from tenantkeys.keys import encryption, material
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.confirm import KeyConfirmer
from tenantkeys.keys.kms import ProviderSet
from tenantkeys.keys.material import UnlockedKey
from tenantkeys.keys.model import KeyVersion, Purpose, Status, parse_purpose, validate_tenant_id
from tenantkeys.keys.redis_cache import WrappedKeyCache
from tenantkeys.keys.store import KeyStore
from tenantkeys.signing import Signature, signing_input
from tenantkeys.telemetry import tracing

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Verification:
    tenant_id: str
    kid: str
    version: int
    status: str


@dataclass(frozen=True)
class RotationResult:
    tenant_id: str
    purpose: str
    rotated: bool
    old_version: int | None
    new_version: int | None
    reason: str = ""


@dataclass(frozen=True)
class SignedBatch:
    """Many payloads signed with one key: :meth:`KeyService.sign_many`'s result.

    ``jws[i]`` is payload ``i``'s detached compact JWS, or ``None`` where ``errors`` holds
    ``(i, error)``: a payload that is too big, or not JSON when canonical JSON was asked for.
    """

    tenant_id: str
    kid: str
    alg: str
    signed_at: str
    jws: list[str | None]
    errors: list[tuple[int, TenantKeysError]]


@dataclass
class KeyServiceOptions:
    """The settings a KeyService needs (a subset of :class:`tenantkeys.config.Settings`)."""

    signing_algorithm: str = "EdDSA"
    rotation_days: dict[str, int] = field(default_factory=lambda: {"signing": 90, "encryption": 90})
    max_payload_bytes: int = 1_048_576
    #: Redis down when a cached key's confirmation is due (the interval is the L1's own):
    #: "availability" signs on with it, "safety" asks the key store or fails the signature.
    key_confirm_redis_down: RedisDownPolicy = "availability"


class KeyService:
    """The one place where keys are created, unlocked, used, rotated and revoked."""

    def __init__(
        self,
        store: KeyStore,
        providers: ProviderSet,
        l1: LocalKeyCache[UnlockedKey],
        l2: WrappedKeyCache | None = None,
        options: KeyServiceOptions | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.providers = providers
        self.l1 = l1
        self.l2 = l2
        self.options = options or KeyServiceOptions()
        self.clock = clock
        self._listener = l2.subscribe(self.l1.invalidate) if l2 is not None else None
        self._confirmer = KeyConfirmer(l1, store, self.options.key_confirm_redis_down)

    # -- payloads ------------------------------------------------------------------------

    def check_payload(self, payload: object, *, canonical_json: bool = False) -> bytes:
        """Validate size and type, and canonicalize JSON (RFC 8785) when asked."""
        return signing_input(
            payload, max_bytes=self.options.max_payload_bytes, canonical_json=canonical_json
        )

    # -- keys ----------------------------------------------------------------------------

    def create_keys(
        self, tenant_id: str, purposes: Iterable[Purpose | str] = tuple(Purpose)
    ) -> list[KeyVersion]:
        """Create version 1 of each purpose the tenant lacks; return the active versions."""
        validate_tenant_id(tenant_id)
        wanted = [parse_purpose(p) for p in purposes]
        result = []
        for purpose in wanted:
            existing = self.store.active(tenant_id, purpose)
            if existing is None:
                latest = self.store.versions(tenant_id, purpose)
                version = self._new_version(
                    tenant_id, purpose, latest[-1].version + 1 if latest else 1
                )
                if not self.store.add_first([version]):
                    log.info("concurrent create for a tenant; using the winner's key")
                existing = self.store.active(tenant_id, purpose)
                if existing is None:
                    raise KeyNotFound(f"key creation for tenant {tenant_id!r} did not persist")
            result.append(existing)
        return result

    def list_keys(self, tenant_id: str) -> list[KeyVersion]:
        return self.store.versions(validate_tenant_id(tenant_id))

    def active_key(self, tenant_id: str, purpose: Purpose) -> UnlockedKey:
        """The unlocked active key: L1, else L2 or store plus one KMS unwrap."""
        validate_tenant_id(tenant_id)
        cache_key = (tenant_id, purpose.value, "active")
        found = self.l1.get(cache_key)
        if found is not None and not self._confirmer.still_active(
            self.l2, tenant_id, purpose, found
        ):
            found = None
        telemetry.record_cache_lookup("l1", "hit" if found is not None else "miss")
        if found is not None:
            return found
        l1_generation = self.l1.generation(tenant_id, purpose.value)
        read_at = self.l1.now()
        l2_generation = self.l2.generation(tenant_id, purpose.value) if self.l2 else None
        version = None
        if self.l2 is not None:
            with tracing.cache_span("l2"):
                version = self.l2.get_active(tenant_id, purpose)
            telemetry.record_cache_lookup("l2", "hit" if version is not None else "miss")
        from_store = version is None
        if version is None:
            version = self.store.active(tenant_id, purpose)
            if version is None:
                raise KeyNotFound(
                    f"tenant {tenant_id!r} has no active {purpose.value} key; "
                    f"create one with: tenantkeys keys create --tenant {tenant_id}"
                )
        if version.tenant_id != tenant_id or version.purpose is not purpose:
            # Tenant binding: never unlock (and sign with) a key that is not this tenant's.
            raise IntegrityError(
                f"the active {purpose.value} key found for tenant {tenant_id!r} belongs to "
                "another tenant or purpose; refused"
            )
        unlocked = self._unlock(version)
        if from_store and self.l2 is not None:
            # Only a record that opened goes to L2: a bad row is never spread to other workers.
            self.l2.put_active(version, l2_generation)
        self.l1.put(
            cache_key,
            unlocked,
            scope=(tenant_id, purpose.value),
            generation=l1_generation,
            redis_generation=l2_generation,
            read_at=read_at,
        )
        return unlocked

    def rotate(
        self,
        tenant_id: str,
        purpose: Purpose | str,
        *,
        expected_version: int | None = None,
        only_if_due: bool = False,
    ) -> RotationResult:
        """Make a new active version; the old one retires. Conditional, so never twice.

        ``expected_version`` makes the rotation happen only if that version is still the
        active one (what a sweep enqueues); ``only_if_due`` only if it is past rotate_after.
        """
        validate_tenant_id(tenant_id)
        purpose = parse_purpose(purpose)
        current = self.store.active(tenant_id, purpose)
        if current is None:
            raise KeyNotFound(f"tenant {tenant_id!r} has no active {purpose.value} key")
        if expected_version is not None and current.version != expected_version:
            return RotationResult(
                tenant_id,
                purpose.value,
                False,
                expected_version,
                current.version,
                "already rotated",
            )
        if only_if_due and current.rotate_after > self.clock():
            return RotationResult(tenant_id, purpose.value, False, current.version, None, "not due")
        latest = self.store.versions(tenant_id, purpose)[-1].version
        new = self._new_version(tenant_id, purpose, latest + 1)
        if not self.store.rotate(current, new, self.clock()):
            return RotationResult(
                tenant_id, purpose.value, False, current.version, None, "rotated concurrently"
            )
        self._invalidate(tenant_id, purpose)
        return RotationResult(tenant_id, purpose.value, True, current.version, new.version)

    def revoke(self, tenant_id: str, kid: str) -> KeyVersion:
        """Revoke a version: its signatures stop verifying. An active one is replaced at once."""
        validate_tenant_id(tenant_id)
        version = self.store.by_kid(tenant_id, _check_kid(kid))
        if version is None:
            raise KeyNotFound(
                f"tenant {tenant_id!r} has no key with kid {kid!r}", code=ErrorCode.UNKNOWN_KID
            )
        if version.status is Status.REVOKED:
            return version
        replacement = None
        if version.status is Status.ACTIVE:
            latest = self.store.versions(tenant_id, version.purpose)[-1].version
            replacement = self._new_version(tenant_id, version.purpose, latest + 1)
        if not self.store.revoke(version, self.clock(), replacement):
            return self.revoke(
                tenant_id, kid
            )  # it changed under us (rotated): revoke what it is now
        self._invalidate(tenant_id, version.purpose)
        revoked = self.store.by_kid(tenant_id, kid)
        assert revoked is not None
        return revoked

    # -- signing -------------------------------------------------------------------------

    def sign(
        self, tenant_id: str, payload: bytes, *, canonical_json: bool = False, detached: bool = True
    ) -> Signature:
        """A JWS over ``payload`` with the tenant's active signing key."""
        validate_tenant_id(tenant_id)
        data = self.check_payload(payload, canonical_json=canonical_json)
        key = self.active_key(tenant_id, Purpose.SIGNING)
        assert key.material is not None
        jws = signing.sign_encoded(
            key.material, key.protected, data, detached=detached, canonical_json=canonical_json
        )
        return Signature(
            jws=jws,
            kid=key.version.kid,
            tenant_id=tenant_id,
            alg=key.version.algorithm,
            payload_sha256=hashlib.sha256(data).hexdigest(),
            signed_at=self.clock().isoformat(timespec="milliseconds"),
        )

    def sign_many(
        self, tenant_id: str, payloads: Sequence[object], *, canonical_json: bool = False
    ) -> SignedBatch:
        """Detached JWS over each of ``payloads`` with the tenant's active signing key, which is
        looked up once: the same signatures as :meth:`sign` gives one by one (Ed25519 is
        deterministic), for the cost of the signatures. A payload that :meth:`check_payload`
        refuses fails alone; a tenant without a key fails the whole call, as :meth:`sign` does.
        """
        validate_tenant_id(tenant_id)
        key = self.active_key(tenant_id, Purpose.SIGNING)
        assert key.material is not None
        sign = signing.detached_signer(key.material, key.protected, canonical_json=canonical_json)
        limit = self.options.max_payload_bytes
        signed: list[str | None] = []
        errors: list[tuple[int, TenantKeysError]] = []
        for index, payload in enumerate(payloads):
            if isinstance(payload, bytes) and len(payload) <= limit and not canonical_json:
                signed.append(sign(payload))
                continue
            try:  # the slow path: what sign() would refuse, or canonicalization
                signed.append(sign(self.check_payload(payload, canonical_json=canonical_json)))
            except TenantKeysError as exc:
                errors.append((index, exc))
                signed.append(None)
        return SignedBatch(
            tenant_id=tenant_id,
            kid=key.version.kid,
            alg=key.version.algorithm,
            signed_at=self.clock().isoformat(timespec="milliseconds"),
            jws=signed,
            errors=errors,
        )

    def verify(
        self, tenant_id: str, payload: bytes | None, jws: str, *, canonical_json: bool = False
    ) -> Verification:
        """Check ``jws`` against the tenant's active and retired keys; raise with the reason.

        Strict (docs/verifying.md): :func:`signing.parse_compact` refuses every JWS that is not
        the one accepted spelling before any key is looked up.
        """
        validate_tenant_id(tenant_id)
        parsed = signing.parse_compact(jws)
        claimed = parsed.header.get(signing.TENANT_HEADER)
        if claimed != tenant_id:
            raise VerificationError(
                f"JWS was issued for tenant {str(claimed)[:64]!r}, not {tenant_id!r}",
                code=ErrorCode.TENANT_MISMATCH,
            )
        if payload is None:
            if parsed.payload is None:
                raise InvalidRequest("detached JWS: give the payload that was signed")
            data = parsed.payload
        else:
            data = self.check_payload(payload, canonical_json=canonical_json)
            if parsed.payload is not None and parsed.payload != data:
                raise VerificationError("the JWS carries a different payload than the one given")
        kid = parsed.header["kid"]
        # A kid is never cut to fit: a longer one names no key (kids are 43-character thumbprints).
        version = self.store.by_kid(tenant_id, kid) if 0 < len(kid) <= 128 else None
        if version is None or version.purpose is not Purpose.SIGNING or version.public_key is None:
            raise VerificationError(
                f"kid {kid[:64]!r} is not a signing key of tenant {tenant_id!r}",
                code=ErrorCode.UNKNOWN_KID,
            )
        if version.status is Status.REVOKED:
            raise KeyRevoked(f"key {kid!r} of tenant {tenant_id!r} was revoked; signature refused")
        signing.verify_parsed(parsed, data, version.algorithm, version.public_key)
        return Verification(tenant_id, kid, version.version, version.status.value)

    def jwks(self, tenant_id: str) -> dict[str, Any]:
        """The tenant's JWKS: active and retired public keys; revoked kids listed apart."""
        versions = self.store.versions(validate_tenant_id(tenant_id), Purpose.SIGNING)
        return signing.jwks(
            (v.algorithm, v.public_key, v.kid, v.status.value)
            for v in reversed(versions)
            if v.public_key is not None
        )

    # -- data encryption -----------------------------------------------------------------

    def encrypt(self, tenant_id: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """AES-256-GCM under the tenant's active encryption key, bound to ``associated_data``.

        The output names the key's kid, so it still decrypts after rotations.
        """
        key = self.active_key(tenant_id, Purpose.ENCRYPTION)
        assert key.secret is not None
        return encryption.seal(key.secret, tenant_id, key.version.kid, plaintext, associated_data)

    def decrypt(self, tenant_id: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """Reverse :meth:`encrypt` with the version that made it (active or retired)."""
        validate_tenant_id(tenant_id)
        parsed = encryption.parse(ciphertext)
        key = self._key_by_kid(tenant_id, parsed.kid, Purpose.ENCRYPTION)
        assert key.secret is not None
        return encryption.open_data(key.secret, tenant_id, parsed, associated_data)

    def _key_by_kid(self, tenant_id: str, kid: str, purpose: Purpose) -> UnlockedKey:
        cache_key = (tenant_id, purpose.value, "kid", kid)
        found = self.l1.get(cache_key)
        if found is not None:
            return found
        generation = self.l1.generation(tenant_id, purpose.value)
        version = self.store.by_kid(tenant_id, _check_kid(kid))
        if version is None or version.purpose is not purpose:
            raise KeyNotFound(
                f"tenant {tenant_id!r} has no {purpose.value} key {kid!r}",
                code=ErrorCode.UNKNOWN_KID,
            )
        unlocked = self._unlock(version)
        self.l1.put(cache_key, unlocked, scope=(tenant_id, purpose.value), generation=generation)
        return unlocked

    # -- internals -----------------------------------------------------------------------

    def _new_version(self, tenant_id: str, purpose: Purpose, number: int) -> KeyVersion:
        days = self.options.rotation_days[purpose.value]
        return material.mint(
            tenant_id,
            purpose,
            number,
            self.providers.current,
            algorithm=self.options.signing_algorithm,
            now=self.clock(),
            rotate_after=timedelta(days=days),
        )

    def _unlock(self, version: KeyVersion) -> UnlockedKey:
        return material.unlock(version, self.providers.get(version.provider))

    def _invalidate(self, tenant_id: str, purpose: Purpose) -> None:
        self.l1.invalidate(tenant_id, purpose.value)
        if self.l2 is not None:
            self.l2.invalidate(tenant_id, purpose.value)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self.providers.close()
        self.store.close()


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not 1 <= len(kid) <= 128 or not kid.isascii():
        raise InvalidRequest("kid must be 1-128 ASCII characters", code=ErrorCode.UNKNOWN_KID)
    return kid
