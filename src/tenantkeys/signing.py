"""JWS signing and verification (RFC 7515, RFC 8037 EdDSA, ES256), JWK thumbprints, JWKS.

Pure functions over key objects: no storage, no KMS. The KeyService finds keys; this module
turns them into compact JWS strings any JOSE library verifies with the tenant's JWKS.

Verification is strict (docs/verifying.md): a JWS has exactly one accepted spelling. Each
segment must be canonical base64url, the protected header UTF-8 JSON without repeated members,
no ``crit`` (we implement no extension) and no ``b64``, ``alg`` one we sign with and matching
the key's type, and an ES256 signature low-S. Each rule that fails raises its own code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
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
#: The longest compact JWS :func:`parse_compact` reads.
MAX_JWS_CHARS = 16 * 1024 * 1024
_P256_BYTES = 32
#: Order of the P-256 group: an ES256 ``s`` above half of it is the high-S twin of ``n - s``.
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: Order of the Ed25519 base point: RFC 8032 section 5.1.7 rejects an ``S`` at or above it.
_ED25519_L = 2**252 + 27742317777372353535851937790883648493
_SIGNATURE_BYTES = 64
#: Public key length per algorithm: raw Ed25519, uncompressed P-256 point (0x04 || x || y).
_PUBLIC_KEY_BYTES = {"EdDSA": 32, "ES256": 1 + 2 * _P256_BYTES}
_KEY_TYPES = {"EdDSA": "an Ed25519 (OKP)", "ES256": "a P-256 (EC)"}
#: Header parameters RFC 7515 section 4.1 defines; section 4.1.11 forbids them in ``crit``.
_RFC7515_HEADERS = frozenset(
    {"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit"}
)
_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_NOT_B64URL = re.compile(r"[^A-Za-z0-9_-]")
#: Bits of the last character that carry no data, by ``len(text) % 4``.
_UNUSED_BITS = {2: 0b1111, 3: 0b11}

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
    outside = _NOT_B64URL.search(text)
    if outside is not None:
        return (
            f"character {outside.group()!r} at offset {outside.start()} is outside "
            "A-Z a-z 0-9 - _ (no padding, whitespace or +/)"
        )
    remainder = len(text) % 4
    if remainder == 1:
        return f"its length {len(text)} is 1 mod 4, which no byte string encodes to"
    if remainder and _B64URL_ALPHABET.index(text[-1]) & _UNUSED_BITS[remainder]:
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
        # Low-S only (s <= n/2): (r, n - s) verifies too, and one signature must have one JWS.
        s = min(s, _P256_N - s)
        signature = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
    return f"{protected}.{'' if detached else encoded_payload}.{b64url(signature)}"


@dataclass(frozen=True)
class ParsedJws:
    """A compact JWS that passed :func:`parse_compact`; its signature is not checked yet."""

    header: dict[str, Any]
    protected: str
    payload: bytes | None
    signature: bytes


def parse_compact(jws: str) -> ParsedJws:
    """Split and decode a compact JWS strictly; raise with the code of the first rule it breaks.

    In order: three dot-separated segments, header and signature not empty (``TK-INVALID-JWS``);
    each segment canonical base64url (``TK-JWS-NONCANONICAL-ENCODING``); the header UTF-8 JSON
    (``TK-INVALID-JWS``) with no member twice (``TK-JWS-DUPLICATE-HEADER``) and an object; no
    ``crit`` (malformed: ``TK-INVALID-JWS``, else ``TK-JWS-CRIT-UNSUPPORTED``); no ``b64``
    (``TK-JWS-B64-UNSUPPORTED``); ``alg`` one of :data:`ALGORITHMS` (``TK-JWS-ALG-UNSUPPORTED``);
    a string ``kid``.
    """
    if not isinstance(jws, str) or len(jws) > MAX_JWS_CHARS:
        raise InvalidRequest(
            "JWS must be a compact-serialization string", code=ErrorCode.INVALID_JWS
        )
    # No strip(): surrounding whitespace is another spelling, refused with the segment it is in.
    parts = jws.split(".")
    if len(parts) != 3:
        raise InvalidRequest(
            f"JWS must have 3 dot-separated parts, got {len(parts)}", code=ErrorCode.INVALID_JWS
        )
    protected, encoded_payload, encoded_signature = parts
    if not protected:
        raise InvalidRequest("JWS has an empty protected header", code=ErrorCode.INVALID_JWS)
    if not encoded_signature:
        raise InvalidRequest(
            "JWS has no signature (unsecured JWS are never accepted)", code=ErrorCode.INVALID_JWS
        )
    header_bytes, payload, signature = (
        _decode_segment(text, name)
        for text, name in (
            (protected, "header"),
            (encoded_payload, "payload"),
            (encoded_signature, "signature"),
        )
    )
    header = _decode_header(header_bytes)
    _refuse_crit(header)
    if "b64" in header:
        # RFC 7797: b64 changes what is signed. We never emit it; honouring or ignoring it
        # would let two verifiers disagree about one JWS.
        raise VerificationError(
            f"JWS header has 'b64': {_show(header['b64'])}; RFC 7797 unencoded payloads are "
            "not supported",
            code=ErrorCode.JWS_B64_UNSUPPORTED,
        )
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise InvalidRequest("JWS header has no 'alg'", code=ErrorCode.INVALID_JWS)
    if alg not in ALGORITHMS:
        raise VerificationError(
            f"JWS alg {_show(alg)} is not accepted; only {' or '.join(ALGORITHMS)}",
            code=ErrorCode.JWS_ALG_UNSUPPORTED,
        )
    if not isinstance(header.get("kid"), str):
        raise InvalidRequest("JWS header has no 'kid'", code=ErrorCode.INVALID_JWS)
    return ParsedJws(header, protected, payload if encoded_payload else None, signature)


def _decode_segment(text: str, name: str) -> bytes:
    # One spelling per JWS: a lenient decoder would accept unboundedly many for one signature.
    return b64url_decode(
        text, code=ErrorCode.JWS_NONCANONICAL_ENCODING, what=f"the JWS {name} segment"
    )


class _RepeatedMember(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise _RepeatedMember(name)
        members[name] = value
    return members


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")  # Python's json would accept NaN, Infinity


def _decode_header(data: bytes) -> dict[str, Any]:
    try:
        # RFC 7515 section 5.2 step 4: UTF-8, and a member named twice is a parse failure
        # (otherwise verifiers that keep the first and the last value read different headers).
        header = json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique_members, parse_constant=_no_constant
        )
    except _RepeatedMember as exc:
        raise VerificationError(
            f"JWS protected header has the member {_show(exc.name)} more than once",
            code=ErrorCode.JWS_DUPLICATE_HEADER,
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest(
            "JWS protected header is not UTF-8 JSON", code=ErrorCode.INVALID_JWS
        ) from None
    if not isinstance(header, dict):
        raise InvalidRequest(
            f"JWS protected header is a JSON {type(header).__name__}, not an object",
            code=ErrorCode.INVALID_JWS,
        )
    return header


def _refuse_crit(header: Mapping[str, Any]) -> None:
    """RFC 7515 section 4.1.11: we understand no extension, so any ``crit`` is refused."""
    if "crit" not in header:
        return
    crit = header["crit"]
    problem = None
    if not isinstance(crit, list) or not crit:
        problem = "must be a non-empty array"
    elif not all(isinstance(name, str) and name for name in crit):
        problem = "must hold only non-empty strings"
    elif len(set(crit)) != len(crit):
        problem = "names a member twice"
    elif _RFC7515_HEADERS.intersection(crit):
        problem = f"names members RFC 7515 defines ({_show(sorted(_RFC7515_HEADERS & set(crit)))})"
    elif any(name not in header for name in crit):
        problem = "names members the header does not have"
    if problem is not None:
        raise InvalidRequest(
            f"JWS 'crit' {_show(crit)} is malformed: it {problem} (RFC 7515 section 4.1.11)",
            code=ErrorCode.INVALID_JWS,
        )
    raise VerificationError(
        f"JWS marks {_show(crit)} critical; this verifier implements no JWS extension",
        code=ErrorCode.JWS_CRIT_UNSUPPORTED,
    )


def _show(value: object) -> str:
    """An attacker-chosen value, short enough for a one-line error."""
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def verify_parsed(parsed: ParsedJws, payload: bytes, algorithm: str, public_bytes: bytes) -> None:
    """Check the signature of ``parsed`` over ``payload`` with a key of type ``algorithm``.

    :class:`VerificationError` when it fails: ``TK-JWS-KEY-TYPE-MISMATCH`` if the key is not of
    the type ``alg`` needs, ``TK-SIGNATURE-INVALID`` if the signature does not match,
    ``TK-JWS-HIGH-S`` for an ES256 signature that matches but is not in low-S form.
    """
    alg = parsed.header.get("alg")
    if alg not in ALGORITHMS:
        raise VerificationError(
            f"JWS alg {_show(alg)} is not accepted", code=ErrorCode.JWS_ALG_UNSUPPORTED
        )
    # The key's type decides the algorithm, never the header (no alg/key confusion).
    if alg != algorithm or not _is_public_key(algorithm, public_bytes):
        raise VerificationError(
            f"JWS alg {alg!r} needs {_KEY_TYPES[alg]} key; its kid names "
            f"{_KEY_TYPES.get(algorithm, repr(algorithm))} key",
            code=ErrorCode.JWS_KEY_TYPE_MISMATCH,
        )
    if len(parsed.signature) != _SIGNATURE_BYTES:
        raise VerificationError(
            f"{alg} signature is {len(parsed.signature)} bytes, not {_SIGNATURE_BYTES}"
        )
    signing_input = f"{parsed.protected}.{b64url(payload)}".encode("ascii")
    if algorithm == "EdDSA":
        _verify_ed25519(parsed.signature, signing_input, public_bytes)
    else:
        _verify_es256(parsed.signature, signing_input, public_bytes)


def _is_public_key(algorithm: str, public_bytes: bytes) -> bool:
    size = _PUBLIC_KEY_BYTES.get(algorithm)
    if size != len(public_bytes):
        return False
    return algorithm == "EdDSA" or public_bytes[0] == 0x04


def _verify_ed25519(signature: bytes, signing_input: bytes, public_bytes: bytes) -> None:
    # RFC 8032 section 5.1.7: S must be below L, or (R, S + L) is a second valid signature.
    # OpenSSL checks it too; checked here so the rule does not depend on the backend.
    if int.from_bytes(signature[32:], "little") >= _ED25519_L:
        raise VerificationError("EdDSA signature has a non-canonical S (S >= L)")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_bytes).verify(signature, signing_input)
    except InvalidSignature:
        raise VerificationError("signature does not match the payload and key") from None


def _verify_es256(signature: bytes, signing_input: bytes, public_bytes: bytes) -> None:
    r = int.from_bytes(signature[:_P256_BYTES], "big")
    s = int.from_bytes(signature[_P256_BYTES:], "big")
    if not (0 < r < _P256_N and 0 < s < _P256_N):
        raise VerificationError("ES256 signature has r or s outside 1..n-1")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_bytes)
        public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_sha256()))
    except ValueError:
        raise VerificationError(
            "the key is not a P-256 public key", code=ErrorCode.JWS_KEY_TYPE_MISMATCH
        ) from None
    except InvalidSignature:
        raise VerificationError("signature does not match the payload and key") from None
    if s > _P256_N // 2:
        # Checked after the math on purpose: this code then says "genuine, but not the one
        # accepted spelling" (n - s is the canonical twin), which an auditor needs to know.
        raise VerificationError(
            "ES256 signature matches but is in high-S form (s > n/2); only low-S is accepted",
            code=ErrorCode.JWS_HIGH_S,
        )


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
