"""JWS signing and verification (RFC 7515, RFC 8037 EdDSA, ES256), JWK thumbprints, JWKS.

Pure functions over key objects: no storage, no KMS. The KeyService finds keys; this module
turns them into compact JWS strings any JOSE library verifies with the tenant's JWKS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError, VerificationError

ALGORITHMS = ("EdDSA", "ES256")
#: Protected-header member that names the tenant; checked on verification.
TENANT_HEADER = "tenant_id"
_P256_BYTES = 32

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url; ``TK-INVALID-ENCODING`` on anything else."""
    if not isinstance(text, str) or any(c in text for c in "+/= \n\t"):
        raise InvalidRequest("malformed base64url", code=ErrorCode.INVALID_ENCODING)
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest("malformed base64url", code=ErrorCode.INVALID_ENCODING) from None


@dataclass(frozen=True)
class Signature:
    """A detached JWS and its facts: the result of a sign job, what ``tenantkeys sign`` prints."""

    jws: str
    kid: str
    tenant_id: str
    alg: str
    payload_sha256: str
    signed_at: str

    def to_dict(self) -> dict[str, str]:
        return {
            "jws": self.jws,
            "kid": self.kid,
            "tenant_id": self.tenant_id,
            "alg": self.alg,
            "payload_sha256": self.payload_sha256,
            "signed_at": self.signed_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """The signature a job result holds; ``TK-INTERNAL`` when a field is missing."""
        try:
            return cls(**{name: str(data[name]) for name in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            raise TenantKeysError("a signing job returned no signature") from None


@dataclass(frozen=True)
class KeyMaterial:
    """A private signing key in memory. ``repr`` shows the kid, never the key."""

    algorithm: str
    private_key: PrivateKey = field(repr=False)
    public_bytes: bytes = field(repr=False)

    @property
    def kid(self) -> str:
        return thumbprint(public_jwk(self.algorithm, self.public_bytes))

    def __repr__(self) -> str:
        return f"KeyMaterial(algorithm={self.algorithm!r}, kid={self.kid!r})"


def generate(algorithm: str) -> tuple[KeyMaterial, bytearray]:
    """A new key and its secret bytes (seed or scalar) for sealing; wipe the bytes after."""
    if algorithm == "EdDSA":
        return _from_secret_checked(algorithm, ed25519.Ed25519PrivateKey.generate())
    if algorithm == "ES256":
        return _from_secret_checked(algorithm, ec.generate_private_key(ec.SECP256R1()))
    raise InvalidRequest(f"unsupported signing algorithm {algorithm!r}; use one of {ALGORITHMS}")


def _from_secret_checked(algorithm: str, key: PrivateKey) -> tuple[KeyMaterial, bytearray]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        secret = bytearray(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
    else:
        secret = bytearray(key.private_numbers().private_value.to_bytes(_P256_BYTES, "big"))
    return KeyMaterial(algorithm, key, _public_bytes(key.public_key())), secret


def load(algorithm: str, secret: bytes | bytearray) -> KeyMaterial:
    """Rebuild a key from the secret bytes :func:`generate` returned."""
    key: PrivateKey
    if algorithm == "EdDSA":
        key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(secret))
    elif algorithm == "ES256":
        key = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
    else:
        raise InvalidRequest(f"unsupported signing algorithm {algorithm!r}")
    return KeyMaterial(algorithm, key, _public_bytes(key.public_key()))


def _public_bytes(public: PublicKey) -> bytes:
    if isinstance(public, ed25519.Ed25519PublicKey):
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def public_jwk(algorithm: str, public_bytes: bytes) -> dict[str, str]:
    """The public JWK (required members only, as RFC 7638 hashes them)."""
    if algorithm == "EdDSA":
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(public_bytes)}
    x, y = public_bytes[1 : 1 + _P256_BYTES], public_bytes[1 + _P256_BYTES :]
    return {"crv": "P-256", "kty": "EC", "x": b64url(x), "y": b64url(y)}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK: the kid of every signing key."""
    required = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def encode_protected(header: Mapping[str, Any]) -> str:
    """The base64url protected header, members in the order given (RFC 8037 vectors need it)."""
    return b64url(json.dumps(dict(header), separators=(",", ":")).encode())


def sign_compact(
    key: KeyMaterial, header: Mapping[str, Any], payload: bytes, *, detached: bool = True
) -> str:
    """A compact JWS over ``payload``; detached (``h..s``, RFC 7515 appendix F) by default."""
    return sign_encoded(key, encode_protected(header), payload, detached=detached)


def sign_encoded(key: KeyMaterial, protected: str, payload: bytes, *, detached: bool = True) -> str:
    """:func:`sign_compact` with the header already encoded (callers cache it per key)."""
    encoded_payload = b64url(payload)
    signing_input = f"{protected}.{encoded_payload}".encode("ascii")
    if isinstance(key.private_key, ed25519.Ed25519PrivateKey):
        signature = key.private_key.sign(signing_input)
    else:
        # ES256 is randomized; only EdDSA gives the same JWS for a redelivered job.
        der = key.private_key.sign(signing_input, ec.ECDSA(_sha256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
    return f"{protected}.{'' if detached else encoded_payload}.{b64url(signature)}"


@dataclass(frozen=True)
class ParsedJws:
    header: dict[str, Any]
    protected: str
    payload: bytes | None
    signature: bytes


def parse_compact(jws: str) -> ParsedJws:
    """Split and decode a compact JWS; ``TK-INVALID-JWS`` when it is not one."""
    if not isinstance(jws, str) or len(jws) > 16 * 1024 * 1024:
        raise InvalidRequest(
            "JWS must be a compact-serialization string", code=ErrorCode.INVALID_JWS
        )
    parts = jws.strip().split(".")
    if len(parts) != 3:
        raise InvalidRequest(
            f"JWS must have 3 dot-separated parts, got {len(parts)}", code=ErrorCode.INVALID_JWS
        )
    try:
        header = json.loads(b64url_decode(parts[0]))
        signature = b64url_decode(parts[2])
        payload = b64url_decode(parts[1]) if parts[1] else None
    except (InvalidRequest, ValueError, UnicodeDecodeError):
        raise InvalidRequest(
            "JWS header, payload or signature is not valid base64url/JSON",
            code=ErrorCode.INVALID_JWS,
        ) from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise InvalidRequest("JWS header has no 'alg'", code=ErrorCode.INVALID_JWS)
    if not isinstance(header.get("kid"), str):
        raise InvalidRequest("JWS header has no 'kid'", code=ErrorCode.INVALID_JWS)
    return ParsedJws(header, parts[0], payload, signature)


def verify_parsed(parsed: ParsedJws, payload: bytes, algorithm: str, public_bytes: bytes) -> None:
    """Check the signature of ``parsed`` over ``payload``; :class:`VerificationError` if bad."""
    if parsed.header["alg"] != algorithm:
        raise VerificationError(
            f"JWS alg {parsed.header['alg']!r} does not match the key's {algorithm!r}"
        )
    signing_input = f"{parsed.protected}.{b64url(payload)}".encode("ascii")
    try:
        if algorithm == "EdDSA":
            ed25519.Ed25519PublicKey.from_public_bytes(public_bytes).verify(
                parsed.signature, signing_input
            )
        else:
            if len(parsed.signature) != 2 * _P256_BYTES:
                raise InvalidSignature
            r = int.from_bytes(parsed.signature[:_P256_BYTES], "big")
            s = int.from_bytes(parsed.signature[_P256_BYTES:], "big")
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_bytes)
            public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_sha256()))
    except InvalidSignature:
        raise VerificationError("signature does not match the payload and key") from None


def jwks(entries: Iterable[tuple[str, bytes, str, str]]) -> dict[str, Any]:
    """A JWKS from ``(algorithm, public_bytes, kid, status)`` entries.

    Active and retired keys go in ``keys`` (with a ``status`` member); revoked kids are listed
    in a separate top-level ``revoked`` array, so standard JOSE libraries never verify with them.
    """
    keys: list[dict[str, str]] = []
    revoked: list[dict[str, str]] = []
    for algorithm, public_bytes, kid, status in entries:
        if status == "revoked":
            revoked.append({"kid": kid, "status": status})
            continue
        keys.append(
            {
                **public_jwk(algorithm, public_bytes),
                "kid": kid,
                "alg": algorithm,
                "use": "sig",
                "status": status,
            }
        )
    return {"keys": keys, "revoked": revoked}


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()
