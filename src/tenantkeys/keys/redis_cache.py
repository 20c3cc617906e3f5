"""L2, the key cache in Redis: *wrapped* records only (safe if Redis leaks), with a TTL, plus
the generation counters and the pub/sub invalidations every process's L1 obeys.

A fill that raced with an invalidation is discarded (the record is set only if the generation
has not moved since it was read), so a stale key is never cached after a rotation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis

from tenantkeys.keys.cache import CacheStats
from tenantkeys.keys.model import KeyVersion, Purpose, Status

log = logging.getLogger(__name__)

# Set the record only if the generation has not moved since the caller read it.
_SET_IF_GENERATION = """
local gen = redis.call('GET', KEYS[2]) or '0'
if gen == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class WrappedKeyCache:
    """L2: wrapped key records in Redis, plus the invalidation channel.

    Redis being down never stops signing: reads become misses, writes are skipped, and the
    failure is logged (the store and the KMS still answer).
    """

    #: After a Redis failure, skip L2 for this long instead of paying a timeout per lookup.
    RETRY_AFTER_SECONDS = 5.0

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttl_seconds: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl_seconds
        self._clock = clock
        self._down_until = 0.0
        self.channel = f"{prefix}:invalidate"
        self._set_if_generation = client.register_script(_SET_IF_GENERATION)
        self.stats = CacheStats()

    def _key(self, tenant_id: str, purpose: str) -> str:
        # Tenant ids are validated ([A-Za-z0-9._-]), so ':' cannot appear in them: no collisions.
        return f"{self.prefix}:key:{tenant_id}:{purpose}:active"

    def _gen_key(self, tenant_id: str, purpose: str) -> str:
        return f"{self.prefix}:gen:{tenant_id}:{purpose}"

    def _up(self) -> bool:
        return self._clock() >= self._down_until

    def _usable(self) -> bool:
        return self.ttl > 0 and self._up()

    def _failed(self, exc: Exception, what: str) -> None:
        self._down_until = self._clock() + self.RETRY_AFTER_SECONDS
        log.warning(
            "L2 cache %s (%s); using the key store for %.0f s",
            what,
            type(exc).__name__,
            self.RETRY_AFTER_SECONDS,
        )

    def generation(self, tenant_id: str, purpose: str) -> str | None:
        """The (tenant, purpose) invalidation counter, one GET; None if Redis is down.

        Read even with L2 records off (``ttl_seconds=0``): invalidations still bump it.
        """
        if not self._up():
            return None
        try:
            value = self.client.get(self._gen_key(tenant_id, purpose))
        except redis.RedisError as exc:
            self._failed(exc, "unavailable")
            return None
        return value.decode() if isinstance(value, bytes) else "0"

    def get_active(self, tenant_id: str, purpose: Purpose) -> KeyVersion | None:
        if not self._usable():
            self.stats.misses += 1
            return None
        try:
            raw = self.client.get(self._key(tenant_id, purpose.value))
        except redis.RedisError as exc:
            self._failed(exc, "unavailable")
            self.stats.misses += 1
            return None
        if raw is None:
            self.stats.misses += 1
            return None
        version = _record_for(raw, tenant_id, purpose)
        if version is None:
            # Tenant binding: a record that is not this slot's (planted or corrupted: another
            # tenant's, another purpose's, not active) is never used; it is dropped instead.
            log.warning("L2 cache record for a tenant's %s key discarded (mismatch)", purpose.value)
            with contextlib.suppress(redis.RedisError):
                self.client.delete(self._key(tenant_id, purpose.value))
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return version

    def put_active(self, version: KeyVersion, generation: str | None) -> None:
        if generation is None or not self._usable():
            return
        try:
            self._set_if_generation(
                keys=[
                    self._key(version.tenant_id, version.purpose.value),
                    self._gen_key(version.tenant_id, version.purpose.value),
                ],
                args=[generation, json.dumps(version_to_record(version)), self.ttl],
            )
        except redis.RedisError as exc:
            self._failed(exc, "write skipped")

    def invalidate(self, tenant_id: str, purpose: str) -> bool:
        """Bump the generation, drop the record and tell every process. False if Redis is down."""
        message = json.dumps({"tenant_id": tenant_id, "purpose": purpose})
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(self._gen_key(tenant_id, purpose))
            pipe.delete(self._key(tenant_id, purpose))
            pipe.publish(self.channel, message)
            pipe.execute()
        except redis.RedisError as exc:
            log.error(
                "cache invalidation not published (%s); other processes may use the old key "
                "until their L1 TTL, and refill it from L2 until the L2 TTL: see "
                "docs/reliability.md#revocation-delay",
                type(exc).__name__,
            )
            return False
        return True

    def subscribe(self, on_invalidate: Callable[[str, str], None]) -> InvalidationListener:
        """Start a daemon thread that calls ``on_invalidate(tenant, purpose)`` per message."""
        return InvalidationListener(self.client, self.channel, on_invalidate)


