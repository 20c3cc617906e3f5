"""Fleet-wide counters in Redis: every worker's cache lookups and KMS calls, summed.

Prometheus counters live in the process that counted them (merged per host through the
multiprocess directory), so no single process can say what the fleet's hit rate is. Here each
process also tallies the same events in memory (a dict increment, no I/O, on the hot path) and
a worker adds its tally to two Redis hashes once per batch or task, with ``HINCRBY`` in one
pipeline (:func:`flush`): one round trip per batch, not per signature, so throughput holds.
``tenantkeys admin status`` and ``GET /api/admin/kms/status`` read the hashes
(:func:`read`), which already are the sum over every host.

Layout, under ``{redis_prefix}:fleet:``: ``cache`` (fields ``l1:hit``, ``l1:miss``, ``l2:hit``,
``l2:miss``), ``kms`` (fields ``provider:operation:outcome``), ``since`` (Unix time of the
first flush). Labels come from the metrics' fixed sets: no tenant id, no key id.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)

CACHE: Final = "cache"
KMS: Final = "kms"


class _Tally:
    """(hash, field) -> count not yet added to Redis, in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}

    def forked(self) -> None:
        # A forked child (a Celery pool process) starts from zero: what its parent counted is
        # the parent's to flush, and a lock a parent thread held at fork time is not ours.
        self.lock = threading.Lock()
        self.counts = {}


_here = _Tally()
os.register_at_fork(after_in_child=_here.forked)


def count(name: str, key: str) -> None:
    """Tally one event of hash ``name`` (:data:`CACHE` or :data:`KMS`) under ``key``."""
    with _here.lock:
        _here.counts[(name, key)] = _here.counts.get((name, key), 0) + 1


def pending() -> dict[tuple[str, str], int]:
    """What this process counted and has not added to Redis yet (a copy)."""
    with _here.lock:
        return dict(_here.counts)


def discard() -> None:
    """Forget this process's tally (a forked child starts from zero; tests)."""
    with _here.lock:
        _here.counts.clear()


def keys(prefix: str) -> dict[str, str]:
    """The Redis keys of the fleet counters under ``prefix``."""
    return {part: f"{prefix}:fleet:{part}" for part in (CACHE, KMS, "since")}


def flush(client: Any, prefix: str) -> bool:
    """Add this process's tally to the fleet hashes in one round trip; ``True`` when done.

    On a Redis error the tally is kept and added by the next flush: counts are late, not lost.
    """
    taken = take()
    if not taken:
        return True
    try:
        pipe = client.pipeline(transaction=False)
        queue(pipe, prefix, taken)
        pipe.execute()
    except Exception as exc:  # Redis is down or slow: keep the counts for the next flush
        give_back(taken)
        log.warning("fleet counters not flushed (%s); kept for the next flush", type(exc).__name__)
        return False
    return True


def take() -> dict[tuple[str, str], int]:
    """This process's tally, now the caller's to add (:func:`queue`) or give back."""
    with _here.lock:
        taken, _here.counts = _here.counts, {}
    return taken


def give_back(taken: dict[tuple[str, str], int]) -> None:
    """A tally from :func:`take` that did not reach Redis: added by the next flush."""
    with _here.lock:
        for item, value in taken.items():
            _here.counts[item] = _here.counts.get(item, 0) + value


def queue(pipe: Any, prefix: str, taken: dict[tuple[str, str], int]) -> None:
    """Queue the commands that add ``taken`` to the fleet hashes on a Redis pipeline (so a
    batch's counts can travel in the round trip of its results, ahead of them)."""
    names = keys(prefix)
    for (name, key), value in taken.items():
        pipe.hincrby(names[name], key, value)
    pipe.setnx(names["since"], f"{time.time():.3f}")


@dataclass(frozen=True)
class FleetTotals:
    """What every worker flushed: lookups by (layer, result), KMS calls by provider."""

    cache: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: ``provider -> operation -> outcome -> calls``
    kms: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)
    since: float | None = None

    def hit_rate(self, layer: str) -> dict[str, float | int]:
        """``hits``, ``misses`` and ``hit_rate`` (0 with no lookup) of one cache layer."""
        hits = self.cache.get((layer, "hit"), 0)
        misses = self.cache.get((layer, "miss"), 0)
        total = hits + misses
        rate = round(hits / total, 4) if total else 0.0
        return {"hits": hits, "misses": misses, "hit_rate": rate}

    def kms_calls(self, provider: str) -> dict[str, int]:
        """Calls that reached ``provider``, by outcome (every operation summed)."""
        found: dict[str, int] = {}
        for outcomes in self.kms.get(provider, {}).values():
            for outcome, calls in outcomes.items():
                found[outcome] = found.get(outcome, 0) + calls
        return found


def read(client: Any, prefix: str) -> FleetTotals:
    """The fleet counters under ``prefix`` (one round trip); Redis errors propagate."""
    names = keys(prefix)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(names[CACHE])
    pipe.hgetall(names[KMS])
    pipe.get(names["since"])
    cache_raw, kms_raw, since_raw = pipe.execute()
    cache: dict[tuple[str, str], int] = {}
    for key, value in cache_raw.items():
        layer, _, result = _text(key).partition(":")
        cache[(layer, result)] = int(value)
    kms: dict[str, dict[str, dict[str, int]]] = {}
    for key, value in kms_raw.items():
        provider, operation, outcome = [*_text(key).split(":", 2), "?", "?"][:3]
        kms.setdefault(provider, {}).setdefault(operation, {})[outcome] = int(value)
    return FleetTotals(cache, kms, float(since_raw) if since_raw is not None else None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
