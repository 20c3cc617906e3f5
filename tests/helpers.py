"""Builders shared by the core tests: a KeyService on a given database, Redis and provider."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
import sqlalchemy as sa

from tenantkeys.keys.cache import LocalKeyCache, WrappedKeyCache
from tenantkeys.keys.kms import ProviderSet
from tenantkeys.keys.service import KeyService, KeyServiceOptions, UnlockedKey, utcnow
from tenantkeys.keys.store import KeyStore
from tenantkeys.providers import KmsProvider


class StatementCounter:
    """Counts SQL statements an engine executes (to prove cache hits skip the database)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1


def make_service(
    db_url: str,
    provider: KmsProvider,
    *,
    redis_client: redis.Redis | None = None,
    prefix: str = "tk",
    ttl: float = 300,
    clock: Callable[[], datetime] = utcnow,
    extra_providers: tuple[KmsProvider, ...] = (),
    **options: Any,
) -> KeyService:
    store = KeyStore.from_url(db_url)
    store.migrate()
    l2 = WrappedKeyCache(redis_client, prefix, 3600) if redis_client is not None else None
    l1: LocalKeyCache[UnlockedKey] = LocalKeyCache(ttl, 1000)
    return KeyService(
        store,
        ProviderSet.of(provider, *extra_providers),
        l1,
        l2,
        KeyServiceOptions(**options),
        clock=clock,
    )
