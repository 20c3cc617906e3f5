"""The Celery settings shared by producers and workers, built from :class:`Settings`.

Producers (:mod:`tenantkeys.queue.producer`) and workers (``workers.app``) build their apps from
:func:`celery_config`, so both sides agree on serializers, routes, timings and transport options.
"""

from __future__ import annotations

from typing import Any

from tenantkeys.config import Settings
from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.jobs.contract import EXCHANGE, MAINTENANCE_QUEUE, ROUTES


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
