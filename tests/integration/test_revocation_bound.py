"""The bounded revocation delay on a real Redis.

Process B (a KeyService with its own L1) reaches Redis through a TCP proxy; stopping the proxy
cuts B's pub/sub subscription and its commands for real, while process A (direct to Redis)
revokes. B's L1 runs on a clock the test moves, so the bound is measured, not slept through;
one test also measures it in real time. Redis's own MONITOR counts what B sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tenantkeys.config.concerns import RedisDownPolicy
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.kms import ProviderSet
from tenantkeys.keys.material import UnlockedKey
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.redis_cache import WrappedKeyCache
from tenantkeys.keys.runtime import REDIS_SOCKET_TIMEOUT
from tenantkeys.keys.service import KeyService, KeyServiceOptions
from tenantkeys.keys.store import KeyStore
from tenantkeys.providers.local import LocalProvider
from tests.conftest import REDIS_PORT
from tests.e2e.harness import TcpProxy, wait_for

pytestmark = pytest.mark.integration
CONFIRM = 5.0
TTL = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Deployment:
    """A key store, process A on Redis directly, process B on Redis through a proxy."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        prefix: str,
        policy: RedisDownPolicy,
        clock: Callable[[], float],
        confirm: float = CONFIRM,
    ) -> None:
        self.redis_url, self.prefix = redis_url, prefix
        db, master = f"sqlite:///{tmp_path / 'k.db'}", tmp_path / "m.key"
        KeyStore.from_url(db).migrate()
        self.direct = redis.Redis.from_url(redis_url)
        self.a = KeyService(
            KeyStore.from_url(db), ProviderSet.of(LocalProvider(master)), LocalKeyCache(TTL, 100)
        )
        self.a.l2 = WrappedKeyCache(self.direct, prefix, 3600)  # A publishes; it never listens
        self.a.create_keys("acme")
        self.proxy = TcpProxy(REDIS_PORT)
        self.proxy.start()
        # As runtime.redis_client: fail fast, one quick retry.
        self.b_redis = redis.Redis.from_url(
            redis_url.replace(f":{REDIS_PORT}/", f":{self.proxy.port}/"),
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )
        l1: LocalKeyCache[UnlockedKey] = LocalKeyCache(
            TTL, 100, clock=clock, confirm_seconds=confirm
        )
        self.b = KeyService(
            KeyStore.from_url(db),
            ProviderSet.of(LocalProvider(master)),
            l1,
            WrappedKeyCache(self.b_redis, prefix, 3600, clock=clock),
            KeyServiceOptions(key_confirm_redis_down=policy),
        )
        assert self.b._listener is not None and self.b._listener.wait_ready()
        self.channel = f"{prefix}:invalidate"
        wait_for(lambda: self.subscribers() == 1, 5, "B's subscription")

    def subscribers(self) -> int:
        return int(dict(self.direct.pubsub_numsub(self.channel))[self.channel.encode()])

    def cut(self) -> None:
        """B loses Redis: its subscription and its command connection are cut."""
        self.proxy.stop()
        wait_for(lambda: self.subscribers() == 0, 5, "Redis to drop B's subscription")

    def b_kid(self) -> str:
        return self.b.sign("acme", b"p").kid

    def revoke_active(self) -> str:
        old = self.a.store.active("acme", Purpose.SIGNING)
        assert old is not None
        self.a.revoke("acme", old.kid)
        new = self.a.store.active("acme", Purpose.SIGNING)
        assert new is not None and new.kid != old.kid
        return new.kid

    def close(self) -> None:
        self.b.close()
        self.a.close()
        self.proxy.stop()
        self.b_redis.close()
        self.direct.close()


