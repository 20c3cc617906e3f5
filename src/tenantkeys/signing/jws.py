"""Making JWS: keys (Ed25519, P-256), RFC 7638 thumbprints, compact JWS (RFC 7515; Ed25519 as
``Ed25519`` per RFC 9864 or ``EdDSA`` per RFC 8037; ES256 low-S only), canonical base64url, and
the JWKS that verifies them.

Pure functions over key objects: no storage, no KMS. The KeyService finds keys; this module
turns them into compact JWS strings any JOSE library verifies with the tenant's JWKS.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
)

from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError
from tenantkeys.signing.canonical import CANONICAL_HEADER, canonicalize

#: The JWS ``alg`` values a key signs with; a key's ``algorithm`` is one of them, fixed when
#: the key is made. ``Ed25519`` (RFC 9864, fully specified) and ``EdDSA`` (RFC 8037) are the
#: same Ed25519 signature under two names: which one a key uses is what its JWKS entry says.
ALGORITHMS = ("Ed25519", "EdDSA", "ES256")
#: The ``alg`` names of an Ed25519 key.
ED25519_ALGORITHMS = frozenset({"Ed25519", "EdDSA"})
#: Protected-header member that names the tenant; checked on verification.
TENANT_HEADER = "tenant_id"
#: The longest compact JWS :func:`parse_compact` reads.
MAX_JWS_CHARS = 16 * 1024 * 1024
P256_BYTES = 32
#: Order of the P-256 group: an ES256 ``s`` above half of it is the high-S twin of ``n - s``.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: Order of the Ed25519 base point: RFC 8032 section 5.1.7 rejects an ``S`` at or above it.
ED25519_L = 2**252 + 27742317777372353535851937790883648493
SIGNATURE_BYTES = 64
#: Public key length per algorithm: raw Ed25519, uncompressed P-256 point (0x04 || x || y).
PUBLIC_KEY_BYTES = {"Ed25519": 32, "EdDSA": 32, "ES256": 1 + 2 * P256_BYTES}
KEY_TYPES = {"Ed25519": "an Ed25519 (OKP)", "EdDSA": "an Ed25519 (OKP)", "ES256": "a P-256 (EC)"}
#: Header parameters RFC 7515 section 4.1 defines; section 4.1.11 forbids them in ``crit``.
RFC7515_HEADERS = frozenset(
    {"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit"}
)
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NOT_B64URL = re.compile(r"[^A-Za-z0-9_-]")
#: Bits of the last character that carry no data, by ``len(text) % 4``.
UNUSED_BITS = {2: 0b1111, 3: 0b11}

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_defect(text: str) -> str | None:
    """Why ``text`` is not the canonical unpadded base64url of some bytes, or ``None``.

    Canonical (RFC 7515 section 2, RFC 4648 section 3.5): only ``A-Z a-z 0-9 - _``; no
    padding, whitespace or line breaks; a length that is not 1 mod 4; and zero unused bits in
    the last character. Each byte string then has exactly one spelling.
    """
    outside = NOT_B64URL.search(text)
    if outside is not None:
        return (
            f"character {outside.group()!r} at offset {outside.start()} is outside "
            "A-Z a-z 0-9 - _ (no padding, whitespace or +/)"
        )
    remainder = len(text) % 4
    if remainder == 1:
        return f"its length {len(text)} is 1 mod 4, which no byte string encodes to"
    if remainder and B64URL_ALPHABET.index(text[-1]) & UNUSED_BITS[remainder]:
        return "its last character sets unused bits (another spelling of the same bytes)"
    return None


def b64url_decode(
    text: str, *, code: ErrorCode = ErrorCode.INVALID_ENCODING, what: str = "value"
) -> bytes:
    """Decode canonical unpadded base64url (see :func:`b64url_defect`); raise ``code`` if not."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{what} must be a base64url string", code=code)
    defect = b64url_defect(text)
    if defect is not None:
        raise InvalidRequest(f"{what} is not canonical base64url: {defect}", code=code)
    # Only alphabet characters and a valid length remain, so decoding cannot fail or skip any.
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Signature:
    """A detached JWS and its facts: the result of a sign job, what ``tenantkeys sign`` prints."""

    jws: str
    kid: str
    tenant_id: str
    alg: str
    payload_sha256: str
    signed_at: str
    #: Base64 (standard alphabet) DER of an RFC 3161 TimeStampResp over SHA-256 of the JWS's
    #: third segment (see tenantkeys.signing.timestamps); ``None`` with timestamps off.
    timestamp: str | None = None

    def to_dict(self) -> dict[str, str]:
        data = {
            "jws": self.jws,
            "kid": self.kid,
            "tenant_id": self.tenant_id,
            "alg": self.alg,
            "payload_sha256": self.payload_sha256,
            "signed_at": self.signed_at,
        }
        if self.timestamp is not None:
            data["timestamp"] = self.timestamp
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """The signature a job result holds; ``TK-INTERNAL`` when a field is missing.

        ``timestamp`` is optional: results from before it existed still parse.
        """
        try:
            fields = {name: str(data[name]) for name in REQUIRED_SIGNATURE_FIELDS}
            timestamp = data.get("timestamp")
            return cls(**fields, timestamp=None if timestamp is None else str(timestamp))
        except (KeyError, TypeError, AttributeError):
            raise TenantKeysError("a signing job returned no signature") from None


