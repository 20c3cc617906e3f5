"""L1, the first of two cache layers in front of the key store and the KMS.

* L1 (:class:`LocalKeyCache`, here): per process, *unwrapped* keys, TTL and a size cap, LRU.
* L2 (:class:`~tenantkeys.keys.redis_cache.WrappedKeyCache`): Redis, *wrapped* records only
  (safe if Redis leaks), TTL.

Rotation and revocation bump a generation counter in Redis and publish an invalidation on
pub/sub; every process drops its L1 entries for that (tenant, purpose). A fill that raced with
an invalidation is discarded (generation check), so a stale key is never cached after a rotation.

Pub/sub is fire-and-forget: a process whose subscription was down misses the message. So L1
also remembers the Redis generation each active key was read under, and the service confirms
it at most once per ``confirm_seconds`` per key (:meth:`LocalKeyCache.confirmation_due`): the
bounded revocation delay of docs/reliability.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
V = TypeVar("V")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    expires_at: float
    #: The Redis generation the value was read under or last confirmed at; None = unknown.
    redis_generation: str | None
    #: When the next confirmation is due; moved ahead when a caller claims the check.
    check_at: float


@dataclass(frozen=True)
class DueConfirmation:
    """A cached value whose confirmation is due: confirm it or invalidate its scope."""

    #: What Redis said when the value was read or last confirmed; None = unknown (Redis was down).
    redis_generation: str | None
    _entry: object = field(repr=False, compare=False)


class LocalKeyCache(Generic[V]):
    """A small locked LRU with a TTL. ``ttl_seconds=0`` turns it off.

    ``confirm_seconds`` (None = never) is how long a value may be used before the caller must
    confirm it is still current; see :meth:`confirmation_due`.
    """

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        confirm_seconds: float | None = None,
    ) -> None:
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if confirm_seconds is not None and not confirm_seconds > 0:
            raise ValueError("confirm_seconds must be > 0 (or None: never confirm)")
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.confirm_seconds = confirm_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._generations: dict[tuple[str, str], int] = {}
        self.stats = CacheStats()

    def now(self) -> float:
        """This cache's clock (monotonic seconds): pass it to :meth:`put` as ``read_at``."""
        return self._clock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.expires_at <= self._clock():
                if entry is not None:
                    del self._entries[key]
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry.value

    def generation(self, tenant_id: str, purpose: str) -> int:
        with self._lock:
            return self._generations.get((tenant_id, purpose), 0)

    def put(
        self,
        key: Hashable,
        value: V,
        *,
        scope: tuple[str, str],
        generation: int,
        redis_generation: str | None = None,
        read_at: float | None = None,
    ) -> None:
        """Store ``value`` unless ``scope`` was invalidated since ``generation`` was read.

        ``redis_generation`` is the Redis generation read before ``value`` was (None: unknown),
        ``read_at`` when it was read (:meth:`now`; default now): the first confirmation is due
        ``confirm_seconds`` after it, however long the KMS took in between.
        """
        if self.ttl == 0:
            return
        with self._lock:
            if self._generations.get(scope, 0) != generation:
                return
            now = self._clock()
            start = now if read_at is None else min(read_at, now)
            check_at = start + self.confirm_seconds if self.confirm_seconds else float("inf")
            self._entries[key] = _Entry(value, now + self.ttl, redis_generation, check_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def confirmation_due(self, key: Hashable) -> DueConfirmation | None:
        """The check to make before using ``key``'s value again, or None while it is confirmed.

        The caller claims the check: until ``confirm_seconds`` later, other callers get None, so
        a process makes at most one check per interval per key, never one per use.
        """
        if self.confirm_seconds is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            now = self._clock()
            if entry is None or now < entry.check_at:
                return None
            entry.check_at = now + self.confirm_seconds
            return DueConfirmation(entry.redis_generation, entry)

    def confirm(self, key: Hashable, due: DueConfirmation, redis_generation: str | None) -> None:
        """``due``'s value is still current now (under ``redis_generation``, if not None)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry is not due._entry:
                return  # dropped or refilled since the check was claimed: nothing to confirm
            assert self.confirm_seconds is not None
            entry.check_at = self._clock() + self.confirm_seconds
            if redis_generation is not None:
                entry.redis_generation = redis_generation

    def invalidate(self, tenant_id: str, purpose: str) -> None:
        """Drop every entry of (tenant, purpose) and refuse fills that started before now."""
        with self._lock:
            scope = (tenant_id, purpose)
            self._generations[scope] = self._generations.get(scope, 0) + 1
            for key in [k for k in self._entries if _in_scope(k, scope)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _in_scope(key: Hashable, scope: tuple[str, str]) -> bool:
    return isinstance(key, tuple) and key[:2] == scope
