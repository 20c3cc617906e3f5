"""Builds the running parts (store, providers, caches, KeyService) from Settings, once.

The CLI, the workers and the ops API all start here, so they behave the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from tenantkeys import telemetry
from tenantkeys.config import Settings, masked_url
from tenantkeys.config.urls import is_sentinel, sentinel_address
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.kms import ProviderSet, check_providers
from tenantkeys.keys.material import UnlockedKey
from tenantkeys.keys.redis_cache import WrappedKeyCache
from tenantkeys.keys.service import KeyService, KeyServiceOptions
from tenantkeys.keys.store import KeyStore
from tenantkeys.providers import KmsProvider

log = logging.getLogger(__name__)

#: Redis calls on the signing path must fail fast: a stalled cache must not stall signing.
REDIS_SOCKET_TIMEOUT = 1.0


def redis_client(settings: Settings) -> redis.Redis:
    """The client of the cache, invalidations, locks, breaker, dead letters and fleet counters."""
    return redis_from_url(
        settings.redis_url,
        sentinel_master=settings.redis_sentinel_master,
        timeout=REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
        # One quick retry; the L2 cache then backs off on its own rather than stall signing.
        retry=Retry(NoBackoff(), 1),
    )


def redis_from_url(
    url: str, *, sentinel_master: str, timeout: float, **options: Any
) -> redis.Redis:
    """The one place a Redis client is built: ``redis://``, ``rediss://``, ``unix://``, or a
    Sentinel URL (:mod:`tenantkeys.config.urls`), served by whichever server the sentinels
    name primary of ``sentinel_master``.

    A Sentinel client asks the sentinels for the primary on each new connection, so after a
    failover the next command (and a pub/sub resubscription) reaches the new primary; idle
    connections to the old one are dropped when the address changes (redis-py's
    ``SentinelConnectionPool``).
    """
    timeouts: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **timeouts, **options)
    address = sentinel_address(url)
    login: dict[str, Any] = {"username": address.username, "password": address.password}
    # The sentinels themselves are asked with the timeouts only: their login, if any, is not
    # the primary's (redis-py's sentinel_kwargs).
    sentinels = Sentinel(list(address.sentinels), sentinel_kwargs=timeouts)
    client: redis.Redis = sentinels.master_for(
        sentinel_master, db=address.db, **login, **timeouts, **options
    )
    return client


def redis_available(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Runtime:
    settings: Settings
    service: KeyService
    redis: redis.Redis

    def close(self) -> None:
        self.service.close()
        self.redis.close()


def build_runtime(
    settings: Settings,
    *,
    migrate: bool = True,
    require_redis: bool = False,
    guard: Callable[[KmsProvider], KmsProvider] | None = None,
) -> Runtime:
    """Everything a process needs to sign; validates the providers' settings and builds the
    current provider now, so a misconfigured one stops start-up."""
    check_providers(settings)
    telemetry.configure_prices(settings.kms_prices_usd)
    store = KeyStore.from_url(settings.database_url)
    if migrate:
        store.migrate()
    providers = ProviderSet.from_settings(settings, guard)
    providers.current  # noqa: B018 - fail fast on a provider that cannot be built
    client = redis_client(settings)
    l2: WrappedKeyCache | None = None
    if redis_available(client):
        l2 = WrappedKeyCache(client, settings.redis_prefix, settings.l2_cache_ttl_seconds)
    elif require_redis:
        from tenantkeys.errors import CacheUnavailable

        raise CacheUnavailable(f"Redis does not answer at {masked_url(settings.redis_url)}")
    else:
        log.warning(
            "Redis does not answer at %s; running without the L2 cache and invalidations",
            masked_url(settings.redis_url),
        )
    l1: LocalKeyCache[UnlockedKey] = LocalKeyCache(
        settings.cache_ttl_seconds,
        settings.cache_max_entries,
        confirm_seconds=settings.key_confirm_seconds,
    )
    options = KeyServiceOptions(
        signing_algorithm=settings.signing_algorithm,
        rotation_days={
            "signing": settings.rotation_days_signing,
            "encryption": settings.rotation_days_encryption,
        },
        max_payload_bytes=settings.max_payload_bytes,
        key_confirm_redis_down=settings.key_confirm_redis_down,
    )
    return Runtime(settings, KeyService(store, providers, l1, l2, options), client)