#: The members every :class:`Signature` dict has.
REQUIRED_SIGNATURE_FIELDS = ("jws", "kid", "tenant_id", "alg", "payload_sha256", "signed_at")


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
    if algorithm in ED25519_ALGORITHMS:
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
        secret = bytearray(key.private_numbers().private_value.to_bytes(P256_BYTES, "big"))
    return KeyMaterial(algorithm, key, _public_bytes(key.public_key())), secret


def load(algorithm: str, secret: bytes | bytearray) -> KeyMaterial:
    """Rebuild a key from the secret bytes :func:`generate` returned."""
    key: PrivateKey
    if algorithm in ED25519_ALGORITHMS:
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
    if algorithm in ED25519_ALGORITHMS:
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(public_bytes)}
    x, y = public_bytes[1 : 1 + P256_BYTES], public_bytes[1 + P256_BYTES :]
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


@functools.lru_cache(maxsize=1024)
def with_canonical_member(protected: str) -> str:
    """The encoded header ``protected`` with ``"jcs": true`` appended (cached per key header)."""
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    return encode_protected({**header, CANONICAL_HEADER: True})


def sign_encoded(
    key: KeyMaterial,
    protected: str,
    payload: bytes,
    *,
    detached: bool = True,
    canonical_json: bool = False,
) -> str:
    """:func:`sign_compact` with the header already encoded (callers cache it per key).

    ``canonical_json`` says ``payload`` is the RFC 8785 form :func:`signing_input` made; the
    header then says so too (``"jcs": true``), so a verifier knows to canonicalize first.
    """
    if canonical_json:
        protected = with_canonical_member(protected)
    encoded_payload = b64url(payload)
    signature = raw_signer(key)(f"{protected}.{encoded_payload}".encode("ascii"))
    return f"{protected}.{'' if detached else encoded_payload}.{b64url(signature)}"


def detached_signer(
    key: KeyMaterial, protected: str, *, canonical_json: bool = False
) -> Callable[[bytes], str]:
    """A function from a payload to its detached compact JWS (``h..s``), as
    :func:`sign_encoded` makes it, with the work shared by every payload done once: the header
    and the algorithm's signer are chosen here, so signing many payloads costs the signature
    and two base64url encodings each (a ``sign_batch`` job, :meth:`KeyService.sign_many`)."""
    if canonical_json:
        protected = with_canonical_member(protected)
    sign = raw_signer(key)
    prefix = f"{protected}.".encode("ascii")
    head = f"{protected}.."
    encode = base64.urlsafe_b64encode

    def detached(payload: bytes) -> str:
        signature = sign(prefix + encode(payload).rstrip(b"="))
        return head + encode(signature).rstrip(b"=").decode("ascii")

    return detached


def raw_signer(key: KeyMaterial) -> Callable[[bytes], bytes]:
    """The JWS signature function of ``key``: Ed25519's 64 bytes, or ES256's ``r || s``."""
    private = key.private_key
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign
    ec_key: ec.EllipticCurvePrivateKey = private

    def es256(signing_input: bytes) -> bytes:
        # ES256 is randomized; only EdDSA gives the same JWS for a redelivered job.
        der = ec_key.sign(signing_input, ec.ECDSA(sha256_hash()))
        r, s = decode_dss_signature(der)
        # Low-S only (s <= n/2): (r, n - s) verifies too, and one signature must have one JWS.
        s = min(s, P256_N - s)
        return r.to_bytes(P256_BYTES, "big") + s.to_bytes(P256_BYTES, "big")

    return es256


def jwks(entries: Iterable[tuple[str, bytes, str, str]]) -> dict[str, Any]:
    """A JWKS from ``(algorithm, public_bytes, kid, status)`` entries.

    Active and retired keys go in ``keys`` (with a ``status`` member); revoked kids are listed
    in a separate top-level ``revoked`` array, so standard JOSE libraries never verify with them.
    Each key's ``alg`` is the one its signatures carry (``Ed25519`` or ``EdDSA`` for an Ed25519
    key): libraries that pick a key by ``alg`` (jose, jwcrypto) find it, and libraries that pick
    by ``kty`` and ``crv`` find it too (docs/verifying.md says which library does which).
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


def sha256_hash() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def signing_input(payload: object, *, max_bytes: int, canonical_json: bool = False) -> bytes:
    """The bytes to sign: ``payload`` checked for type and size, in RFC 8785 canonical form
    when ``canonical_json`` (so re-serialising the JSON does not break verification)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InvalidRequest("payload must be bytes", code=ErrorCode.INVALID_ARGUMENT)
    data = bytes(payload)
    if len(data) > max_bytes:
        raise InvalidRequest(
            f"payload is {len(data)} bytes; the limit is {max_bytes} "
            "(TENANTKEYS_MAX_PAYLOAD_BYTES)",
            code=ErrorCode.PAYLOAD_TOO_LARGE,
        )
    if canonical_json:
        data = canonicalize(data)
    return data
