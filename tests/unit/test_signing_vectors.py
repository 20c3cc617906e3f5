"""RFC 8037 known answers: our JOSE code must reproduce them byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tenantkeys import signing
from tenantkeys.errors import ErrorCode, InvalidRequest, VerificationError

pytestmark = pytest.mark.unit
VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "rfc8037-ed25519.json").read_text())


def rfc_key() -> signing.KeyMaterial:
    return signing.load("EdDSA", signing.b64url_decode(VECTORS["private_jwk"]["d"]))


def test_public_key_and_thumbprint_match_rfc8037() -> None:
    key = rfc_key()
    assert signing.public_jwk("EdDSA", key.public_bytes)["x"] == VECTORS["private_jwk"]["x"]
    assert key.kid == VECTORS["thumbprint_sha256"]


def test_compact_jws_matches_rfc8037_exactly() -> None:
    payload = VECTORS["jws"]["payload_utf8"].encode()
    jws = signing.sign_compact(rfc_key(), {"alg": "EdDSA"}, payload, detached=False)
    assert jws == VECTORS["jws"]["compact"]


def test_detached_form_drops_only_the_payload() -> None:
    payload = VECTORS["jws"]["payload_utf8"].encode()
    jws = signing.sign_compact(rfc_key(), {"alg": "EdDSA"}, payload)
    protected, middle, sig = jws.split(".")
    assert (protected, middle, sig) == (
        VECTORS["jws"]["protected_b64url"],
        "",
        VECTORS["jws"]["signature_b64url"],
    )


def test_verify_rfc_signature_and_reject_tampering() -> None:
    key = rfc_key()
    jws = signing.sign_compact(key, {"alg": "EdDSA", "kid": key.kid}, b"evidence")
    parsed = signing.parse_compact(jws)
    signing.verify_parsed(parsed, b"evidence", "EdDSA", key.public_bytes)
    with pytest.raises(VerificationError) as err:
        signing.verify_parsed(parsed, b"evidencE", "EdDSA", key.public_bytes)
    assert err.value.code == ErrorCode.SIGNATURE_INVALID


def test_es256_round_trip_and_thumbprint_shape() -> None:
    key, secret = signing.generate("ES256")
    again = signing.load("ES256", secret)
    assert again.kid == key.kid and len(key.kid) == 43
    jws = signing.sign_compact(key, {"alg": "ES256", "kid": key.kid}, b"x")
    signing.verify_parsed(signing.parse_compact(jws), b"x", "ES256", again.public_bytes)


def test_repr_of_key_material_shows_kid_not_secret() -> None:
    key = rfc_key()
    text = repr(key)
    assert key.kid in text
    assert VECTORS["private_jwk"]["d"] not in text and "private_key" not in text


@pytest.mark.parametrize(
    ("jws", "code"),
    [
        ("abc", ErrorCode.INVALID_JWS),
        ("a.b.c.d", ErrorCode.INVALID_JWS),
        ("!!!.x.y", ErrorCode.JWS_NONCANONICAL_ENCODING),
        ("e30..", ErrorCode.INVALID_JWS),  # no signature
        ("..AAAA", ErrorCode.INVALID_JWS),  # no header
        ("eyJhbGciOiJFZERTQSJ9..AAAA", ErrorCode.INVALID_JWS),  # no kid
        ("e30..AAAA", ErrorCode.INVALID_JWS),  # {} header
    ],
)
def test_malformed_jws_gets_its_code(jws: str, code: ErrorCode) -> None:
    with pytest.raises(InvalidRequest) as err:
        signing.parse_compact(jws)
    assert err.value.code == code
    assert "\n" not in err.value.one_line()


@pytest.mark.parametrize(
    "text",
    [
        "a+b",
        "ab==",
        "a b",
        "a/b",
        "abc!",
        "ab!!!!",
        "A",  # length 1 mod 4
        "AR",  # "A" with unused bits set: same byte as "AQ"
        "AAB",  # "AAA" with unused bits set
        " AQ",
        "AQ\n",
        "A\rQ",
        "A\x0bQ",
        "A\x0cQ",
        "A\tQ",
        "\uff21Q",  # fullwidth A
    ],
)
def test_malformed_base64url(text: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        signing.b64url_decode(text)
    assert err.value.code == ErrorCode.INVALID_ENCODING
    assert "\n" not in err.value.one_line()


@pytest.mark.parametrize(
    "data", [b"", b"\x00", b"\xff", b"\xff\xfe", b"\xfb\xff\xbf", bytes(range(256))]
)
def test_base64url_has_one_spelling_and_round_trips(data: bytes) -> None:
    text = signing.b64url(data)
    assert signing.b64url_defect(text) is None
    assert signing.b64url_decode(text) == data


def test_es256_signing_emits_only_low_s() -> None:
    key, _ = signing.generate("ES256")
    half = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551 // 2
    for i in range(64):  # unnormalised, all 64 low-S by chance has probability 2**-64
        jws = signing.sign_compact(key, {"alg": "ES256", "kid": key.kid}, b"%d" % i)
        parsed = signing.parse_compact(jws)
        assert int.from_bytes(parsed.signature[32:], "big") <= half
        signing.verify_parsed(parsed, b"%d" % i, "ES256", key.public_bytes)


def test_the_rfc8037_jws_passes_the_strict_rules() -> None:
    # parse_compact wants a kid, which the RFC's header lacks; every other rule is applied here.
    protected, payload, sig = VECTORS["jws"]["compact"].split(".")
    parsed = signing.ParsedJws(
        json.loads(signing.b64url_decode(protected)),
        protected,
        signing.b64url_decode(payload),
        signing.b64url_decode(sig),
    )
    signing.verify_parsed(
        parsed, VECTORS["jws"]["payload_utf8"].encode(), "EdDSA", rfc_key().public_bytes
    )
