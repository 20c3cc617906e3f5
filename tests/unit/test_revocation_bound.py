"""The bounded revocation delay: a process that missed an invalidation stops using the old key
within ``key_confirm_seconds``, for one Redis GET per key per interval (fakeredis, fake clock).

Process A rotates and revokes; process B (its own L1, its subscription stopped, so it never
hears the invalidation) signs. Time is the L1's clock, moved by hand: no sleeps.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from tenantkeys.config import load_settings
from tenantkeys.config.concerns import RedisDownPolicy
from tenantkeys.errors import StoreUnavailable
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.kms import ProviderSet
from tenantkeys.keys.material import UnlockedKey
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.redis_cache import WrappedKeyCache
from tenantkeys.keys.runtime import build_runtime
from tenantkeys.keys.service import KeyService, KeyServiceOptions
from tenantkeys.keys.store import KeyStore
from tenantkeys.providers.local import LocalProvider
from tests.helpers import StatementCounter

pytestmark = pytest.mark.unit
CONFIRM = 5.0
TTL = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class CountingRedis(fakeredis.FakeRedis):
    """fakeredis that counts the commands it is sent, and can be switched off (down)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: Counter[str] = Counter()
        self.down = False

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.down:
            raise redis.ConnectionError("Redis is down (test)")
        self.commands[str(args[0]).upper()] += 1
        return super().execute_command(*args, **options)


class World:
    """One key store, one Redis server, a rotating process A and a signing process B."""

    def __init__(self, tmp_path: Path, policy: RedisDownPolicy = "availability") -> None:
        self.db = f"sqlite:///{tmp_path / 'k.db'}"
        self.master = tmp_path / "m.key"
        self.server = fakeredis.FakeServer()
        self.clock = Clock()
        KeyStore.from_url(self.db).migrate()
        self.a = self.service(fakeredis.FakeRedis(server=self.server), confirm=None)
        self.a.create_keys("acme")
        self.b_redis = CountingRedis(server=self.server)
        self.b = self.service(self.b_redis, confirm=CONFIRM, policy=policy)

    def service(
        self,
        client: redis.Redis | None,
        *,
        confirm: float | None,
        policy: RedisDownPolicy = "availability",
    ) -> KeyService:
        l1: LocalKeyCache[UnlockedKey] = LocalKeyCache(
            TTL, 100, clock=self.clock, confirm_seconds=confirm
        )
        svc = KeyService(
            KeyStore.from_url(self.db),
            ProviderSet.of(LocalProvider(self.master)),
            l1,
            None,  # so no subscription is made: neither process ever hears an invalidation
            KeyServiceOptions(key_confirm_redis_down=policy),
        )
        svc.l2 = WrappedKeyCache(client, "tk", 3600, clock=self.clock) if client else None
        return svc

    def b_kid(self) -> str:
        return self.b.sign("acme", b"p").kid

    def revoke_active(self) -> str:
        """A revokes the active signing key (a new one replaces it); returns the new kid."""
        old = self.a.store.active("acme", Purpose.SIGNING)
        assert old is not None
        self.a.revoke("acme", old.kid)
        new = self.a.store.active("acme", Purpose.SIGNING)
        assert new is not None
        return new.kid

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


# -- the L1 bookkeeping ----------------------------------------------------------------------


def test_a_value_is_due_for_confirmation_after_the_interval_and_the_check_is_claimed() -> None:
    clock = Clock()
    cache: LocalKeyCache[str] = LocalKeyCache(TTL, 10, clock, confirm_seconds=CONFIRM)
    key = ("t", "signing", "active")
    cache.put(key, "v", scope=("t", "signing"), generation=0, redis_generation="3")
    clock.now += CONFIRM - 0.001
    assert cache.confirmation_due(key) is None
    clock.now += 0.001
    due = cache.confirmation_due(key)
    assert due is not None and due.redis_generation == "3"
    assert cache.confirmation_due(key) is None  # claimed: a concurrent caller does not check too
    cache.confirm(key, due, "4")
    clock.now += CONFIRM
    again = cache.confirmation_due(key)
    assert again is not None and again.redis_generation == "4"