@pytest.fixture
def deploy(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(
        policy: RedisDownPolicy = "availability",
        *,
        clock: Callable[[], float],
        confirm: float = CONFIRM,
    ) -> Deployment:
        made.append(Deployment(tmp_path, redis_url, redis_prefix, policy, clock, confirm))
        return made[-1]

    yield make
    for deployment in made:
        deployment.close()


def test_a_process_whose_subscription_was_cut_stops_using_a_revoked_key_within_the_bound(
    deploy: Callable[..., Deployment],
) -> None:
    clock = Clock()
    d = deploy(clock=clock)
    old = d.b_kid()  # B reads the key (and its generation) at t0
    d.cut()
    clock.now += 1.0
    new = d.revoke_active()  # published to nobody: B's subscription is gone
    d.proxy.start()  # Redis is back for B; the message is not
    step, waited = 0.25, 1.0
    while d.b_kid() == old:
        assert waited < CONFIRM, "B still signs with the revoked key past the bound"
        clock.now += step
        waited += step
    assert d.b_kid() == new
    assert waited <= CONFIRM  # measured: the old key signed for at most CONFIRM after t0


def test_without_a_cut_the_invalidation_arrives_first(deploy: Callable[..., Deployment]) -> None:
    """The control: B's subscription works, so it switches before any check is due."""
    d = deploy(clock=Clock())
    old = d.b_kid()
    new = d.revoke_active()
    wait_for(lambda: d.b_kid() != old, 5, "B to hear the invalidation")
    assert d.b_kid() == new


def test_the_bound_in_real_time(deploy: Callable[..., Deployment]) -> None:
    confirm = 0.3
    d = deploy(clock=time.monotonic, confirm=confirm)
    old = d.b_kid()
    d.cut()
    new = d.revoke_active()
    revoked_at = time.monotonic()
    d.proxy.start()
    while (kid := d.b_kid()) == old:
        assert time.monotonic() - revoked_at < 10, "B still signs with the revoked key"
        time.sleep(0.005)
    switched = time.monotonic() - revoked_at
    assert kid == new
    # Within the bound, plus at most one Redis reconnect (through the proxy) and scheduling.
    assert switched <= confirm + REDIS_SOCKET_TIMEOUT, switched


def test_the_check_costs_one_get_per_interval_counted_by_redis(
    deploy: Callable[..., Deployment], redis_prefix: str
) -> None:
    clock = Clock()
    d = deploy(clock=clock)
    d.b_kid()
    sentinel = f"{redis_prefix}:sentinel"
    seen: list[str] = []
    with d.direct.monitor() as monitor:
        start = clock.now
        for i in range(2_001):  # 2,001 signatures, one every 10 ms over 20 s of B's clock
            clock.now = start + i / 100
            d.b.sign("acme", b"p")
        d.direct.get(sentinel)
        while True:
            command = str(monitor.next_command()["command"])
            if sentinel in command:
                break
            if redis_prefix in command:
                seen.append(command)
    gen_key = f"{redis_prefix}:gen:acme:signing"
    # One GET of the generation counter per 5 s interval (at 5, 10, 15, 20 s); nothing else.
    assert seen == [f"GET {gen_key}"] * 4


def test_redis_down_availability_signs_on_until_the_l1_ttl(
    deploy: Callable[..., Deployment],
) -> None:
    clock = Clock()
    d = deploy("availability", clock=clock)
    old = d.b_kid()
    d.cut()
    new = d.revoke_active()  # A reaches Redis: the generation moves; B cannot read it
    while clock.now + CONFIRM < 1_000.0 + TTL:
        clock.now += CONFIRM
        assert d.b_kid() == old  # the documented worst case under availability: the L1 TTL
    clock.now = 1_000.0 + TTL
    assert d.b_kid() == new  # the entry expired; the key store had the new key


def test_redis_down_safety_stops_using_the_revoked_key_within_the_bound(
    deploy: Callable[..., Deployment],
) -> None:
    clock = Clock()
    d = deploy("safety", clock=clock)
    old = d.b_kid()
    d.cut()
    clock.now += CONFIRM
    assert d.b_kid() == old  # Redis does not answer; the key store confirms the key
    new = d.revoke_active()
    clock.now += CONFIRM - 0.001
    assert d.b_kid() == old
    clock.now += 0.001
    assert d.b_kid() == new  # one bound after the last confirmation, from the store
