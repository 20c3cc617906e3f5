"""Strict verification of a compact JWS: exactly one accepted spelling (docs/verifying.md).

Each segment must be canonical base64url, the protected header UTF-8 JSON without repeated
members, no ``crit`` (we implement no extension) and no ``b64``, ``jcs`` only as ``true``, ``alg``
one we sign with and the one the key signs with, and an ES256 signature low-S. Each rule that
fails raises its own code. A header with ``"jcs": true`` says the payload signed is RFC 8785
canonical JSON: the payload given is canonicalized before the signature is checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    encode_dss_signature,
)

from tenantkeys.errors import ErrorCode, InvalidRequest, VerificationError
from tenantkeys.signing.canonical import CANONICAL_HEADER, canonicalize
from tenantkeys.signing.jws import (
    ALGORITHMS,
    ED25519_ALGORITHMS,
    ED25519_L,
    KEY_TYPES,
    MAX_JWS_CHARS,
    P256_BYTES,
    P256_N,
    PUBLIC_KEY_BYTES,
    RFC7515_HEADERS,
    SIGNATURE_BYTES,
    b64url,
    b64url_decode,
    sha256_hash,
)


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
    (``TK-JWS-B64-UNSUPPORTED``); ``jcs`` absent or ``true`` (``TK-INVALID-JWS``); ``alg`` one of
    :data:`ALGORITHMS` (``TK-JWS-ALG-UNSUPPORTED``); a string ``kid``.
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
    if CANONICAL_HEADER in header and header[CANONICAL_HEADER] is not True:
        # Only ``true`` is ever issued; ``false`` or ``"yes"`` would be a second spelling of
        # "not canonical" (the member's absence) or a reading verifiers could disagree on.
        raise InvalidRequest(
            f"JWS header has 'jcs': {_show(header[CANONICAL_HEADER])}; it is only ever true "
            "(the payload is RFC 8785 canonical JSON)",
            code=ErrorCode.INVALID_JWS,
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
    elif RFC7515_HEADERS.intersection(crit):
        problem = f"names members RFC 7515 defines ({_show(sorted(RFC7515_HEADERS & set(crit)))})"
    elif any(name not in header for name in crit):
        problem = "names members the header does not have"
    if problem is not None:
        raise InvalidRequest(
            f"JWS 'crit' {_show(crit)} is malformed: it {problem} (RFC 7515 section 4.1.11)",
            code=ErrorCode.INVALID_JWS,
        )
    raise VerificationError(
        f"JWS marks {_show(crit)} critical; tenantkeys issues no critical member (its 'jcs' "
        "is advisory) and implements no JWS extension",
        code=ErrorCode.JWS_CRIT_UNSUPPORTED,
    )


def _show(value: object) -> str:
    """An attacker-chosen value, short enough for a one-line error."""
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def verify_parsed(parsed: ParsedJws, payload: bytes, algorithm: str, public_bytes: bytes) -> None:
    """Check the signature of ``parsed`` over ``payload`` with a key of type ``algorithm``.

    ``algorithm`` is the ``alg`` the key signs with. :class:`VerificationError` when it fails:
    ``TK-JWS-KEY-TYPE-MISMATCH`` if the key is not of the type ``alg`` needs,
    ``TK-JWS-ALG-MISMATCH`` if it is but signs under the other name (``EdDSA`` for
    ``Ed25519``), ``TK-SIGNATURE-INVALID`` if the signature does not match, ``TK-JWS-HIGH-S``
    for an ES256 signature that matches but is not in low-S form. With ``"jcs": true`` in the
    header, ``payload`` is canonicalized (RFC 8785) first, and refused if it is not JSON.
    """
    alg = parsed.header.get("alg")
    if alg not in ALGORITHMS:
        raise VerificationError(
            f"JWS alg {_show(alg)} is not accepted", code=ErrorCode.JWS_ALG_UNSUPPORTED
        )
    # The key's type decides the algorithm, never the header (no alg/key confusion).
    if alg != algorithm and KEY_TYPES.get(algorithm) == KEY_TYPES[alg]:
        # One key, one alg: what its JWKS entry says, which is what jose and jwcrypto enforce.
        raise VerificationError(
            f"JWS alg {alg!r} is not the alg its kid signs with ({algorithm!r}, as the JWKS "
            "entry of the key says)",
            code=ErrorCode.JWS_ALG_MISMATCH,
        )
    if alg != algorithm or not _is_public_key(algorithm, public_bytes):
        raise VerificationError(
            f"JWS alg {alg!r} needs {KEY_TYPES[alg]} key; its kid names "
            f"{KEY_TYPES.get(algorithm, repr(algorithm))} key",
            code=ErrorCode.JWS_KEY_TYPE_MISMATCH,
        )
    if len(parsed.signature) != SIGNATURE_BYTES:
        raise VerificationError(
            f"{alg} signature is {len(parsed.signature)} bytes, not {SIGNATURE_BYTES}"
        )
    if parsed.header.get(CANONICAL_HEADER) is True:
        payload = canonicalize(payload)
    signing_input = f"{parsed.protected}.{b64url(payload)}".encode("ascii")
    if algorithm in ED25519_ALGORITHMS:
        _verify_ed25519(parsed.signature, signing_input, public_bytes)
    else:
        _verify_es256(parsed.signature, signing_input, public_bytes)


def _is_public_key(algorithm: str, public_bytes: bytes) -> bool:
    size = PUBLIC_KEY_BYTES.get(algorithm)
    if size != len(public_bytes):
        return False
    return algorithm in ED25519_ALGORITHMS or public_bytes[0] == 0x04


def _verify_ed25519(signature: bytes, signing_input: bytes, public_bytes: bytes) -> None:
    # RFC 8032 section 5.1.7: S must be below L, or (R, S + L) is a second valid signature.
    # OpenSSL checks it too; checked here so the rule does not depend on the backend.
    if int.from_bytes(signature[32:], "little") >= ED25519_L:
        raise VerificationError("EdDSA signature has a non-canonical S (S >= L)")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_bytes).verify(signature, signing_input)
    except InvalidSignature:
        raise VerificationError("signature does not match the payload and key") from None


def _verify_es256(signature: bytes, signing_input: bytes, public_bytes: bytes) -> None:
    r = int.from_bytes(signature[:P256_BYTES], "big")
    s = int.from_bytes(signature[P256_BYTES:], "big")
    if not (0 < r < P256_N and 0 < s < P256_N):
        raise VerificationError("ES256 signature has r or s outside 1..n-1")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_bytes)
        public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(sha256_hash()))
    except ValueError:
        raise VerificationError(
            "the key is not a P-256 public key", code=ErrorCode.JWS_KEY_TYPE_MISMATCH
        ) from None
    except InvalidSignature:
        raise VerificationError("signature does not match the payload and key") from None
    if s > P256_N // 2:
        # Checked after the math on purpose: this code then says "genuine, but not the one
        # accepted spelling" (n - s is the canonical twin), which an auditor needs to know.
        raise VerificationError(
            "ES256 signature matches but is in high-S form (s > n/2); only low-S is accepted",
            code=ErrorCode.JWS_HIGH_S,
        )
