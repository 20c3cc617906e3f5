"""The bounded revocation delay: a cached key is confirmed as still active, at most once per
``confirm_seconds`` per key, never per signature (docs/reliability.md, "Revocation delay").

Pub/sub invalidations are fire-and-forget: a process whose subscription was down misses one.
L1 remembers the Redis generation each active key was read under; :class:`KeyConfirmer` reads
it again when a confirmation is due (one GET), drops the key when it moved, and, while Redis is
down, either keeps signing (``availability``) or confirms against the key store (``safety``).
"""

from __future__ import annotations

import logging
from typing import Literal

from tenantkeys.errors import StoreUnavailable
from tenantkeys.keys.cache import DueConfirmation, LocalKeyCache
from tenantkeys.keys.material import UnlockedKey
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.redis_cache import WrappedKeyCache
from tenantkeys.keys.store import KeyStore

log = logging.getLogger(__name__)


class KeyConfirmer:
    """Confirms L1's active keys against Redis generations (or the store, when Redis is down)."""

    def __init__(
        self,
        l1: LocalKeyCache[UnlockedKey],
        store: KeyStore,
        redis_down: Literal["availability", "safety"],
    ) -> None:
        self.l1 = l1
        self.store = store
        self.redis_down = redis_down

    def still_active(
        self, l2: WrappedKeyCache | None, tenant_id: str, purpose: Purpose, cached: UnlockedKey
    ) -> bool:
        """Bounded revocation delay: is this L1 key still the active one? False drops it.

        Checked at most once per ``l1.confirm_seconds`` per key, never per signature: one GET
        of the Redis generation, which every rotation and revocation bumps, so a process that
        missed the pub/sub invalidation stops using the old key within that interval.
        """
        due = self.l1.confirmation_due((tenant_id, purpose.value, "active"))
        if due is None:
            return True
        current = l2.generation(tenant_id, purpose.value) if l2 is not None else None
        if current is not None and current == due.redis_generation:
            self.l1.confirm((tenant_id, purpose.value, "active"), due, current)
            return True
        if current is not None and due.redis_generation is not None:
            log.info("a %s key's generation moved; its invalidation was missed", purpose.value)
            self.l1.invalidate(tenant_id, purpose.value)
            return False
        if current is None and self.redis_down == "availability":
            return True  # a missed revocation then lasts up to the L1 TTL (docs/reliability.md)
        return self._active_in_store(tenant_id, purpose, cached, due, current)

    def _active_in_store(
        self,
        tenant_id: str,
        purpose: Purpose,
        cached: UnlockedKey,
        due: DueConfirmation,
        current: str | None,
    ) -> bool:
        """Confirm a cached key with the key store (one SQL read, no KMS call).

        For a key read while Redis was down (no generation to compare), and under "safety"
        while Redis is down. If the store does not answer either, "availability" signs on and
        "safety" drops the key and raises: an unconfirmed key never signs past the bound.
        """
        try:
            active = self.store.active(tenant_id, purpose)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable) and self.redis_down == ("availability"):
                return True
            self.l1.invalidate(tenant_id, purpose.value)
            raise
        if active is None or active.kid != cached.version.kid:
            self.l1.invalidate(tenant_id, purpose.value)
            return False
        # Redis's generation was read before the store: a later rotation moves it past `current`.
        self.l1.confirm((tenant_id, purpose.value, "active"), due, current)
        return True
