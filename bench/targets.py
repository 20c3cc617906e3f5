"""The performance targets, checked against one results file (a report, never an assertion)."""

from __future__ import annotations

import statistics
from typing import Any


def _metric(results: dict[str, Any], scenario: str, *path: str) -> Any:
    found = results["scenarios"].get(scenario)
    if not found or found.get("status") != "ok":
        return None
    value: Any = found["metrics"]
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _best_sweep(results: dict[str, Any], *series: str) -> float | None:
    """The best rate of scenario 3's sweeps ``series`` (both sign_batch forms, say)."""
    found = results["scenarios"].get("3")
    if not found or found.get("status") != "ok":
        return None
    sweeps = found.get("series", {})
    rates = [row["signatures_per_s"] for name in series for row in sweeps.get(name, [])]
    return max(rates, default=None)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def evaluate(results: dict[str, Any], refs: dict[str, float | None]) -> list[tuple[str, str, str]]:
    """(target, measured, met) rows; "n/a" where this run did not measure it."""
    rows: list[tuple[str, str, str]] = []
    s1, s4, s7, s7b = refs["S1"], refs["S4"], refs["S7"], refs["S7b"]

    on_redis = _best_sweep(results, "sweep_redis", "sweep_redis_compact")
    on_rabbit = _best_sweep(results, "sweep_rabbitmq", "sweep_rabbitmq_compact")
    batched = max((v for v in (on_redis, on_rabbit) if v is not None), default=None)
    ok = None if batched is None or not s1 else batched >= 20_000 and batched >= 0.4 * s1
    shown = f"{batched:,.0f}/s = {batched / s1:.2f} x S1" if batched and s1 else "-"
    if on_redis is not None and on_rabbit is not None:
        shown += f" (Redis {on_redis:,.0f}, RabbitMQ {on_rabbit:,.0f})"
    rows.append(
        ("batched end to end >= 20,000 sig/s and >= 0.4 x S1, best broker", shown, _verdict(ok))
    )
    ok = None if on_redis is None or not s1 else on_redis >= 0.33 * s1
    shown = f"{on_redis:,.0f}/s = {on_redis / s1:.2f} x S1" if on_redis and s1 else "-"
    rows.append(("batched end to end on Redis >= 0.33 x S1", shown, _verdict(ok)))

    one = _metric(results, "3", "single_jobs_per_s")
    piped = _metric(results, "3", "single_jobs_pipelined_per_s")
    single = max((v for v in (one, piped) if v is not None), default=None)
    ok = None if single is None or not s4 else single >= 2_000 and single >= 4 * s4
    shown = "-"
    if single and s4:
        shown = f"{single:,.0f} jobs/s = {single / s4:.2f} x S4"
        if one is not None and piped is not None:
            shown += f" (one at a time {one:,.0f}, submit_many {piped:,.0f})"
    rows.append(("single-payload jobs >= 2,000 jobs/s and >= 4 x S4", shown, _verdict(ok)))

    runs = [
        run["p99_ms"]
        for run in (results["scenarios"].get("10") or {}).get("series", {}).get("runs", [])
        if run.get("p99_ms") is not None
    ]
    p99 = statistics.median(runs) if runs else None
    ok = None if p99 is None else p99 <= 20 and max(runs) <= 50
    shown = "-"
    if p99 is not None:
        shown = f"{p99:.1f} ms, median of {len(runs)} runs ({min(runs):.1f}-{max(runs):.1f})"
    rows.append(
        (
            "p99 enqueue-to-result <= 20 ms at 50% of max single-job rate "
            "(median of the runs, no run > 50 ms)",
            shown,
            _verdict(ok),
        )
    )

    hit = _metric(results, "8", "as_fast_as_possible", "l1_hit_rate")
    calls = _metric(results, "8", "as_fast_as_possible", "kms", "calls")
    tenants = _metric(results, "8", "as_fast_as_possible", "tenants")
    ok = None if hit is None else hit >= 0.999
    rows.append(("S8 cache hits >= 99.9%", f"{hit:.4%}" if hit is not None else "-", _verdict(ok)))
    per_tenant = calls / tenants if calls is not None and tenants else None
    rows.append(
        (
            "<= 1 KMS call per tenant per process per TTL (S8, one process, < 1 TTL)",
            f"{per_tenant:.2f}" if per_tenant is not None else "-",
            _verdict(None if per_tenant is None else per_tenant <= 1.0),
        )
    )

    ours = batched
    label = (
        "S3 batched (RabbitMQ)" if batched is not None and batched == on_rabbit else "S3 batched"
    )
    if ours is None:
        ours, label = _metric(results, "2", "one_tenant_per_s"), "S2 library"
    ok = None if ours is None or not s7 else ours >= 10 * s7
    shown = f"{label} {ours:,.0f}/s = {ours / s7:.1f} x" if ours and s7 else "-"
    rows.append((">= 10 x Vault Transit per request", shown, _verdict(ok)))
    ok = None if ours is None or not s7b else ours >= 1.5 * s7b
    shown = f"{label} {ours:,.0f}/s = {ours / s7b:.2f} x" if ours and s7b else "-"
    rows.append((">= 1.5 x Vault Transit batch_input", shown, _verdict(ok)))

    rss = _metric(results, "11", "worker", "rss_max_child_mb")
    label = "worker pool process"
    if rss is None:
        rss, label = _metric(results, "11", "library_process", "rss_after_mb"), "library process"
    tenants = _metric(results, "11", "library_process", "tenants")
    rows.append(
        (
            "worker RSS <= 200 MB with 10,000 tenants in L1",
            f"{rss:.0f} MB ({label}, {tenants} tenants)" if rss is not None else "-",
            _verdict(None if rss is None else rss <= 200),
        )
    )
    return rows
