"""JWS signing and strict verification (RFC 7515; Ed25519 as RFC 9864 ``Ed25519`` or RFC 8037
``EdDSA``; ES256), JWK thumbprints, JWKS, RFC 8785 canonical JSON.

Pure functions over key objects: no storage, no KMS. :mod:`.jws` makes signatures and the JWKS
that verifies them; :mod:`.strict` verifies with exactly one accepted spelling per signature
(docs/verifying.md); :mod:`.canonical` is the one RFC 8785 implementation.
"""

from __future__ import annotations

from tenantkeys.signing.canonical import CANONICAL_HEADER, MAX_JSON_DEPTH, canonicalize
from tenantkeys.signing.jws import (
    ALGORITHMS,
    ED25519_ALGORITHMS,
    MAX_JWS_CHARS,
    TENANT_HEADER,
    KeyMaterial,
    Signature,
    b64url,
    b64url_decode,
    b64url_defect,
    detached_signer,
    encode_protected,
    generate,
    jwks,
    load,
    public_jwk,
    sign_compact,
    sign_encoded,
    signing_input,
    thumbprint,
)
from tenantkeys.signing.strict import ParsedJws, parse_compact, verify_parsed

__all__ = [
    "ALGORITHMS",
    "CANONICAL_HEADER",
    "ED25519_ALGORITHMS",
    "MAX_JSON_DEPTH",
    "MAX_JWS_CHARS",
    "TENANT_HEADER",
    "KeyMaterial",
    "ParsedJws",
    "Signature",
    "b64url",
    "b64url_decode",
    "b64url_defect",
    "canonicalize",
    "detached_signer",
    "encode_protected",
    "generate",
    "jwks",
    "load",
    "parse_compact",
    "public_jwk",
    "sign_compact",
    "sign_encoded",
    "signing_input",
    "thumbprint",
    "verify_parsed",
]
