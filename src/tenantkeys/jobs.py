"""The job contract shared by producers (:mod:`tenantkeys.client`) and the workers.

Task names, queues, the Celery settings as a plain dict, how payloads travel (base64 in JSON),
how arguments are redacted for events and dead letters (SHA-256 and size, never the payload),
and the result envelope ``{"ok": true, "result": ...}`` / ``{"ok": false, "error": {...}}``.
No Celery import: the workers and the client each build their app from :func:`celery_config`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from tenantkeys import errors
from tenantkeys.config import Settings
from tenantkeys.errors import ConfigurationError, ErrorCode, InvalidRequest, TenantKeysError

SIGN = "tenantkeys.sign"
SIGN_BATCH = "tenantkeys.sign_batch"
CREATE_KEYS = "tenantkeys.create_keys"
ROTATE_KEY = "tenantkeys.rotate_key"
REVOKE_KEY = "tenantkeys.revoke_key"
ROTATION_SWEEP = "tenantkeys.rotation_sweep"

SIGN_QUEUE = "tenantkeys.sign"
KEYS_QUEUE = "tenantkeys.keys"
MAINTENANCE_QUEUE = "tenantkeys.maintenance"
QUEUES = (SIGN_QUEUE, KEYS_QUEUE, MAINTENANCE_QUEUE)
#: One direct exchange; each queue is bound under its own name.
EXCHANGE = "tenantkeys"

#: task name -> queue. Signing has its own queue so key jobs never wait behind a burst.
ROUTES: Mapping[str, str] = {
    SIGN: SIGN_QUEUE,
    SIGN_BATCH: SIGN_QUEUE,
    CREATE_KEYS: KEYS_QUEUE,
    ROTATE_KEY: KEYS_QUEUE,
    REVOKE_KEY: KEYS_QUEUE,
    ROTATION_SWEEP: MAINTENANCE_QUEUE,
}
#: Most items one sign_batch job may carry; bigger batches belong in several jobs.
MAX_BATCH_ITEMS = 1_000
#: Message header with the producer's enqueue time (Unix seconds): signing latency runs from
#: it to the stored result. Retries carry it on, so the latency includes them.
ENQUEUED_AT_HEADER = "enqueued_at"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings of producers and workers alike; fails fast on inconsistent timings."""
    longest_wait = settings.retry_cap_seconds + settings.task_time_limit_seconds
    if settings.broker_visibility_timeout_seconds <= longest_wait:
        raise ConfigurationError(
            "TENANTKEYS_BROKER_VISIBILITY_TIMEOUT_SECONDS "
            f"({settings.broker_visibility_timeout_seconds}) must exceed the retry cap plus the "
            f"hard time limit ({longest_wait:g} s), or Redis re-delivers jobs still waiting",
            code=ErrorCode.CONFIG_INVALID,
        )
    if settings.task_soft_time_limit_seconds >= settings.task_time_limit_seconds:
        raise ConfigurationError(
            "TENANTKEYS_TASK_SOFT_TIME_LIMIT_SECONDS must be below "
            "TENANTKEYS_TASK_TIME_LIMIT_SECONDS",
            code=ErrorCode.CONFIG_INVALID,
        )
    broker = settings.effective_broker_url
    transport: dict[str, Any] = {}
    if broker.startswith(("redis://", "rediss://", "unix://")):
        transport["visibility_timeout"] = settings.broker_visibility_timeout_seconds
        # Look for a dead worker's unacked jobs every tenth of the visibility timeout (at most
        # every minute): kombu's default (a scan every ~100 s) would dwarf a short timeout.
        transport["unacked_restore_interval"] = max(
            1, min(60, settings.broker_visibility_timeout_seconds // 10)
        )
        transport["unacked_restore_throttle"] = 1
        # That restore runs under a Redis lock, and a worker killed while holding it blocks
        # every other worker's restores until it expires: kombu's 300 s would dwarf a short
        # visibility timeout, so it is half the timeout (at least 5 s, at most kombu's 300 s).
        transport["unacked_mutex_expire"] = max(
            5, min(300, settings.broker_visibility_timeout_seconds // 2)
        )
        # Queues live under the deployment's prefix, like every other key we write.
        transport["global_keyprefix"] = f"{settings.redis_prefix}:"
    results: dict[str, Any] = {}
    if settings.effective_result_backend.startswith(("redis://", "rediss://", "unix://")):
        results["global_keyprefix"] = f"{settings.redis_prefix}:"
    return {
        "broker_url": broker,
        "result_backend": settings.effective_result_backend,
        # JSON only: a pickle message from anyone who can write to the broker would run code.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the job ran, and re-queue when its process dies: a killed worker loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Failures are handled inside the tasks (retry / dead letter); what still escapes is a
        # bug or a time limit, recorded as a dead letter by a signal, so ack rather than loop.
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "task_soft_time_limit": settings.task_soft_time_limit_seconds,
        "task_time_limit": settings.task_time_limit_seconds,
        "result_expires": settings.result_expires_seconds,
        # Never store job arguments (payloads) in the result backend.
        "result_extended": False,
        "broker_transport_options": transport,
        "result_backend_transport_options": results,
        "task_routes": {name: {"queue": queue} for name, queue in ROUTES.items()},
        "task_default_queue": MAINTENANCE_QUEUE,
        "task_default_exchange": EXCHANGE,
        "task_default_exchange_type": "direct",
        "worker_send_task_events": settings.worker_task_events,
        "task_send_sent_event": settings.task_sent_events,
        "broker_connection_retry_on_startup": True,
        # With acks_late a running job's message comes back after a lost connection; cancel
        # the running copy instead of finishing it twice (harmless, but wasteful).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "timezone": "UTC",
        "enable_utc": True,
    }


def enqueued_at(headers: Mapping[str, Any] | None) -> float | None:
    """The enqueue time stamped by the producer, or ``None`` (older producer, Beat, garbage)."""
    value = (headers or {}).get(ENQUEUED_AT_HEADER)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        stamped = float(value)
    except ValueError:
        return None
    return stamped if math.isfinite(stamped) else None


# -- payload codec and redaction ---------------------------------------------------------


def encode_payload(payload: bytes) -> str:
    """A payload as it travels in a JSON message."""
    return base64.b64encode(bytes(payload)).decode("ascii")


def decode_payload(value: object) -> bytes:
    """Reverse :func:`encode_payload`; ``TK-INVALID-ENCODING`` on anything else."""
    if not isinstance(value, str):
        raise InvalidRequest("payload must be a base64 string", code=ErrorCode.INVALID_ENCODING)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "payload is not valid base64", code=ErrorCode.INVALID_ENCODING
        ) from None


def describe_payload(value: object) -> dict[str, Any]:
    """SHA-256 and size of an encoded payload: what events and dead letters show instead."""
    try:
        data = decode_payload(value)
    except InvalidRequest:
        return {"payload": "<invalid base64>"}
    return {"payload_sha256": hashlib.sha256(data).hexdigest(), "payload_size": len(data)}


def redact(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Job arguments with every payload replaced by its hash and size."""
    shown: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name == "payload":
            shown.update(describe_payload(value))
        elif name == "items" and isinstance(value, list):
            shown["items"] = [redact(i) if isinstance(i, Mapping) else "?" for i in value[:20]]
            shown["item_count"] = len(value)
        else:
            shown[name] = value if _is_small_scalar(value) else type(value).__name__
    return shown


def _is_small_scalar(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= 128
    if isinstance(value, list):
        return len(value) <= 8 and all(isinstance(v, str) and len(v) <= 32 for v in value)
    return value is None or isinstance(value, bool | int | float)


def argsrepr(args: Any, kwargs: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(argsrepr, kwargsrepr)`` for Celery: what Flower and task events display."""
    positional = "(...)" if args else "()"
    return positional, json.dumps(redact(kwargs or {}), sort_keys=True)


def tenant_of(kwargs: Mapping[str, Any]) -> str | None:
    value = kwargs.get("tenant_id")
    if isinstance(value, str):
        return value[:64]
    items = kwargs.get("items")
    if isinstance(items, list) and items and isinstance(items[0], Mapping):
        first = items[0].get("tenant_id")
        return first[:64] if isinstance(first, str) else None
    return None


# -- result envelope ---------------------------------------------------------------------


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def failed(error: TenantKeysError, **extra: Any) -> dict[str, Any]:
    """The envelope of a job that ended with ``error`` (never holds a payload)."""
    return {"ok": False, "error": {**error.to_dict(), **extra}}


def error_from(detail: Mapping[str, Any]) -> TenantKeysError:
    """Rebuild the error a worker reported, as the most specific tenantkeys class."""
    cls: type[TenantKeysError] = TenantKeysError
    found = getattr(errors, str(detail.get("error", "")), None)
    if isinstance(found, type) and issubclass(found, TenantKeysError):
        cls = found
    try:
        code: ErrorCode | None = ErrorCode(str(detail.get("code")))
    except ValueError:
        code = None
    message = str(detail.get("message", "the job failed"))
    if detail.get("dead_letter"):
        message += f" (dead-lettered as {detail['dead_letter']}; see tenantkeys dlq show)"
    provider, provider_code = detail.get("provider"), detail.get("provider_code")
    return cls(
        message,
        code=code,
        provider=str(provider) if provider else None,
        provider_code=str(provider_code) if provider_code else None,
    )


def unwrap(envelope: object) -> Any:
    """The result of an ``ok`` envelope; raise the reported error otherwise."""
    if not isinstance(envelope, Mapping) or "ok" not in envelope:
        raise TenantKeysError(f"unexpected job result of type {type(envelope).__name__}")
    if envelope["ok"]:
        return envelope.get("result")
    raise error_from(envelope.get("error") or {})
