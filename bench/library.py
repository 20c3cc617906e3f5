"""In-process library scenarios: 2 (warm L1), 8 (steady state), 9 (cold start), 11 (L1 RSS).

Each builds its own :class:`KeyService` from the public parts, so its KMS counts
(:class:`MeteredProvider`) and L1 stats belong to that scenario alone.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.env import BenchEnv
from bench.harness import PAYLOAD, Mode, ScenarioResult, percentiles, rate_loop, thin, timed_calls
from bench.pricing import kms_summary
from tenantkeys.config import Settings
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.kms import ProviderSet
from tenantkeys.keys.material import UnlockedKey
from tenantkeys.keys.redis_cache import WrappedKeyCache
from tenantkeys.keys.runtime import redis_client
from tenantkeys.keys.service import KeyService, KeyServiceOptions
from tenantkeys.keys.store import KeyStore


def build_service(
    settings: Settings,
    *,
    ttl: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    with_l2: bool = True,
) -> KeyService:
    """A fresh KeyService (empty L1, own KMS counters) on the run's store and Redis."""
    store = KeyStore.from_url(settings.database_url)
    providers = ProviderSet.from_settings(settings)
    l2 = None
    if with_l2:
        l2 = WrappedKeyCache(
            redis_client(settings), settings.redis_prefix, settings.l2_cache_ttl_seconds
        )
    l1: LocalKeyCache[UnlockedKey] = LocalKeyCache(
        settings.cache_ttl_seconds if ttl is None else ttl,
        max(settings.cache_max_entries, 20_000),
        clock=clock,
    )
    return KeyService(store, providers, l1, l2, KeyServiceOptions())


def scenario_2(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """KeyService.sign with every key in L1: validation, cache lookup, JWS, result record."""
    result = ScenarioResult("2", "Library signing, warm L1, in process")
    tenants = env.tenants(100)
    service = build_service(env.settings(), with_l2=env.redis_ok)
    try:
        for tenant in tenants:
            service.sign(tenant, PAYLOAD)
        one = rate_loop(lambda: service.sign(tenants[0], PAYLOAD), mode.duration)
        cycle = iter(range(1 << 62))
        many = rate_loop(lambda: service.sign(tenants[next(cycle) % 100], PAYLOAD), mode.duration)
        _, latencies = timed_calls(lambda i: service.sign(tenants[i % 100], PAYLOAD), 5_000)
        result.metrics = {
            "one_tenant_per_s": round(one, 1),
            "hundred_tenants_per_s": round(many, 1),
            **percentiles(latencies),
            "kms_calls_while_warm": service.providers.total_calls() - len(tenants),
            "l1_hit_rate": round(service.l1.stats.hit_rate, 5),
        }
        result.series["latency_ms"] = [{"ms": v} for v in thin(latencies)]
        result.headline = round(one, 1)
    finally:
        service.close()
    return result


def _steady_run(env: BenchEnv, mode: Mode, seconds_per_signature: float | None) -> dict[str, Any]:
    """Sign ``steady_signatures`` over ``steady_tenants``; a virtual clock when modelled."""
    tenants = env.tenants(mode.steady_tenants)
    rng = random.Random(8)
    order = [
        tenants[rng.randrange(len(tenants))] for _ in range(min(mode.steady_signatures, 100_000))
    ]
    now = [0.0]
    clock = time.monotonic if seconds_per_signature is None else (lambda: now[0])
    service = build_service(env.settings(), clock=clock, with_l2=env.redis_ok)
    step = seconds_per_signature or 0.0
    started = time.perf_counter()
    try:
        for i in range(mode.steady_signatures):
            now[0] = i * step
            service.sign(order[i % len(order)], PAYLOAD)
        elapsed = time.perf_counter() - started
        stats = service.l1.stats
        calls = service.providers.total_calls()
    finally:
        service.close()
    return {
        "signatures": mode.steady_signatures,
        "tenants": len(tenants),
        "seconds": round(elapsed, 2),
        "signatures_per_s": round(mode.steady_signatures / elapsed, 1),
        "modelled_span_s": round(step * mode.steady_signatures, 1) if step else None,
        "l1_hits": stats.hits,
        "l1_misses": stats.misses,
        "l1_hit_rate": round(stats.hit_rate, 6),
        "kms": kms_summary(calls, mode.steady_signatures),
    }


def scenario_8(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """Steady state: hit rate, KMS calls and cost per million signatures (one process)."""
    result = ScenarioResult("8", "Steady state: many tenants, hit rate, KMS calls and cost")
    burst = _steady_run(env, mode, None)
    # The same traffic spread over one hour: keys expire from L1 (TTL 300 s) and come back.
    hour = _steady_run(env, mode, 3_600 / mode.steady_signatures)
    result.metrics = {"as_fast_as_possible": burst, "spread_over_one_hour": hour}
    result.kms = dict(burst["kms"])
    result.headline = float(burst["signatures_per_s"])
    result.notes.append(
        "KMS calls come from one process; N worker processes multiply them by N "
        "(each has its own L1)"
    )
    return result


def scenario_9(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """Cold start: the first signature of each tenant, with L2 empty and then with L2 warm."""
    result = ScenarioResult("9", "Cold start: first signature of each tenant")
    tenants = env.tenants(mode.cold_tenants)
    settings = env.settings()
    if env.redis_ok:
        client = env.redis()
        for key in client.scan_iter(match=f"{env.prefix}:key:*", count=1000):
            client.delete(key)
        client.close()
    variants = [("l2_empty", True), ("l2_warm", True)] if env.redis_ok else [("no_l2", False)]
    for name, with_l2 in variants:
        service = build_service(settings, with_l2=with_l2)
        try:

            def first(i: int, service: KeyService = service) -> None:
                service.sign(tenants[i], PAYLOAD)

            rate, latencies = timed_calls(first, len(tenants))
            calls = service.providers.total_calls()
        finally:
            service.close()
        result.metrics[name] = {
            "tenants": len(tenants),
            "first_signatures_per_s": round(rate, 1),
            **percentiles(latencies),
            "kms": kms_summary(calls, len(tenants)),
        }
        result.series[f"latency_ms_{name}"] = [{"ms": v} for v in thin(latencies)]
    shown = result.metrics[variants[0][0]]
    result.headline = shown["first_signatures_per_s"]
    result.kms = shown["kms"]
    return result


def scenario_11_library(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """RSS of a fresh process before and after holding ``rss_tenants`` keys in L1."""
    result = ScenarioResult("11", "Memory (RSS) with many tenants' keys in L1", unit="MB")
    env.tenants(mode.rss_tenants)
    probe = subprocess.run(
        [sys.executable, "-m", "bench.rss_probe", str(mode.rss_tenants)],
        env=env.child_env(cache_max_entries=max(10_000, mode.rss_tenants)),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if probe.returncode != 0:
        result.status = "error"
        result.reason = (probe.stderr.strip().splitlines() or ["rss probe failed"])[-1][:300]
        return result
    facts = json.loads(probe.stdout.strip().splitlines()[-1])
    result.metrics["library_process"] = facts
    result.headline = facts["rss_after_mb"]
    return result
