"""Tenant ids, purposes, and the L1 cache's bounds, TTL and invalidation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.model import parse_purpose, validate_tenant_id

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("tenant", ["a", "acme", "Acme-01", "t.1_x", "9" * 64])
def test_valid_tenant_ids(tenant: str) -> None:
    assert validate_tenant_id(tenant) == tenant


@pytest.mark.parametrize(
    "tenant", ["", "-acme", ".acme", "a" * 65, "a b", "a:b", "a/b", "é", "a\n", None, 7, b"acme"]
)
def test_invalid_tenant_ids(tenant: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_tenant_id(tenant)
    assert err.value.code == ErrorCode.INVALID_TENANT
    assert "\n" not in err.value.one_line()


@given(st.text(max_size=80))
def test_tenant_validation_never_crashes_and_never_admits_a_colon(text: str) -> None:
    try:
        validate_tenant_id(text)
    except InvalidRequest as err:
        assert err.code == ErrorCode.INVALID_TENANT
    else:
        assert ":" not in text and 1 <= len(text) <= 64


def test_purpose_parsing() -> None:
    assert parse_purpose("signing").value == "signing"
    with pytest.raises(InvalidRequest) as err:
        parse_purpose("mining")
    assert err.value.code == ErrorCode.INVALID_PURPOSE


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_l1_ttl_expires_entries() -> None:
    clock = Clock()
    cache: LocalKeyCache[str] = LocalKeyCache(10, 5, clock=clock)
    cache.put(("t", "signing", "active"), "v", scope=("t", "signing"), generation=0)
    assert cache.get(("t", "signing", "active")) == "v"
    clock.now = 10.5
    assert cache.get(("t", "signing", "active")) is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_l1_size_cap_evicts_least_recently_used() -> None:
    cache: LocalKeyCache[int] = LocalKeyCache(100, 2)
    for i in range(3):
        cache.put((f"t{i}", "signing"), i, scope=(f"t{i}", "signing"), generation=0)
    assert len(cache) == 2
    assert cache.get(("t0", "signing")) is None
    assert cache.get(("t2", "signing")) == 2


def test_l1_invalidation_drops_entries_and_refuses_racing_fills() -> None:
    cache: LocalKeyCache[str] = LocalKeyCache(100, 10)
    generation = cache.generation("t", "signing")
    cache.put(("t", "signing", "active"), "old", scope=("t", "signing"), generation=generation)
    cache.put(("u", "signing", "active"), "other", scope=("u", "signing"), generation=0)
    cache.invalidate("t", "signing")
    assert cache.get(("t", "signing", "active")) is None
    assert cache.get(("u", "signing", "active")) == "other"
    # A fill that read the store before the invalidation must not land afterwards.
    cache.put(("t", "signing", "active"), "stale", scope=("t", "signing"), generation=generation)
    assert cache.get(("t", "signing", "active")) is None


def test_l1_zero_ttl_turns_it_off() -> None:
    cache: LocalKeyCache[str] = LocalKeyCache(0, 10)
    cache.put(("t", "signing"), "v", scope=("t", "signing"), generation=0)
    assert cache.get(("t", "signing")) is None


@pytest.mark.parametrize(("ttl", "size"), [(-1, 10), (10, 0)])
def test_l1_bounds_are_validated_at_construction(ttl: float, size: int) -> None:
    with pytest.raises(ValueError):
        LocalKeyCache(ttl, size)
