"""The Celery settings shared by producers and workers, built from :class:`Settings`.

Producers (:mod:`tenantkeys.queue.producer`) and workers (``workers.app``) build their apps from
:func:`celery_config`, so both sides agree on serializers, routes, timings and transport options.
"""

from __future__ import annotations

import math
import time
from typing import Any

from amqp.exceptions import MessageNacked, PreconditionFailed  # type: ignore[import-untyped]
from kombu.entity import Exchange, Queue

from tenantkeys.config import Settings
from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.jobs.contract import EXCHANGE, MAINTENANCE_QUEUE, QUEUES, ROUTES

#: Broker URL schemes of RabbitMQ (each part of a ``;``-separated failover URL).
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
#: Broker and result URLs served by Redis (``sentinel://``: through its sentinels).
_REDIS_BROKERS = ("redis://", "rediss://", "unix://", "sentinel://")


def is_amqp(broker_url: str) -> bool:
    """True when every URL of ``broker_url`` (``a;b;c`` is kombu's failover list) is RabbitMQ."""
    return all(part.strip().startswith(AMQP_SCHEMES) for part in broker_url.split(";"))


def queues(settings: Settings) -> list[Queue]:
    """The job queues, each bound under its own name to the one exchange.

    Quorum queues (``TENANTKEYS_BROKER_QUEUE_TYPE=quorum``) are declared with
    ``x-queue-type: quorum`` on a *topic* exchange: Celery's native delayed delivery (how a
    retry waits on quorum queues, see :func:`broker_countdown`) routes a delayed message back
    through the queue's exchange under ``<delay bits>.<queue>``, which a direct exchange drops.
    A binding key without wildcards matches exactly as on a direct exchange.
    """
    quorum = settings.broker_queue_type == "quorum"
    exchange = Exchange(EXCHANGE, type="topic" if quorum else "direct")  # type: ignore[no-untyped-call]
    arguments = {"x-queue-type": "quorum"} if quorum else None
    return [
        Queue(name, exchange, routing_key=name, queue_arguments=arguments)  # type: ignore[no-untyped-call]
        for name in QUEUES
    ]


def queue_type_refused(exc: BaseException, queue_type: str) -> ConfigurationError | None:
    """``TK-BROKER-QUEUE-TYPE`` when RabbitMQ refused to declare our exchange or a queue
    because it exists with other arguments (``PRECONDITION_FAILED``), else None.

    That happens when ``TENANTKEYS_BROKER_QUEUE_TYPE`` changes on a vhost whose queues exist
    (a queue's type is fixed at creation), or when producers and workers disagree on it.
    """
    if not isinstance(exc, PreconditionFailed):
        return None
    reply = str(getattr(exc, "reply_text", "") or exc).split(" - ", 1)[-1][:300]
    return ConfigurationError(
        f"RabbitMQ refused our queues as TENANTKEYS_BROKER_QUEUE_TYPE={queue_type} ({reply}); "
        "a queue keeps the type it was created with: use a new vhost (or delete the drained "
        "queues) and the same queue type on every producer and worker",
        code=ErrorCode.BROKER_QUEUE_TYPE,
    )


#: Pause after a nacked publish: kombu retries one at once on the next node, and a leader
#: election takes seconds, so back-to-back retries would all be spent within it.
NACK_PAUSE_SECONDS = 0.5


def pause_after_nack(exc: BaseException, interval: float) -> None:
    """kombu's ``errback`` of a publish retry: wait a moment when RabbitMQ nacked it."""
    if isinstance(exc, MessageNacked):
        time.sleep(NACK_PAUSE_SECONDS)


def broker_countdown(queue_type: str, seconds: float | None) -> float | None:
    """A retry's delay as the broker can honour it (``queue_type``: the app's
    ``task_default_queue_type``).

    On quorum queues a delayed job waits in RabbitMQ (Celery's native delayed delivery), which
    counts whole seconds and refuses a delay under one: the delay is rounded up. Elsewhere the
    worker holds the job until its ETA, to the millisecond.
    """
    if seconds is None or seconds <= 0 or queue_type != "quorum":
        return seconds
    return float(math.ceil(seconds))


#: kombu's name of the serializer of compact sign_batch jobs (``application/x-msgpack``).
BINARY_SERIALIZER = "msgpack"


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
    quorum = settings.broker_queue_type == "quorum"
    if quorum and not is_amqp(broker):
        raise ConfigurationError(
            "TENANTKEYS_BROKER_QUEUE_TYPE=quorum needs RabbitMQ: set TENANTKEYS_BROKER_URL to "
            "amqp:// URLs (several, separated by ';', for a cluster) or the queue type to classic",
            code=ErrorCode.CONFIG_INVALID,
        )
    transport: dict[str, Any] = {}
    if quorum:
        # A publish returns once the queue's leader has it on a majority of nodes: a node
        # dying between publish and confirm raises, and Celery publishes again (to the next
        # node of the failover URL) instead of losing the job silently.
        transport["confirm_publish"] = True
    # Celery's default publish retries give up within a second. A quorum queue whose leader
    # died nacks publishes until a new one is elected (seconds): keep trying, each time on the
    # next node of the URL, for 10-20 s; then TK-BROKER-UNAVAILABLE.
    publish_retry: dict[str, Any] = (
        {
            "max_retries": 20,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
            "errback": pause_after_nack,
        }
        if quorum
        else {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1}
    )
    if broker.startswith(_REDIS_BROKERS):
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
    # No key prefix on Celery's own keys (queues, unacked records, celery-task-meta-<id>):
    # a standard Celery client in any language finds them where its docs say. Deployments that
    # share a Redis are kept apart by the database number (or a separate instance);
    # TENANTKEYS_REDIS_PREFIX covers only our own keys. Jobs queued under the old prefixed keys:
    # tenantkeys.queue.migrate.
    results: dict[str, Any] = {}
    # kombu's SentinelChannel and Celery's SentinelBackend ask the sentinels for this primary.
    if broker.startswith("sentinel://"):
        transport["master_name"] = settings.redis_sentinel_master
    if settings.effective_result_backend.startswith("sentinel://"):
        results["master_name"] = settings.redis_sentinel_master
    return {
        "broker_url": broker,
        "result_backend": settings.effective_result_backend,
        # JSON, and msgpack for compact sign_batch jobs (raw payload bytes; docs/contract):
        # never pickle, which would run code from anyone who can write to the broker.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json", BINARY_SERIALIZER],
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
        "task_publish_retry_policy": publish_retry,
        "result_backend_transport_options": results,
        "task_routes": {name: {"queue": queue} for name, queue in ROUTES.items()},
        # Declared alike by producers and workers: a queue declared twice with other
        # arguments is refused by RabbitMQ (PRECONDITION_FAILED, TK-BROKER-QUEUE-TYPE).
        "task_queues": queues(settings),
        "task_default_queue": MAINTENANCE_QUEUE,
        "task_default_exchange": EXCHANGE,
        "task_default_exchange_type": "topic" if quorum else "direct",
        "task_default_queue_type": settings.broker_queue_type,
        "task_create_missing_queue_type": settings.broker_queue_type,
        # Quorum queues have no global QoS: Celery then sets the prefetch per consumer, and
        # retries wait in RabbitMQ's delay queues (quorum too) rather than in the worker.
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
        "worker_send_task_events": settings.worker_task_events,
        "task_send_sent_event": settings.task_sent_events,
        "broker_connection_retry_on_startup": True,
        # With acks_late a running job's message comes back after a lost connection; cancel
        # the running copy instead of finishing it twice (harmless, but wasteful).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "timezone": "UTC",
        "enable_utc": True,
    }
