"""The state of a deployment, read from Redis, the broker, the key store and the metrics.

Two views of the same sources:

* :func:`collect_status` -- the report of ``GET /api/admin/kms/status`` and
  ``tenantkeys admin status``: provider, cache hit rate, KMS calls, last sweep, upcoming
  rotations, dead letters, queue depths and breaker state. Cache hit rate and KMS calls are the
  fleet's, every worker on every host (:mod:`tenantkeys.telemetry.fleet`, kept in Redis); the
  calling process's own counters are beside them, named as such.
* :func:`state_probe` / :func:`make_state_probe` -- a :class:`~tenantkeys.telemetry.ServiceState`
  for the shared-state gauges of ``/metrics`` (the API's and the worker exporter's).

Every part is read on its own: Redis being down leaves the dead-letter and breaker parts unknown
(``None``, and a coded line under ``errors``) but still reports the key store. Nothing here
returns a secret: key ids and counts only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast, get_args

import redis

from tenantkeys import telemetry
from tenantkeys.config import Settings
from tenantkeys.errors import CacheUnavailable, TenantKeysError
from tenantkeys.jobs.deadletters import DeadLetterStore
from tenantkeys.keys.cache import CacheStats
from tenantkeys.keys.rotation import RotationSweep
from tenantkeys.keys.runtime import Runtime, build_runtime
from tenantkeys.queue.broker import BrokerProbe
from tenantkeys.resilience import Resilience
from tenantkeys.telemetry import fleet

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class StatusSources:
    """The readers behind a status report, built once per process and reused per scrape."""

    runtime: Runtime
    resilience: Resilience
    deadletters: DeadLetterStore | None
    sweep: RotationSweep
    broker: BrokerProbe

    @classmethod
    def of(
        cls,
        runtime: Runtime,
        *,
        resilience: Resilience | None = None,
        deadletters: DeadLetterStore | None = None,
        broker: BrokerProbe | None = None,
    ) -> StatusSources:
        """Sources for ``runtime``; the ones not given are built from its settings and Redis."""
        settings, client = runtime.settings, runtime.redis
        if deadletters is None:
            try:
                deadletters = DeadLetterStore.from_settings(settings, client)
            except TenantKeysError as exc:  # an unreadable dead-letter key: report, keep going
                log.warning("dead-letter store unavailable for status: %s", exc.one_line())
        return cls(
            runtime=runtime,
            resilience=resilience or Resilience.from_settings(settings, client),
            deadletters=deadletters,
            sweep=RotationSweep(runtime.service.store, client, settings.redis_prefix),
            broker=broker or BrokerProbe.from_settings(settings),
        )

    def close(self) -> None:
        """Release the broker connection (the runtime belongs to the caller)."""
        self.broker.close()


class _Parts:
    """Runs each read on its own; a failure becomes ``None`` plus a coded line in ``errors``."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def read(self, name: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except TenantKeysError as exc:
            self.errors[name] = exc.one_line()
        except redis.RedisError as exc:
            self.errors[name] = CacheUnavailable(
                f"Redis did not answer ({type(exc).__name__})"
            ).one_line()
        except Exception as exc:  # a status page reports; the class name, never the details
            log.warning("status part %s failed", name, exc_info=True)
            self.errors[name] = TenantKeysError(f"unexpected {type(exc).__name__}").one_line()
        return None


def _aware(value: object) -> datetime | None:
    if value is None:
        return None
    found = datetime.fromisoformat(value) if isinstance(value, str) else cast(datetime, value)
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _breakers(sources: StatusSources) -> dict[str, telemetry.BreakerState]:
    """Breaker state of the configured provider, as every process sees it (Redis)."""
    name = sources.runtime.settings.kms_provider
    state = sources.resilience.state(name)
    if state not in get_args(telemetry.BreakerState):
        raise TenantKeysError(f"unknown breaker state {state[:20]!r} for provider {name!r}")
    return {name: cast(telemetry.BreakerState, state)}


def _store_stats(sources: StatusSources, now: datetime) -> dict[str, Any]:
    stats = sources.runtime.service.store.stats(now)
    oldest = _aware(stats["oldest_active_created_at"])
    upcoming = _aware(stats["next_rotation_at"])
    return {
        "active_keys": stats["active_keys"],
        "overdue": stats["overdue"],
        "next_rotation_at": _iso(upcoming),
        "oldest_active_created_at": _iso(oldest),
        "oldest_active_age_seconds": (now - oldest).total_seconds() if oldest else None,
    }


def _dead_letters(sources: StatusSources) -> dict[str, float | int]:
    if sources.deadletters is None:
        raise TenantKeysError("the dead-letter store could not be opened; see the API log")
    return {
        "depth": sources.deadletters.depth(),
        # 0 when empty, as the gauge's help says: "no dead letter" is not "unknown".
        "oldest_age_seconds": sources.deadletters.oldest_age() or 0.0,
    }


def state_probe(
    sources: StatusSources | Runtime, *, now: Callable[[], datetime] | None = None
) -> telemetry.ServiceState:
    """Shared state for the ``/metrics`` gauges; parts that cannot be read are left out."""
    if isinstance(sources, Runtime):
        built = StatusSources.of(sources)
        try:
            return state_probe(built, now=now)
        finally:
            built.close()
    moment = (now or _utcnow)()
    parts = _Parts()
    store = parts.read("rotation", lambda: _store_stats(sources, moment)) or {}
    dead = parts.read("dead_letters", lambda: _dead_letters(sources)) or {}
    queues = parts.read("queues", sources.broker.queue_depths) or {}
    state = telemetry.ServiceState(
        last_sweep_timestamp=parts.read("sweep", sources.sweep.last_run),
        keys_overdue_rotation=store.get("overdue"),
        oldest_active_key_age_seconds=store.get("oldest_active_age_seconds"),
        dead_letter_depth=cast(int | None, dead.get("depth")),
        dead_letter_oldest_age_seconds=dead.get("oldest_age_seconds"),
        breaker_states=parts.read("breakers", lambda: _breakers(sources)) or {},
        queue_depths=cast(Mapping[telemetry.Queue, int], queues),
    )
    for name, error in parts.errors.items():
        log.warning("state probe: %s unknown: %s", name, error)
    return state


