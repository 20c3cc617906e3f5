"""Prometheus metrics of the service, defined once here, and the functions that record them.

Every name starts with ``tenantkeys_``. Labels come from small fixed sets and never carry a
tenant id (one series per tenant would grow without bound). Callers use the ``record_*`` and
``set_*`` functions, which reject label values outside those sets, not the metric objects.

Two kinds of metric:

* Events (KMS calls, cache lookups, signatures, rotations) are counted in the process where they
  happen. Under Celery's prefork pool, prometheus-client's multiprocess mode merges the pool
  children's values; it is on when ``PROMETHEUS_MULTIPROC_DIR`` is in the environment *before*
  the process starts (prometheus-client reads it at import).
* Shared state (queue depth, dead letters, breaker, key ages, last sweep) lives in Redis, the
  broker and the key store. It is read at scrape time through a :data:`StateProbe`, so every
  exporter reports the same fresh value; a gauge set by whichever process looked last would go
  stale on the other hosts and keep alerts firing after recovery.
"""

from __future__ import annotations

import bisect
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Final, Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
)

from tenantkeys.config import KMS_PROVIDERS
from tenantkeys.errors import CircuitOpenError, as_error
from tenantkeys.telemetry import fleet
from tenantkeys.telemetry.tracing import kms_span

#: Content type of :func:`render_metrics` output, for the ``/metrics`` response.
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: Values of the ``provider`` label: the registered KMS providers.
PROVIDERS: Final = KMS_PROVIDERS

KmsOperation = Literal["encrypt", "decrypt", "generate_data_key", "describe", "health"]
KmsOutcome = Literal["ok", "transient", "permission", "config", "integrity", "error"]
CacheLayer = Literal["l1", "l2"]
CacheResult = Literal["hit", "miss"]
#: ``rejected``: bad input (the caller's fault); ``retry``: will be retried, not a result yet;
#: ``failed``: gave up (dead letter or unexpected error).
SignatureOutcome = Literal["ok", "rejected", "retry", "failed"]
Purpose = Literal["signing", "encryption"]
#: ``skipped``: another sweep or worker rotated it first (lock or conditional update lost).
RotationOutcome = Literal["ok", "skipped", "failed"]
#: Where a job came in: the broker (checked by the workers) or the HTTP front door.
JobPath = Literal["queue", "http"]
#: pybreaker's own state names, as `Resilience.state()` returns them.
BreakerState = Literal["closed", "half-open", "open"]
Queue = Literal["tenantkeys.sign", "tenantkeys.keys", "tenantkeys.maintenance"]

_log = logging.getLogger(__name__)

BREAKER_STATE_VALUES: Final[Mapping[str, int]] = {"closed": 0, "half-open": 1, "open": 2}

#: USD per KMS request, list prices: AWS, GCP (software keys) and Azure (standard tier) charge
#: $0.03 per 10,000 requests; self-hosted Vault and the local provider cost nothing per request.
DEFAULT_KMS_PRICES_USD: Final[Mapping[str, float]] = {
    "local": 0.0,
    "aws": 0.03 / 10_000,
    "vault": 0.0,
    "gcp": 0.03 / 10_000,
    "azure": 0.03 / 10_000,
}
_prices: dict[str, float] = dict(DEFAULT_KMS_PRICES_USD)

_KMS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Enqueue to result includes queueing and retries: a backlog or a KMS outage takes jobs past
#: 10 s, where a top bucket of 10 s made every quantile read exactly 10 (seen live).
_SIGN_SECONDS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    *(30, 60, 120, 300),
)