def test_the_interval_counts_from_when_the_generation_was_read_not_when_the_kms_answered() -> None:
    clock = Clock()
    cache: LocalKeyCache[str] = LocalKeyCache(TTL, 10, clock, confirm_seconds=CONFIRM)
    read_at = cache.now()
    clock.now += 4.0  # a slow KMS unwrap
    key = ("t", "signing", "active")
    cache.put(key, "v", scope=("t", "signing"), generation=0, redis_generation="1", read_at=read_at)
    clock.now += 1.0
    assert cache.confirmation_due(key) is not None


def test_a_confirmation_of_a_value_that_was_refilled_meanwhile_is_ignored() -> None:
    clock = Clock()
    cache: LocalKeyCache[str] = LocalKeyCache(TTL, 10, clock, confirm_seconds=CONFIRM)
    key, scope = ("t", "signing", "active"), ("t", "signing")
    cache.put(key, "old", scope=scope, generation=0, redis_generation="1")
    clock.now += CONFIRM
    due = cache.confirmation_due(key)
    assert due is not None
    cache.invalidate(*scope)
    cache.put(key, "new", scope=scope, generation=cache.generation(*scope), redis_generation="2")
    cache.confirm(key, due, "9")  # about "old": must not vouch for "new" under generation 9
    clock.now += CONFIRM
    again = cache.confirmation_due(key)
    assert again is not None and again.redis_generation == "2"


def test_concurrent_users_of_a_due_key_make_one_check() -> None:
    clock = Clock()
    cache: LocalKeyCache[str] = LocalKeyCache(TTL, 10, clock, confirm_seconds=CONFIRM)
    key = ("t", "signing", "active")
    cache.put(key, "v", scope=("t", "signing"), generation=0, redis_generation="1")
    clock.now += CONFIRM
    claims: list[object] = []
    start = threading.Barrier(8)

    def use() -> None:
        start.wait()
        if cache.confirmation_due(key) is not None:
            claims.append(1)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claims) == 1


def test_without_confirm_seconds_nothing_is_ever_due() -> None:
    clock = Clock()
    cache: LocalKeyCache[str] = LocalKeyCache(TTL, 10, clock)
    cache.put(("t", "signing", "active"), "v", scope=("t", "signing"), generation=0)
    clock.now += TTL - 1
    assert cache.confirmation_due(("t", "signing", "active")) is None


@pytest.mark.parametrize("confirm", [0, -1.0])
def test_confirm_seconds_is_validated_at_construction(confirm: float) -> None:
    with pytest.raises(ValueError, match="confirm_seconds"):
        LocalKeyCache(TTL, 10, confirm_seconds=confirm)


# -- the bound ---------------------------------------------------------------------------------


def test_a_process_that_missed_the_revocation_stops_using_the_key_within_the_bound(
    world: World,
) -> None:
    old = world.b_kid()  # B caches the key at t0 (generation read then)
    world.clock.now += 1.0
    new = world.revoke_active()  # B hears nothing
    step = 0.25
    switched_after = None
    for i in range(1, 100):
        world.clock.now += step
        if world.b_kid() == new:
            switched_after = 1.0 + i * step  # seconds since B read the key
            break
        assert world.b_kid() == old
    assert switched_after is not None
    assert switched_after <= CONFIRM  # the bound, counted from B's read of the generation


def test_the_check_costs_one_get_per_interval_not_one_per_signature(world: World) -> None:
    world.b_kid()
    world.b_redis.commands.clear()
    start = world.clock.now
    for i in range(6_001):  # 6,001 signatures, one every 10 ms over one simulated minute
        world.clock.now = start + i / 100
        world.b.sign("acme", b"p")
    # One GET of the generation counter per interval, nothing else: 60 s / 5 s = 12 checks.
    assert dict(world.b_redis.commands) == {"GET": 12}
    assert world.b.providers.total_calls() == 1  # the first unwrap only


def test_a_missed_rotation_is_caught_like_a_revocation(world: World) -> None:
    old = world.b_kid()
    world.a.rotate("acme", "signing")
    assert world.b_kid() == old
    world.clock.now += CONFIRM
    assert world.b_kid() != old


def test_a_check_that_finds_the_generation_unchanged_keeps_the_key_without_a_kms_call(
    world: World,
) -> None:
    old = world.b_kid()
    for _ in range(5):
        world.clock.now += CONFIRM
        assert world.b_kid() == old
    assert world.b.providers.total_calls() == 1


# -- Redis down when the check is due ----------------------------------------------------------