def make_state_probe(sources: StatusSources) -> telemetry.StateProbe:
    """A :data:`~tenantkeys.telemetry.StateProbe` over ``sources`` (for ``render_metrics``)."""
    return lambda: state_probe(sources)


class LazyStateProbe:
    """A :data:`~tenantkeys.telemetry.StateProbe` that opens its sources on the first scrape.

    The worker's exporter runs in the Celery parent, which forks the pool at start: nothing
    (database, Redis, broker connections) is opened before Prometheus first asks, so the pool
    processes forked at start inherit no socket. Ones forked later (a replaced child) do, but
    never use them. A failed build is retried on the next scrape.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._sources: StatusSources | None = None

    def __call__(self) -> telemetry.ServiceState:
        with self._lock:
            if self._sources is None:
                self._sources = StatusSources.of(build_runtime(self.settings, migrate=False))
            sources = self._sources
        return state_probe(sources)

    def close(self) -> None:
        with self._lock:
            sources, self._sources = self._sources, None
        if sources is not None:
            sources.close()
            sources.runtime.close()


def collect_status(
    sources: StatusSources | Runtime, *, now: Callable[[], datetime] | None = None
) -> dict[str, Any]:
    """The status report: JSON-safe, secret-free; unreadable parts are ``None`` with an error."""
    if isinstance(sources, Runtime):
        built = StatusSources.of(sources)
        try:
            return collect_status(built, now=now)
        finally:
            built.close()
    moment = (now or _utcnow)()
    runtime = sources.runtime
    settings = runtime.settings
    parts = _Parts()
    provider = runtime.service.providers.current
    fleet_read: list[fleet.FleetTotals] = []

    def totals() -> fleet.FleetTotals:  # one Redis round trip for both parts
        if not fleet_read:
            fleet_read.append(fleet.read(runtime.redis, settings.redis_prefix))
        return fleet_read[0]

    last_sweep = parts.read("sweep", sources.sweep.last_run)
    rotation = parts.read("rotation", lambda: _store_stats(sources, moment))
    if rotation is not None:
        rotation["last_sweep_at"] = _iso(
            datetime.fromtimestamp(last_sweep, UTC) if last_sweep else None
        )
        rotation["last_sweep_age_seconds"] = (
            max(0.0, time.time() - last_sweep) if last_sweep else None
        )
        rotation["sweep_interval_seconds"] = settings.rotation_sweep_interval_seconds
    return {
        "generated_at": _iso(moment),
        "environment": settings.environment,
        "provider": {"name": provider.name, "key_id": provider.key_id},
        "breakers": parts.read("breakers", lambda: _breakers(sources)),
        "cache": {
            "fleet": parts.read("cache_fleet", lambda: _cache_fleet(totals())),
            "process": _process_cache(runtime),
        },
        "kms": {
            "fleet": parts.read("kms_fleet", lambda: _kms_fleet(settings, totals())),
            "calls_this_process": dict(provider.calls),
            "calls_total_this_process": runtime.service.providers.total_calls(),
        },
        "rotation": rotation,
        "dead_letters": parts.read("dead_letters", lambda: _dead_letters(sources)),
        "queues": parts.read("queues", sources.broker.queue_depths),
        "errors": parts.errors,
    }


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _rate(stats: CacheStats) -> dict[str, float | int]:
    return {"hits": stats.hits, "misses": stats.misses, "hit_rate": round(stats.hit_rate, 4)}


def _process_cache(runtime: Runtime) -> dict[str, Any]:
    """This process's L1 and L2 counters (an API process rarely looks keys up)."""
    service = runtime.service
    l1 = {**_rate(service.l1.stats), "entries": len(service.l1)}
    return {"l1": l1, "l2": _rate(service.l2.stats) if service.l2 is not None else None}


def _since(totals: fleet.FleetTotals) -> str | None:
    return _iso(datetime.fromtimestamp(totals.since, UTC)) if totals.since else None


def _cache_fleet(totals: fleet.FleetTotals) -> dict[str, Any]:
    """Every worker's cache lookups, by layer, since ``since`` (the first worker's flush)."""
    found: dict[str, Any] = {
        layer: totals.hit_rate(layer) for layer in get_args(telemetry.CacheLayer)
    }
    return {**found, "since": _since(totals)}


def _kms_fleet(settings: Settings, totals: fleet.FleetTotals) -> dict[str, Any]:
    """Every worker's KMS calls by provider and outcome, and their estimated cost."""
    prices = {**telemetry.DEFAULT_KMS_PRICES_USD, **settings.kms_prices_usd}
    by_provider = {name: totals.kms_calls(name) for name in sorted(totals.kms)}
    cost = sum(sum(calls.values()) * prices.get(name, 0.0) for name, calls in by_provider.items())
    by_outcome: dict[str, int] = {}
    for calls in by_provider.values():
        for outcome, count in calls.items():
            by_outcome[outcome] = by_outcome.get(outcome, 0) + count
    return {
        "by_provider": by_provider,
        "requests_by_outcome": by_outcome,
        "requests_total": sum(by_outcome.values()),
        "estimated_cost_usd": round(cost, 6),
        "since": _since(totals),
    }
