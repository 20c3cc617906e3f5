"""Tenant isolation: a job for tenant A is only ever signed with A's key, whatever the input.

Swapped rows, forged kids, a JWS replayed under another tenant, and cache entries crafted to
collide or planted under another tenant's name: all refused. Hypothesis drives the job
arguments through the worker's decode path (:class:`tenantkeys.jobs.runner.JobRunner`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantkeys import jobs, signing
from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError, VerificationError
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.service import KeyService
from tests.security.hostile import count_case

pytestmark = pytest.mark.integration
TENANTS = ("alpha", "beta", "gamma")


def _header(jws: str) -> dict[str, object]:
    head = jws.split(".", maxsplit=1)[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def _kids(service: KeyService, tenant: str) -> set[str]:
    return {v.kid for v in service.store.versions(tenant, Purpose.SIGNING)}


def test_an_l2_record_of_tenant_b_planted_under_a_is_never_used_for_a(
    services: Callable[[], KeyService], l2_redis: tuple[redis.Redis, str]
) -> None:
    """Someone who can write Redis copies B's (valid, wrapped) L2 record under A's name."""
    client, prefix = l2_redis
    setup = services()
    for tenant in ("alpha", "beta"):
        setup.create_keys(tenant, ["signing"])
        setup.sign(tenant, b"fill L2")
    a_key, b_key = f"{prefix}:key:alpha:signing:active", f"{prefix}:key:beta:signing:active"
    assert client.get(b_key) is not None
    client.set(a_key, client.get(b_key))  # B's record where A's belongs

    fresh = services()  # another worker process: empty L1, reads L2 first
    signed = fresh.sign("alpha", b"evidence for alpha")
    assert signed.kid in _kids(fresh, "alpha") and signed.kid not in _kids(fresh, "beta")
    assert _header(signed.jws)[signing.TENANT_HEADER] == "alpha"
    fresh.verify("alpha", b"evidence for alpha", signed.jws)


def test_a_retired_or_foreign_purpose_record_in_the_active_slot_is_ignored(
    services: Callable[[], KeyService], l2_redis: tuple[redis.Redis, str]
) -> None:
    client, prefix = l2_redis
    setup = services()
    setup.create_keys("alpha")
    setup.sign("alpha", b"fill")
    setup.encrypt("alpha", b"fill")
    signing_key = f"{prefix}:key:alpha:signing:active"
    enc = setup.store.active("alpha", Purpose.ENCRYPTION)
    assert enc is not None
    from tenantkeys.keys.redis_cache import version_to_record

    client.set(signing_key, json.dumps(version_to_record(enc)))  # encryption key as signing
    fresh = services()
    signed = fresh.sign("alpha", b"x")
    assert signed.kid in _kids(fresh, "alpha")


def test_swapped_rows_are_refused_for_both_tenants(services: Callable[[], KeyService]) -> None:
    import sqlalchemy as sa

    from tenantkeys.keys.schema import key_versions as t

    service = services()
    for tenant in ("alpha", "beta"):
        service.create_keys(tenant, ["signing"])
    with service.store.engine.begin() as conn:
        rows = {
            r.tenant_id: r
            for r in conn.execute(
                sa.select(t.c.tenant_id, t.c.wrapped_secret, t.c.wrapped_data_key)
            )
        }
        for mine, theirs in (("alpha", "beta"), ("beta", "alpha")):
            conn.execute(
                t.update()
                .where(t.c.tenant_id == mine)
                .values(
                    wrapped_secret=rows[theirs].wrapped_secret,
                    wrapped_data_key=rows[theirs].wrapped_data_key,
                )
            )
    fresh = services()
    for tenant in ("alpha", "beta"):
        with pytest.raises(TenantKeysError) as refused:
            fresh.sign(tenant, b"x")
        assert refused.value.code in {ErrorCode.KMS_INVALID_CIPHERTEXT, ErrorCode.DECRYPT_FAILED}


def test_forged_kid_and_replayed_jws_are_refused(services: Callable[[], KeyService]) -> None:
    service = services()
    for tenant in TENANTS:
        service.create_keys(tenant, ["signing"])
    a = service.sign("alpha", b"payload")
    b = service.sign("beta", b"payload")
    # Replay A's JWS as B's: the tenant header says alpha.
    with pytest.raises(VerificationError) as replayed:
        service.verify("beta", b"payload", a.jws)
    assert replayed.value.code == ErrorCode.TENANT_MISMATCH
    # Forge: B's signature under a header claiming tenant alpha with B's kid.
    head = signing.b64url(
        json.dumps({"alg": "EdDSA", "kid": b.kid, signing.TENANT_HEADER: "alpha"}).encode()
    )
    forged = f"{head}..{b.jws.split('.')[2]}"
    with pytest.raises(VerificationError) as wrong_kid:
        service.verify("alpha", b"payload", forged)
    assert wrong_kid.value.code in {ErrorCode.UNKNOWN_KID, ErrorCode.SIGNATURE_INVALID}
    # Forge: A's kid in the header, B's signature bytes.
    head = signing.b64url(
        json.dumps({"alg": "EdDSA", "kid": a.kid, signing.TENANT_HEADER: "alpha"}).encode()
    )
    with pytest.raises(VerificationError):
        service.verify("alpha", b"payload", f"{head}..{b.jws.split('.')[2]}")


@st.composite
def job_kwargs(draw: st.DrawFn) -> dict[str, object]:
    tenant = draw(st.sampled_from(TENANTS) | st.text(max_size=70))
    kwargs: dict[str, object] = {
        "tenant_id": tenant,
        "payload": draw(
            st.binary(max_size=64).map(jobs.encode_payload) | st.text(max_size=20) | st.none()
        ),
    }
    if draw(st.booleans()):
        kwargs["canonical_json"] = draw(st.booleans() | st.integers() | st.text(max_size=5))
    if draw(st.booleans()):  # a field that names another tenant or kid must change nothing
        kwargs[draw(st.sampled_from(["kid", "tenant", "tenant_id ", "key"]))] = draw(
            st.sampled_from(TENANTS)
        )
    return kwargs


ISOLATION_EXAMPLES = 1500


def test_a_job_is_only_ever_signed_with_its_own_tenant_key(
    services: Callable[[], KeyService],
) -> None:
    from tests.security.hostile import runner_for

    service = services()
    for tenant in TENANTS:
        service.create_keys(tenant, ["signing"])
    kids = {tenant: _kids(service, tenant) for tenant in TENANTS}
    runner = runner_for(service)

    @settings(
        max_examples=ISOLATION_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(job_kwargs())
    def check(kwargs: dict[str, object]) -> None:
        count_case("isolation: job arguments")
        outcome = runner.sign(kwargs, job_id="job")
        envelope = outcome.result
        assert envelope is not None and outcome.retry_in is None
        if envelope["ok"]:
            result = envelope["result"]
            tenant = kwargs["tenant_id"]
            assert result["tenant_id"] == tenant
            assert result["kid"] in kids[tenant]  # type: ignore[index]
            assert _header(result["jws"])[signing.TENANT_HEADER] == tenant
        else:
            assert str(envelope["error"]["code"]).startswith("TK-")

    check()


def test_cache_key_names_cannot_collide_across_tenants() -> None:
    """L2 key names embed the tenant id; only valid ids reach them, and valid ids cannot
    contain the ':' separator, so two (tenant, purpose) pairs never share a name."""
    from tenantkeys.keys.model import validate_tenant_id
    from tenantkeys.keys.redis_cache import WrappedKeyCache

    cache = WrappedKeyCache.__new__(WrappedKeyCache)
    cache.prefix = "p"
    seen: dict[str, tuple[str, str]] = {}

    @settings(max_examples=1000, deadline=None, database=None)
    @given(st.text(min_size=1, max_size=70), st.sampled_from([p.value for p in Purpose]))
    def check(tenant: str, purpose: str) -> None:
        count_case("isolation: cache key names")
        try:
            validate_tenant_id(tenant)
        except InvalidRequest:
            return
        name = cache._key(tenant, purpose)
        assert seen.setdefault(name, (tenant, purpose)) == (tenant, purpose)
        assert name.count(":") == 4

    check()
