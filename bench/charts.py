"""PNG charts from a results dict (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DPI = 110


def _ok(results: dict[str, Any], scenario: str) -> dict[str, Any] | None:
    found = results["scenarios"].get(scenario)
    return found if found and found.get("status") == "ok" else None


def throughput_vs_batch(results: dict[str, Any], path: Path) -> Path:
    """Signatures per second against batch size: Celery (Redis, RabbitMQ) and Vault Transit."""
    fig, ax = plt.subplots(figsize=(8, 5))
    s3 = _ok(results, "3")
    for key, label in (
        ("sweep_redis", "Celery + Redis, JSON items"),
        ("sweep_rabbitmq", "Celery + RabbitMQ, JSON items"),
        ("sweep_redis_compact", "Celery + Redis, compact msgpack"),
        ("sweep_rabbitmq_compact", "Celery + RabbitMQ, compact msgpack"),
    ):
        rows = (s3 or {}).get("series", {}).get(key, [])
        if rows:
            ax.plot(
                [r["batch_size"] for r in rows],
                [r["signatures_per_s"] for r in rows],
                marker="o",
                label=label,
            )
    s7 = _ok(results, "7")
    rows = (s7 or {}).get("series", {}).get("batch_sweep", [])
    if rows:
        ax.plot(
            [r["batch_size"] for r in rows],
            [r["signatures_per_s"] for r in rows],
            marker="s",
            label="Vault Transit batch_input",
        )
    for scenario, label, style in (
        ("1", "S1 raw Ed25519, 2 processes", "--"),
        ("2", "S2 library", ":"),
    ):
        found = _ok(results, scenario)
        if found and found.get("headline"):
            ax.axhline(found["headline"], linestyle=style, color="grey", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("payloads per job (batch size)")
    ax.set_ylabel("signatures per second")
    ax.set_title(f"Throughput against batch size ({results['meta']['mode']} mode)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _cdf(ax: Any, samples: list[float], label: str) -> None:
    if not samples:
        return
    ordered = sorted(samples)
    ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
    ax.plot(ordered, ys, label=label)


def latency_distribution(results: dict[str, Any], path: Path) -> Path:
    """CDFs of per-signature latency: in-process, KMS baselines and enqueue-to-result."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for scenario, key, label in (
        ("2", "latency_ms", "S2 library sign (warm L1)"),
        ("9", "latency_ms_l2_empty", "S9 cold first signature"),
        ("5", "latency_ms", "S5 KMS unwrap per signature"),
        ("6", "latency_ms", "S6 KMS Sign"),
        ("7", "latency_ms", "S7 Vault Transit sign"),
    ):
        found = _ok(results, scenario)
        _cdf(ax, [r["ms"] for r in (found or {}).get("series", {}).get(key, [])], label)
    s10 = _ok(results, "10")
    for level in (s10 or {}).get("series", {}).get("levels", []):
        _cdf(ax, level.get("samples_ms", []), f"S10 enqueue-to-result at {level['fraction']:.0%}")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Latency distribution ({results['meta']['mode']} mode)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def kms_calls_and_cost(results: dict[str, Any], path: Path) -> Path:
    """KMS calls and AWS list-price cost per million signatures, by scenario."""
    labels: list[str] = []
    calls: list[float] = []
    costs: list[float] = []
    entries: list[tuple[str, dict[str, Any]]] = []
    for scenario in ("5", "6", "7", "9"):
        found = _ok(results, scenario)
        if found and found.get("kms"):
            entries.append((f"S{scenario}", found["kms"]))
    s8 = _ok(results, "8")
    if s8:
        for key, label in (("as_fast_as_possible", "S8 burst"), ("spread_over_one_hour", "S8 1 h")):
            if isinstance(s8["metrics"].get(key), dict):
                entries.append((label, s8["metrics"][key]["kms"]))
    for label, kms in entries:
        labels.append(label)
        calls.append(float(kms.get("calls_per_million") or 0))
        costs.append(float(kms.get("cost_per_million_usd") or 0))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    left.bar(labels, [max(c, 0.1) for c in calls], color="tab:blue")
    left.set_yscale("log")
    left.set_ylabel("KMS calls per 1M signatures (log)")
    right.bar(labels, costs, color="tab:orange")
    right.set_ylabel("USD per 1M signatures (AWS list price)")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=30)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"KMS calls and cost by scenario ({results['meta']['mode']} mode)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def draw_all(results: dict[str, Any], out: Path) -> list[Path]:
    """All three charts, named ``<chart>-<mode>.png`` under ``out``."""
    mode = results["meta"]["mode"]
    return [
        throughput_vs_batch(results, out / f"throughput-vs-batch-{mode}.png"),
        latency_distribution(results, out / f"latency-{mode}.png"),
        kms_calls_and_cost(results, out / f"kms-calls-cost-{mode}.png"),
    ]