KMS_REQUESTS = Counter(
    "tenantkeys_kms_requests_total",
    "KMS requests that reached the provider, by outcome.",
    ["provider", "operation", "outcome"],
)
KMS_DURATION = Histogram(
    "tenantkeys_kms_request_duration_seconds",
    "Duration of KMS requests, including SDK retries.",
    ["provider", "operation"],
    buckets=_KMS_SECONDS,
)
KMS_COST = Counter(
    "tenantkeys_kms_estimated_cost_usd_total",
    "Estimated KMS spend from configured per-request prices.",
    ["provider"],
)
CACHE_LOOKUPS = Counter(
    "tenantkeys_cache_lookups_total", "Key cache lookups by layer and result.", ["layer", "result"]
)
L1_ENTRIES = Gauge(
    "tenantkeys_l1_cache_entries",
    "Decrypted keys held in L1, summed over live worker processes.",
    multiprocess_mode="livesum",
)
SIGNATURES = Counter("tenantkeys_signatures_total", "Signing jobs by outcome.", ["outcome"])
SIGN_LATENCY = Histogram(
    "tenantkeys_sign_latency_seconds",
    "Time from enqueue to signing result.",
    buckets=_SIGN_SECONDS,
)
ROTATIONS = Counter(
    "tenantkeys_rotations_total", "Key rotations by purpose and outcome.", ["purpose", "outcome"]
)
SCOPE_REFUSALS = Counter(
    "tenantkeys_scope_refusals_total",
    "Jobs refused because their producer may not sign for a tenant they name.",
    ["producer", "path"],
)
JOB_ID_CONFLICTS = Counter(
    "tenantkeys_job_id_conflicts_total",
    "Jobs refused because another producer used their job id first.",
    ["producer", "path"],
)
BUILD_INFO = Gauge(
    "tenantkeys_build_info",
    "Always 1; the version and the configured KMS provider as labels.",
    ["version", "provider"],
    multiprocess_mode="max",
)

#: The event metrics, recorded per process; the shared-state gauges are in STATE_GAUGES.
METRICS: Final = (
    KMS_REQUESTS,
    KMS_DURATION,
    KMS_COST,
    CACHE_LOOKUPS,
    L1_ENTRIES,
    SIGNATURES,
    SIGN_LATENCY,
    ROTATIONS,
    SCOPE_REFUSALS,
    JOB_ID_CONFLICTS,
    BUILD_INFO,
)


@cache
def _choices(allowed: object) -> tuple[str, ...]:
    """The values of a ``Literal`` (or the tuple itself), computed once per type."""
    return allowed if isinstance(allowed, tuple) else get_args(allowed)


def check_label(label: str, value: str, allowed: object) -> str:
    """Refuse a label value outside its fixed set: a typo must not mint a new series."""
    choices = _choices(allowed)
    if value not in choices:
        raise ValueError(f"metric label {label}={value!r} is not one of {', '.join(choices)}")
    return value


#: Label children of the per-signature hot path, bound once: ``labels()`` hashes its arguments
#: and takes a lock on every call. A key exists only after its values passed :func:`_check`.
_CACHE_CHILDREN: dict[tuple[str, str], Counter] = {}
_SIGNATURE_CHILDREN: dict[str, Counter] = {}


def configure_prices(prices: Mapping[str, float]) -> None:
    """Set USD per request for some providers; the others keep :data:`DEFAULT_KMS_PRICES_USD`."""
    for provider, price in prices.items():
        check_label("provider", provider, PROVIDERS)
        if not price >= 0:
            raise ValueError(f"KMS price for {provider!r} must be >= 0, got {price!r}")
    _prices.update(DEFAULT_KMS_PRICES_USD)
    _prices.update(prices)


def kms_outcome(exc: BaseException | None) -> KmsOutcome:
    """The ``outcome`` label for a KMS call that raised ``exc`` (``None``: it succeeded)."""
    return "ok" if exc is None else as_error(exc).kms_outcome


def record_kms_call(
    provider: str, operation: KmsOperation, outcome: KmsOutcome, seconds: float
) -> None:
    """Count one KMS request, its duration and its estimated cost."""
    check_label("provider", provider, PROVIDERS)
    check_label("operation", operation, KmsOperation)
    check_label("outcome", outcome, KmsOutcome)
    KMS_REQUESTS.labels(provider, operation, outcome).inc()
    fleet.count(fleet.KMS, f"{provider}:{operation}:{outcome}")
    KMS_DURATION.labels(provider, operation).observe(max(seconds, 0.0))
    price = _prices[provider]
    if price:
        KMS_COST.labels(provider).inc(price)


@contextmanager
def kms_call(provider: str, operation: KmsOperation) -> Iterator[None]:
    """Trace, time and count the KMS request made inside the block.

    A :class:`CircuitOpenError` means the request was never sent: it is neither counted
    nor priced. Any exception is re-raised unchanged.
    """
    started = time.perf_counter()
    with kms_span(provider, operation):
        try:
            yield
        except CircuitOpenError:
            raise
        except Exception as exc:
            record_kms_call(provider, operation, kms_outcome(exc), time.perf_counter() - started)
            raise
        record_kms_call(provider, operation, "ok", time.perf_counter() - started)


