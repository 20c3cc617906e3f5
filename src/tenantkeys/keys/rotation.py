"""The rotation sweep: find active keys past ``rotate_after`` and ask for their rotation.

Two guards make every due key rotate exactly once, even with two Beat processes or two
overlapping sweeps: the sweep holds a Redis lock (a second sweep skips), and each rotation it
asks for names the version it saw (``expected_version``), which the store applies as a
conditional update -- a duplicate request finds the key already rotated and does nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from tenantkeys.keys.model import KeyVersion
from tenantkeys.keys.store import KeyStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did: ``skipped`` when another sweep held the lock."""

    skipped: bool
    enqueued: int = 0
    pages: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"skipped": self.skipped, "enqueued": self.enqueued, "pages": self.pages}


class RotationSweep:
    """Pages through due keys under a Redis lock and hands each to ``enqueue``."""

    def __init__(
        self,
        store: KeyStore,
        client: redis.Redis,
        prefix: str,
        *,
        page_size: int = 500,
        lock_seconds: float = 900.0,
    ) -> None:
        self.store = store
        self.client = client
        self.page_size = page_size
        self.lock_name = f"{prefix}:lock:rotation-sweep"
        self.last_run_key = f"{prefix}:sweep:last"
        # The lock expires on its own, so a sweeper killed mid-run never blocks the next one.
        self.lock_seconds = lock_seconds

    def run(
        self, enqueue: Callable[[KeyVersion], None], now: datetime | None = None
    ) -> SweepReport:
        """Enqueue one rotation per due key; skip when another sweep is running."""
        lock = self.client.lock(self.lock_name, timeout=self.lock_seconds, blocking=False)
        if not lock.acquire():
            log.info("rotation sweep skipped: another sweep holds the lock")
            return SweepReport(skipped=True)
        try:
            return self._sweep(enqueue, now or datetime.now(UTC))
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("rotation sweep lock expired before the sweep ended")

    def _sweep(self, enqueue: Callable[[KeyVersion], None], now: datetime) -> SweepReport:
        after_id, enqueued, pages = 0, 0, 0
        while True:
            page = self.store.due(now, limit=self.page_size, after_id=after_id)
            if not page:
                break
            pages += 1
            for row_id, version in page:
                enqueue(version)
                enqueued += 1
                after_id = row_id
        self.client.set(self.last_run_key, repr(time.time()))
        log.info("rotation sweep enqueued %d rotations", enqueued)
        return SweepReport(skipped=False, enqueued=enqueued, pages=pages)

    def last_run(self) -> float | None:
        """Unix time of the last finished sweep (for status pages and metrics)."""
        value = self.client.get(self.last_run_key)
        return float(value) if value else None
