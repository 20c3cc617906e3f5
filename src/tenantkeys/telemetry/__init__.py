"""Telemetry: Prometheus metrics (:mod:`.metrics`), their exposition (:mod:`.exporter`) and
OpenTelemetry tracing (:mod:`.tracing`).

Every metric name starts with ``tenantkeys_``; labels come from small fixed sets and never carry
a tenant id. Callers use the ``record_*`` and ``set_*`` functions re-exported here.
"""

from __future__ import annotations

from tenantkeys.telemetry.exporter import (
    STATE_GAUGES,
    ServiceState,
    StateCollector,
    StateProbe,
    process_exited,
    render_metrics,
    reset_multiproc_dir,
    start_worker_exporter,
)
from tenantkeys.telemetry.metrics import (
    BREAKER_STATE_VALUES,
    CONTENT_TYPE,
    DEFAULT_KMS_PRICES_USD,
    METRICS,
    PROVIDERS,
    BreakerState,
    CacheLayer,
    CacheResult,
    KmsOperation,
    KmsOutcome,
    Purpose,
    Queue,
    RotationOutcome,
    SignatureOutcome,
    configure_prices,
    kms_call,
    kms_outcome,
    prime,
    record_cache_lookup,
    record_kms_call,
    record_rotation,
    record_signature,
    set_build_info,
    set_l1_entries,
)

__all__ = [
    "BREAKER_STATE_VALUES",
    "CONTENT_TYPE",
    "DEFAULT_KMS_PRICES_USD",
    "METRICS",
    "PROVIDERS",
    "STATE_GAUGES",
    "BreakerState",
    "CacheLayer",
    "CacheResult",
    "KmsOperation",
    "KmsOutcome",
    "Purpose",
    "Queue",
    "RotationOutcome",
    "ServiceState",
    "SignatureOutcome",
    "StateCollector",
    "StateProbe",
    "configure_prices",
    "kms_call",
    "kms_outcome",
    "prime",
    "process_exited",
    "record_cache_lookup",
    "record_kms_call",
    "record_rotation",
    "record_signature",
    "render_metrics",
    "reset_multiproc_dir",
    "set_build_info",
    "set_l1_entries",
    "start_worker_exporter",
]
