"""The worker's Redis transport: kombu's, plus many messages per round trip, each taken atomically.

kombu's Redis consumer takes one message per BRPOP and then records it as unacked (ZADD to the
index, HSET of the message re-encoded as JSON) in a second round trip. Under load that is two
round trips and a JSON encode per message on the consumer thread that feeds every pool
process; profiles of single-job bursts showed it as the worker's bound. It also leaves a
window: a worker killed between the two round trips has taken a message nobody will restore.

This transport keeps BRPOP for waiting (it blocks until a queue has work, across every queue
and priority, exactly as before), and after each BRPOP takes up to ``fetch_batch`` more
messages with one Lua script that pops each one and records it as unacked in the same atomic
step. Those messages have no lost-message window and cost the consumer one round trip between
them, no re-encoding (the script stores the message text it popped). The message format, the
unacked keys and the restore path are kombu's own, so producers, ``restore_visible`` and
acks (``workers.acks``) need no change, and workers on the stock transport can share queues
with it. The prefetch limit still holds: the script takes at most the room the QoS has left.
"""

from __future__ import annotations

import logging
from time import time
from typing import Any

import redis
from kombu.transport import redis as redis_transport
from kombu.transport import virtual
from kombu.utils.json import loads

log = logging.getLogger(__name__)

#: Pops up to ARGV[1] messages from KEYS[3..] (in that order: priority, then queue) and records
#: each as kombu records an unacked message: ZADD index (ARGV[2] = now), HSET tag ->
#: [message, exchange, routing_key]. The message text is stored as popped, not re-encoded.
_TAKE = """
local room = tonumber(ARGV[1])
local taken = {}
for i = 3, #KEYS do
    while room > 0 do
        local item = redis.call('RPOP', KEYS[i])
        if not item then break end
        local ok, message = pcall(cjson.decode, item)
        local properties = ok and type(message) == 'table' and message['properties']
        local tag = type(properties) == 'table' and properties['delivery_tag']
        if type(tag) ~= 'string' then
            -- Not a kombu message: hand it back untouched (the consumer's BRPOP path and the
            -- dead-letter consumer deal with it); stop reading this queue for now.
            redis.call('RPUSH', KEYS[i], item)
            break
        end
        local info = properties['delivery_info']
        local exchange, routing_key = '', ''
        if type(info) == 'table' then
            exchange = info['exchange'] or ''
            routing_key = info['routing_key'] or ''
        end
        redis.call('ZADD', KEYS[2], ARGV[2], tag)
        redis.call('HSET', KEYS[1], tag,
            '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
        taken[#taken + 1] = KEYS[i]
        taken[#taken + 1] = item
        room = room - 1
    end
    if room <= 0 then break end
end
return taken
"""


class QoS(redis_transport.QoS):
    """kombu's Redis QoS; messages the script already recorded skip the unacked round trip."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.recorded: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().append(message, delivery_tag)  # type: ignore[no-untyped-call]


class Channel(redis_transport.Channel):
    """kombu's Redis channel; after each BRPOP, up to ``fetch_batch`` more messages at once."""

    QoS = QoS
    #: Most messages taken in one extra round trip (transport option ``fetch_batch``; 0 = off).
    fetch_batch = 64
    from_transport_options = (*redis_transport.Channel.from_transport_options, "fetch_batch")  # type: ignore[assignment]

    _take: Any = None

    def _brpop_read(self, **options: Any) -> bool:
        delivered: bool = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        if delivered:
            try:
                self._take_more()
            except self.connection_errors as exc:
                # Nothing was lost: the script pops and records atomically, or not at all.
                log.warning("batched fetch failed (%s); BRPOP goes on", type(exc).__name__)
        return delivered

    def _take_more(self) -> None:
        if not self.fetch_batch or not self.ack_emulation or not self.active_queues:
            return
        room = self.qos.can_consume_max_estimate()
        limit = self.fetch_batch if room is None else min(room, self.fetch_batch)
        if limit <= 0:
            return
        prefix = self.global_keyprefix or ""
        queues = list(self.active_queues)
        keys = [
            prefix + self.unacked_key,
            prefix + self.unacked_index_key,
            *(
                prefix + self._q_for_pri(q, pri)  # type: ignore[no-untyped-call]
                for pri in self.priority_steps
                for q in queues
            ),
        ]
        if self._take is None:
            # A client over the channel's pool that does not add the key prefix: the keys
            # above carry it already (kombu's prefixing client prefixes only EVALSHA's first key).
            self._take = redis.Redis(connection_pool=self.pool).register_script(_TAKE)
        reply = self._take(keys=keys, args=[limit, time()])
        pairs = [(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]
        for index, (key, item) in enumerate(pairs):
            try:
                self._deliver_taken(key.decode()[len(prefix) :], item)
            except Exception:
                # Recorded as unacked but not handed to the consumer: put this one and the
                # rest back at the head of their queues now, not after the visibility timeout.
                self._give_back(pairs[index:])
                raise

    def _deliver_taken(self, key: str, item: bytes) -> None:
        payload = loads(item)  # type: ignore[no-untyped-call]
        queue = key.rsplit(self.sep, 1)[0]
        self.qos.recorded.add(payload["properties"]["delivery_tag"])
        self._queue_cycle.rotate(queue)
        self.connection._deliver(payload, queue)

    def _give_back(self, pairs: list[tuple[bytes, bytes]]) -> None:
        for _key, item in pairs:
            tag = loads(item)["properties"]["delivery_tag"]  # type: ignore[no-untyped-call]
            self.qos.recorded.discard(tag)
            if tag not in self.qos._delivered:
                self.qos.restore_by_tag(tag, leftmost=True)


class Transport(redis_transport.Transport):
    """``broker_transport = "workers.transport:Transport"`` for a ``redis://`` broker."""

    Channel = Channel