def test_availability_signs_on_with_the_cached_key_until_the_l1_ttl(world: World) -> None:
    old = world.b_kid()
    world.b_redis.down = True
    new = world.revoke_active()  # A's Redis is up: the generation moves, B cannot see it
    kms = world.b.providers.total_calls()
    for _ in range(int(TTL / CONFIRM) - 1):
        world.clock.now += CONFIRM
        assert world.b_kid() == old  # the documented worst case: up to the L1 TTL
    world.clock.now += CONFIRM
    assert world.b_kid() == new  # the entry expired; the store had the new key
    assert world.b.providers.total_calls() == kms + 1


def test_safety_confirms_with_the_store_and_stops_using_the_key_within_the_bound(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, policy="safety")
    try:
        old = world.b_kid()
        world.b_redis.down = True
        world.clock.now += CONFIRM
        statements = StatementCounter(world.b.store.engine)
        assert world.b_kid() == old  # confirmed by the store: one SQL read, no KMS call
        assert statements.count == 1 and world.b.providers.total_calls() == 1
        for _ in range(20):
            world.b_kid()  # within the interval: no more reads
        assert statements.count == 1
        new = world.revoke_active()
        world.clock.now += CONFIRM
        assert world.b_kid() == new
    finally:
        world.close()


def test_safety_fails_the_signature_when_neither_redis_nor_the_store_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path, policy="safety")
    try:
        world.b_kid()
        world.b_redis.down = True
        world.clock.now += CONFIRM - 0.5
        world.b_kid()  # within the bound: the cached key signs

        def unreachable(*_args: Any) -> None:
            raise StoreUnavailable("key store unreachable (test)")

        monkeypatch.setattr(world.b.store, "active", unreachable)
        world.clock.now += 0.5
        with pytest.raises(StoreUnavailable):
            world.b_kid()
        assert len(world.b.l1) == 0  # dropped: the next signature does not use it either
        with pytest.raises(StoreUnavailable):
            world.b_kid()
    finally:
        world.close()


def test_availability_signs_on_when_neither_redis_nor_the_store_answers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = world.b_kid()
    world.b_redis.down = True

    def unreachable(*_args: Any) -> None:
        raise StoreUnavailable("key store unreachable (test)")

    monkeypatch.setattr(world.b.store, "active", unreachable)
    world.clock.now += CONFIRM
    assert world.b_kid() == old


def test_a_key_read_while_redis_was_down_is_confirmed_by_the_store_once_redis_is_back(
    world: World,
) -> None:
    world.b_redis.down = True
    old = world.b_kid()  # read from the store: no generation to compare with later
    world.b_redis.down = False
    world.clock.now += WrappedKeyCache.RETRY_AFTER_SECONDS
    statements = StatementCounter(world.b.store.engine)
    assert world.b_kid() == old
    assert statements.count == 1 and world.b.providers.total_calls() == 1
    new = world.revoke_active()
    world.clock.now += CONFIRM
    assert world.b_kid() == new  # from now on the generation is compared


def test_redis_back_after_the_revocation_it_missed_drops_the_key(world: World) -> None:
    world.b_kid()
    world.b_redis.down = True
    new = world.revoke_active()
    world.clock.now += CONFIRM  # a check while down: signs on (availability)
    world.b_kid()
    world.b_redis.down = False
    world.clock.now += CONFIRM
    assert world.b_kid() == new


# -- settings reach the service ----------------------------------------------------------------


def test_the_settings_and_their_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("TENANTKEYS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    defaults = load_settings()
    assert defaults.key_confirm_seconds == 5.0
    assert defaults.key_confirm_redis_down == "availability"
    monkeypatch.setenv("TENANTKEYS_KEY_CONFIRM_SECONDS", "2.5")
    monkeypatch.setenv("TENANTKEYS_KEY_CONFIRM_REDIS_DOWN", "safety")
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'k.db'}",
        redis_url="redis://127.0.0.1:1/0",  # nothing listens: no L2, built anyway
        local_master_key_file=str(tmp_path / "m.key"),
    )
    runtime = build_runtime(settings)
    try:
        assert runtime.service.l1.confirm_seconds == 2.5
        assert runtime.service.options.key_confirm_redis_down == "safety"
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [("TENANTKEYS_KEY_CONFIRM_SECONDS", "0"), ("TENANTKEYS_KEY_CONFIRM_REDIS_DOWN", "maybe")],
)
def test_bad_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    from tenantkeys.errors import ConfigurationError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        load_settings()
