"""The worker's fast path: its uses of kombu, Celery and celery-batches internals, fenced here.

The modules of this package are where the worker touches those libraries' private members (the
producer's ``PollingRedisBackend`` is listed too, so one table covers them all). Each module
below names what it relies on; :data:`PRIVATE_MEMBERS` is the same list for machines, and
``tests/unit/test_fastpath_members.py`` resolves every entry on the installed libraries and
fails naming the member and the module that relies on it when an upgrade removes one.

Checked against celery 5.6.3, kombu 5.7.0, celery-batches 0.11 and redis-py 8.2.0
(:data:`CHECKED_AGAINST`); pyproject.toml pins celery, kombu and celery-batches to those minor
versions. Before raising a pin, re-read each member's use against the new version, then update
:data:`CHECKED_AGAINST`. If one breaks in production, ``TENANTKEYS_BROKER_FETCH_BATCH=0`` puts
the worker back on kombu's stock consumer path (the SIGKILL window of that path included).

:mod:`workers.fastpath.transport` (the Redis transport: take with a Lua script, wait with
BLMOVE). It replaces what kombu's poller calls for its "BRPOP" registration:
``kombu.transport.redis:Channel._brpop_start`` and ``Channel._brpop_read`` (overridden; the
poller reaches the latter through ``Channel.handlers``), and keeps kombu's bookkeeping of a
pending reply: ``Channel._in_poll``, ``Channel._brpop_sent_at`` (the health check),
``Channel._flush_brpop_reauth``, ``Channel._closing``. It takes queues in kombu's order
(``Channel._queue_cycle``, ``Channel._q_for_pri``), reads new options through
``Channel.from_transport_options``, sends on ``redis.client:Redis.connection`` (the connection
kombu's poller registered), hands messages to ``kombu.transport.virtual:Transport._deliver``,
skips the Redis write of ``kombu.transport.redis:QoS.append`` by calling
``kombu.transport.virtual:QoS.append`` itself, drops a record with
``kombu.transport.redis:QoS._remove_from_indices``, queues messages again with
``QoS.restore_by_tag``, and tracks no_ack queues by
``kombu.transport.virtual:Channel._tag_to_queue``. The unacked format it writes (index
score = time, hash value ``[message, exchange, routing_key]``) is the one ``QoS.append``
writes and ``QoS.restore_by_tag`` reads.

:mod:`workers.fastpath.acks` (one Redis round trip per batch of acks):
``kombu.transport.redis:QoS._remove_from_indices`` and ``QoS.pipe_or_acquire`` for the
pipeline, ``kombu.transport.virtual:QoS.ack`` called unbound (the in-memory half of an ack),
``kombu.message:Message._state`` and ``celery.worker.request:Request.acknowledged`` set as
``Message.ack`` and ``Request.acknowledge`` would.

:mod:`workers.fastpath.results` (one MGET and one pipeline per batch of results):
``celery.backends.base:Backend._get_result_meta`` (the stored document),
``celery.backends.redis:RedisBackend._MAX_STR_VALUE_SIZE`` (Celery's size limit) and
``RedisBackend.client``.

:mod:`workers.fastpath.batches` (:class:`~workers.fastpath.batches.FencedBatches`):
``celery_batches:Batches._tref`` (the flush timer, re-armed per strategy),
``Batches._pool`` (the pool a batch goes to), ``Batches._buffer`` (the jobs waiting for a
batch: its size decides a held flush), ``Batches.Strategy``, ``Batches._do_flush`` (the tick's
flush, held while every pool process runs a batch) and ``Batches.flush`` (overridden),
``celery_batches.trace:apply_batches_task`` (called with celery-batches'
``(task, args, loglevel, logfile)``), and ``celery.worker.request:Request._payload``, which
``SimpleRequest.from_request`` reads. It schedules the end-of-round flush with
``kombu.asynchronous.hub:Hub.call_soon`` on ``celery.worker.consumer.consumer:Consumer.hub`` and
counts processes with ``celery.concurrency.prefork:TaskPool.num_processes``.

``tenantkeys.queue.producer:PollingRedisBackend`` (the producer's result backend, outside this
package): overrides ``celery.backends.redis:RedisBackend.on_task_call`` (the per-job SUBSCRIBE
that ``Celery.send_task`` calls) with a no-op, and relies on
``celery.backends.redis:ResultConsumer.consume_from`` subscribing when ``AsyncResult.get`` is
called.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

#: The library versions every entry of :data:`PRIVATE_MEMBERS` was last checked against.
CHECKED_AGAINST: Final[Mapping[str, str]] = MappingProxyType(
    {"celery": "5.6.3", "kombu": "5.7.0", "celery-batches": "0.11", "redis": "8.2.0"}
)

_REDIS = "kombu.transport.redis"
_VIRTUAL = "kombu.transport.virtual"

#: Module (or ``module:Class``) of ours -> the ``module:Class.member`` it relies on.
PRIVATE_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "workers.fastpath.transport": (
            f"{_REDIS}:Channel._brpop_start",
            f"{_REDIS}:Channel._brpop_read",
            f"{_REDIS}:Channel.handlers",
            f"{_REDIS}:Channel._in_poll",
            f"{_REDIS}:Channel._brpop_sent_at",
            f"{_REDIS}:Channel._flush_brpop_reauth",
            f"{_REDIS}:Channel._closing",
            f"{_REDIS}:Channel._queue_cycle",
            f"{_REDIS}:Channel._q_for_pri",
            f"{_REDIS}:Channel.from_transport_options",
            f"{_REDIS}:QoS._remove_from_indices",
            f"{_REDIS}:QoS.restore_by_tag",
            f"{_VIRTUAL}:QoS.append",
            f"{_VIRTUAL}:Transport._deliver",
            f"{_VIRTUAL}:Channel._tag_to_queue",
            "redis.client:Redis.connection",
        ),
        "workers.fastpath.acks": (
            f"{_REDIS}:QoS._remove_from_indices",
            f"{_REDIS}:QoS.pipe_or_acquire",
            f"{_VIRTUAL}:QoS.ack",
            "kombu.message:Message._state",
            "celery.worker.request:Request.acknowledged",
        ),
        "workers.fastpath.results": (
            "celery.backends.base:Backend._get_result_meta",
            "celery.backends.redis:RedisBackend._MAX_STR_VALUE_SIZE",
            "celery.backends.redis:RedisBackend.client",
        ),
        "workers.fastpath.batches": (
            "celery_batches:Batches._tref",
            "celery_batches:Batches._pool",
            "celery_batches:Batches._buffer",
            "celery_batches:Batches.Strategy",
            "celery_batches:Batches._do_flush",
            "celery_batches:Batches.flush",
            "kombu.asynchronous.hub:Hub.call_soon",
            "celery.worker.consumer.consumer:Consumer.hub",
            "celery.concurrency.prefork:TaskPool.num_processes",
            "celery_batches.trace:apply_batches_task",
            "celery.worker.request:Request._payload",
        ),
        "tenantkeys.queue.producer:PollingRedisBackend": (
            "celery.backends.redis:RedisBackend.on_task_call",
            "celery.backends.redis:ResultConsumer.consume_from",
        ),
    }
)