def record_cache_lookup(layer: CacheLayer, result: CacheResult) -> None:
    """Count one lookup in the L1 (process) or L2 (Redis) key cache."""
    child = _CACHE_CHILDREN.get((layer, result))
    if child is None:
        child = CACHE_LOOKUPS.labels(
            check_label("layer", layer, CacheLayer), check_label("result", result, CacheResult)
        )
        _CACHE_CHILDREN[(layer, result)] = child
    child.inc()
    fleet.count(fleet.CACHE, f"{layer}:{result}")


def set_l1_entries(entries: int) -> None:
    """Report this process's L1 size (summed over live processes on export)."""
    L1_ENTRIES.set(entries)


def record_signature(outcome: SignatureOutcome, seconds: float | None, *, count: int = 1) -> None:
    """Count ``count`` signatures of one job, each ``seconds`` from enqueue to result
    (``None`` for ``retry``). A batch's items share one latency, so they are counted at once.

    Enqueue time comes from the producer's clock, so skew can make it negative: clamped to 0.
    """
    child = _SIGNATURE_CHILDREN.get(outcome)
    if child is None:
        child = SIGNATURES.labels(check_label("outcome", outcome, SignatureOutcome))
        _SIGNATURE_CHILDREN[outcome] = child
    child.inc(count)
    if seconds is not None:
        _observe(SIGN_LATENCY, max(seconds, 0.0), count)


def _observe(histogram: Histogram, value: float, count: int) -> None:
    """``count`` observations of ``value``: what ``observe`` does ``count`` times, in one step
    (prometheus-client's Histogram has no weight; its bucket and sum values take any amount)."""
    if count == 1:
        histogram.observe(value)
        return
    histogram._sum.inc(value * count)
    bounds = histogram._upper_bounds
    histogram._buckets[bisect.bisect_left(bounds, value)].inc(count)


def record_rotation(purpose: Purpose, outcome: RotationOutcome) -> None:
    """Count one rotation attempt of a (tenant, purpose) key."""
    ROTATIONS.labels(
        check_label("purpose", purpose, Purpose), check_label("outcome", outcome, RotationOutcome)
    ).inc()


#: Producer names label two counters: the scopes file bounds them to a few, from this alphabet.
_PRODUCER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _producer(name: str) -> str:
    if not _PRODUCER_NAME.fullmatch(name):
        raise ValueError(f"metric label producer={name!r} is not a producer name")
    return name


def record_scope_refusal(producer: str, path: JobPath) -> None:
    """Count one job refused for its producer's tenant scope (label: the producer's name)."""
    SCOPE_REFUSALS.labels(_producer(producer), check_label("path", path, JobPath)).inc()


def record_job_id_conflict(producer: str, path: JobPath) -> None:
    """Count one job refused because another producer used its job id first."""
    JOB_ID_CONFLICTS.labels(_producer(producer), check_label("path", path, JobPath)).inc()


def prime(provider: str) -> None:
    """Export every known label set at 0, so ratios and alerts see 0, not "no data".

    Prometheus' instrumentation guide: initialise labelled metrics to zero at start-up. The
    API and the worker (its parent, before the pool forks) call this once at start.
    """
    check_label("provider", provider, PROVIDERS)
    for operation in get_args(KmsOperation):
        KMS_DURATION.labels(provider, operation)
        for outcome in get_args(KmsOutcome):
            KMS_REQUESTS.labels(provider, operation, outcome)
    KMS_COST.labels(provider)
    for layer in get_args(CacheLayer):
        for result in get_args(CacheResult):
            CACHE_LOOKUPS.labels(layer, result)
    for outcome in get_args(SignatureOutcome):
        SIGNATURES.labels(outcome)
    for purpose in get_args(Purpose):
        for rotation in get_args(RotationOutcome):
            ROTATIONS.labels(purpose, rotation)


def set_build_info(version: str, provider: str) -> None:
    """Publish ``tenantkeys_build_info{version, provider} 1`` (one series per deployment)."""
    BUILD_INFO.labels(version, check_label("provider", provider, PROVIDERS)).set(1)
