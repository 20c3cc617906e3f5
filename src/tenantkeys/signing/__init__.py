"""JWS signing and strict verification (RFC 7515, RFC 8037 EdDSA, ES256), JWK thumbprints, JWKS.

Pure functions over key objects: no storage, no KMS. :mod:`.jws` makes signatures and the JWKS
that verifies them; :mod:`.strict` verifies with exactly one accepted spelling per signature
(docs/verifying.md).
"""

from __future__ import annotations

from tenantkeys.signing.jws import (
    ALGORITHMS,
    MAX_JWS_CHARS,
    TENANT_HEADER,
    KeyMaterial,
    Signature,
    b64url,
    b64url_decode,
    b64url_defect,
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
    "MAX_JWS_CHARS",
    "TENANT_HEADER",
    "KeyMaterial",
    "ParsedJws",
    "Signature",
    "b64url",
    "b64url_decode",
    "b64url_defect",
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
