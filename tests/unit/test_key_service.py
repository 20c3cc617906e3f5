"""KeyService on the local provider and SQLite: create, sign, rotate, revoke, encrypt."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tenantkeys.errors import (
    ErrorCode,
    IntegrityError,
    InvalidRequest,
    KeyNotFound,
    KeyRevoked,
    VerificationError,
)
from tenantkeys.keys.envelope import Sealed, open_sealed
from tenantkeys.keys.model import Purpose, Status
from tenantkeys.keys.service import KeyService
from tenantkeys.providers.local import LocalProvider
from tests.helpers import StatementCounter, make_service

pytestmark = pytest.mark.unit


@pytest.fixture
def service(tmp_path: Path) -> KeyService:
    svc = make_service(f"sqlite:///{tmp_path / 'k.db'}", LocalProvider(tmp_path / "m.key"))
    yield svc
    svc.close()


def test_create_is_idempotent(service: KeyService) -> None:
    first = service.create_keys("acme")
    again = service.create_keys("acme")
    assert [v.kid for v in first] == [v.kid for v in again]
    assert {v.purpose for v in first} == {Purpose.SIGNING, Purpose.ENCRYPTION}
    assert all(v.status is Status.ACTIVE and v.version == 1 for v in first)


def test_sign_is_deterministic_and_verifies(service: KeyService) -> None:
    service.create_keys("acme")
    a = service.sign("acme", b"evidence")
    b = service.sign("acme", b"evidence")
    assert a.jws == b.jws  # redelivered jobs are harmless
    assert a.jws.split(".")[1] == ""  # detached by default
    header = json.loads(__import__("base64").urlsafe_b64decode(a.jws.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "kid": a.kid, "tenant_id": "acme"}
    assert service.verify("acme", b"evidence", a.jws).status == "active"


def test_canonical_json_survives_reserialisation(service: KeyService) -> None:
    service.create_keys("acme")
    sig = service.sign("acme", b'{"b": 1, "a": [1.0, "x"]}', canonical_json=True)
    service.verify("acme", b'{"a":[1,"x"],"b":1}', sig.jws, canonical_json=True)
    with pytest.raises(InvalidRequest) as err:
        service.sign("acme", b"{not json", canonical_json=True)
    assert err.value.code == ErrorCode.INVALID_JSON


def test_rotation_keeps_old_signatures_verifying_and_destroys_old_private_key(
    service: KeyService,
) -> None:
    service.create_keys("acme")
    old = service.sign("acme", b"p")
    result = service.rotate("acme", "signing")
    assert (result.rotated, result.old_version, result.new_version) == (True, 1, 2)
    new = service.sign("acme", b"p")
    assert new.kid != old.kid
    assert service.verify("acme", b"p", old.jws).status == "retired"
    retired = service.store.by_kid("acme", old.kid)
    assert (
        retired is not None and retired.wrapped_secret is None and retired.wrapped_data_key is None
    )
    assert retired.public_key is not None
    # A rotation that expected version 1 is now a no-op: never twice for the same period.
    assert service.rotate("acme", "signing", expected_version=1).rotated is False


def test_rotation_only_if_due(service: KeyService) -> None:
    service.create_keys("acme")
    assert service.rotate("acme", "signing", only_if_due=True).reason == "not due"
    service.clock = lambda: datetime.now(UTC) + timedelta(days=91)
    assert service.rotate("acme", "signing", only_if_due=True).rotated


def test_revoked_key_refuses_verification_and_active_is_replaced(service: KeyService) -> None:
    service.create_keys("acme")
    sig = service.sign("acme", b"p")
    revoked = service.revoke("acme", sig.kid)
    assert revoked.status is Status.REVOKED
    with pytest.raises(KeyRevoked) as err:
        service.verify("acme", b"p", sig.jws)
    assert err.value.code == ErrorCode.KEY_REVOKED
    replacement = service.sign("acme", b"p")
    assert replacement.kid != sig.kid
    jwks = service.jwks("acme")
    assert [k["kid"] for k in jwks["keys"]] == [replacement.kid]
    assert jwks["revoked"] == [{"kid": sig.kid, "status": "revoked"}]


def test_signature_of_one_tenant_never_verifies_as_another(service: KeyService) -> None:
    service.create_keys("alpha")
    service.create_keys("beta")
    sig = service.sign("alpha", b"p")
    with pytest.raises(VerificationError) as err:
        service.verify("beta", b"p", sig.jws)
    assert err.value.code == ErrorCode.TENANT_MISMATCH
    # Forge the tenant header to claim beta: the kid is unknown to beta.
    import base64

    header = (
        base64.urlsafe_b64encode(
            json.dumps({"alg": "EdDSA", "kid": sig.kid, "tenant_id": "beta"}).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    forged = header + "." + sig.jws.split(".", 1)[1]
    with pytest.raises(VerificationError) as err:
        service.verify("beta", b"p", forged)
    assert err.value.code == ErrorCode.UNKNOWN_KID


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda s: s.sign("bad tenant", b"p"), ErrorCode.INVALID_TENANT),
        (lambda s: s.sign("acme", b"x" * 2049), ErrorCode.PAYLOAD_TOO_LARGE),
        (lambda s: s.sign("acme", "text"), ErrorCode.INVALID_ARGUMENT),
        (lambda s: s.sign("nobody", b"p"), ErrorCode.KEY_NOT_FOUND),
        (lambda s: s.verify("acme", b"p", "not-a-jws"), ErrorCode.INVALID_JWS),
        (lambda s: s.verify("acme", b"p", "e30.e30.e30"), ErrorCode.INVALID_JWS),
        (lambda s: s.revoke("acme", "no-such-kid"), ErrorCode.UNKNOWN_KID),
        (lambda s: s.decrypt("acme", b"garbage"), ErrorCode.INVALID_ENCODING),
    ],
)
def test_bad_input_gets_its_code(tmp_path: Path, call, code: ErrorCode) -> None:  # type: ignore[no-untyped-def]
    svc = make_service(
        f"sqlite:///{tmp_path / 'k.db'}", LocalProvider(tmp_path / "m.key"), max_payload_bytes=2048
    )
    svc.create_keys("acme")
    with pytest.raises(InvalidRequest) as err:
        call(svc)
    assert err.value.code == code
    assert "Traceback" not in err.value.one_line() and "\n" not in err.value.one_line()
    svc.close()


def test_unknown_kid_in_a_valid_jws(service: KeyService) -> None:
    service.create_keys("acme")
    sig = service.sign("acme", b"p")
    service.rotate("acme", "signing")
    service.store.engine.dispose()
    import base64

    header = (
        base64.urlsafe_b64encode(
            json.dumps({"alg": "EdDSA", "kid": "A" * 43, "tenant_id": "acme"}).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(VerificationError) as err:
        service.verify("acme", b"p", header + "." + sig.jws.split(".", 1)[1])
    assert err.value.code == ErrorCode.UNKNOWN_KID


def test_encryption_helpers_bind_associated_data_and_survive_rotation(service: KeyService) -> None:
    service.create_keys("acme")
    service.create_keys("beta")
    blob = service.encrypt("acme", b"record", b"invoice-7")
    service.rotate("acme", "encryption")
    assert service.decrypt("acme", blob, b"invoice-7") == b"record"
    for tenant, aad in (("acme", b"invoice-8"), ("beta", b"invoice-7")):
        with pytest.raises((IntegrityError, KeyNotFound)):
            service.decrypt(tenant, blob, aad)


def test_l1_hit_makes_no_kms_call_and_no_database_read(service: KeyService) -> None:
    service.create_keys("acme")
    service.sign("acme", b"warm")
    counter = StatementCounter(service.store.engine)
    kms_before = service.providers.total_calls()
    for i in range(50):
        service.sign("acme", f"p{i}".encode())
    assert counter.count == 0
    assert service.providers.total_calls() == kms_before
    assert service.l1.stats.hits >= 50


def test_swapped_rows_fail_to_open(service: KeyService) -> None:
    service.create_keys("alpha")
    service.create_keys("beta")
    a = service.store.active("alpha", Purpose.SIGNING)
    b = service.store.active("beta", Purpose.SIGNING)
    assert a is not None and b is not None
    provider = service.providers.current
    for row, other in ((a, b), (b, a)):
        assert row.wrapped_secret and row.wrapped_data_key
        stolen = Sealed(row.wrapped_secret, row.wrapped_data_key)
        with pytest.raises(IntegrityError):
            open_sealed(stolen, other.context, provider)
