"""Ack a signing batch's messages together: one Redis round trip per batch, not one per job.

kombu's Redis transport acks a message by removing it from the unacked index and hash
(ZREM + HDEL) in a pipeline of its own, on the worker's consumer thread that feeds every pool
process (its share in the profiles: docs/performance.md). :func:`acknowledge` sends those
commands for every message of a batch in one pipeline and then marks each message and request
acked, as ``Message.ack`` does.
Other transports (RabbitMQ acks are cheap) and any error take the per-request path, so a
message is acked at most once and, with acks_late, never before its job ran.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kombu.transport import redis as redis_transport
from kombu.transport import virtual

log = logging.getLogger(__name__)


def acknowledge(requests: Sequence[Any]) -> None:
    """Ack every request of the batch that is not acked yet."""
    pending = [request for request in requests if not request.acknowledged]
    qos = _shared_redis_qos(pending)
    if qos is not None:
        try:
            with qos.pipe_or_acquire() as pipe:
                for request in pending:
                    qos._remove_from_indices(request.message.delivery_tag, pipe)
                pipe.execute()
        except Exception as exc:  # the per-request path below retries and logs each one
            log.warning("batched ack failed (%s); acking one by one", type(exc).__name__)
        else:
            for request in pending:
                virtual.QoS.ack(qos, request.message.delivery_tag)  # type: ignore[no-untyped-call]
                request.message._state = "ACK"
                request.acknowledged = True
            return
    for request in pending:
        request.acknowledge()


def _shared_redis_qos(requests: Sequence[Any]) -> Any:
    """The Redis QoS all these messages came through, or ``None`` (other transport, mixed)."""
    messages: list[Any] = [getattr(request, "message", None) for request in requests]
    if not messages or any(message is None or message.acknowledged for message in messages):
        return None
    channel = messages[0].channel
    if not isinstance(channel, redis_transport.Channel):
        return None
    if any(message.channel is not channel for message in messages):
        return None
    return channel.qos