class InvalidationListener:
    """Listens on the invalidation channel, reconnecting after Redis failures."""

    def __init__(
        self, client: redis.Redis, channel: str, callback: Callable[[str, str], None]
    ) -> None:
        self._client = client
        self._channel = channel
        self._callback = callback
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tk-invalidation", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        return self._ready.wait(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._ready.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._handle(message)
            except redis.RedisError as exc:
                log.warning("invalidation listener lost Redis (%s); retrying", type(exc).__name__)
                self._stop.wait(1.0)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _handle(self, message: dict[str, Any]) -> None:
        try:
            body = json.loads(message["data"])
            self._callback(str(body["tenant_id"]), str(body["purpose"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed invalidation message")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def version_to_record(version: KeyVersion) -> dict[str, Any]:
    """A JSON-safe record of a *wrapped* key version (for L2)."""

    def b64(value: bytes | None) -> str | None:
        return base64.b64encode(value).decode() if value is not None else None

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "tenant_id": version.tenant_id,
        "purpose": version.purpose.value,
        "version": version.version,
        "kid": version.kid,
        "algorithm": version.algorithm,
        "status": version.status.value,
        "created_at": iso(version.created_at),
        "rotate_after": iso(version.rotate_after),
        "provider": version.provider,
        "provider_key_id": version.provider_key_id,
        "public_key": b64(version.public_key),
        "wrapped_secret": b64(version.wrapped_secret),
        "wrapped_data_key": b64(version.wrapped_data_key),
        "retired_at": iso(version.retired_at),
        "revoked_at": iso(version.revoked_at),
    }


def _record_for(raw: bytes | str, tenant_id: str, purpose: Purpose) -> KeyVersion | None:
    """The L2 record as a version if it is the active key of (tenant_id, purpose); else None."""
    try:
        version = record_to_version(json.loads(raw))
    except (ValueError, KeyError, TypeError, AssertionError):
        return None
    if (
        version.tenant_id != tenant_id
        or version.purpose is not purpose
        or version.status is not Status.ACTIVE
    ):
        return None
    return version


def record_to_version(record: dict[str, Any]) -> KeyVersion:
    def unb64(value: str | None) -> bytes | None:
        return base64.b64decode(value) if value is not None else None

    def dt(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value is not None else None

    created, rotate_after = dt(record["created_at"]), dt(record["rotate_after"])
    assert created is not None and rotate_after is not None
    return KeyVersion(
        tenant_id=record["tenant_id"],
        purpose=Purpose(record["purpose"]),
        version=int(record["version"]),
        kid=record["kid"],
        algorithm=record["algorithm"],
        status=Status(record["status"]),
        created_at=created,
        rotate_after=rotate_after,
        provider=record["provider"],
        provider_key_id=record["provider_key_id"],
        public_key=unb64(record["public_key"]),
        wrapped_secret=unb64(record["wrapped_secret"]),
        wrapped_data_key=unb64(record["wrapped_data_key"]),
        retired_at=dt(record["retired_at"]),
        revoked_at=dt(record["revoked_at"]),
    )
