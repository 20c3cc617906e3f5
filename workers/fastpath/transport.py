"""The worker's Redis transport: kombu's, plus many messages per round trip, each taken atomically.

kombu's Redis consumer takes one message per BRPOP and then records it as unacked (ZADD to the
index, HSET of the message re-encoded as JSON) in a second round trip. Under load that is two
round trips and a JSON encode per message on the consumer thread that feeds every pool
process; profiles of single-job bursts showed it as the worker's bound. It also leaves a
window: a worker killed between the two round trips has taken a message nobody will restore.

This transport keeps BRPOP for waiting (it blocks until a queue has work, across every queue
and priority, exactly as before), and after each BRPOP takes up to ``fetch_batch`` more
messages with one Lua script. For each message the script reads the tail of the queue, records
it as unacked (ZADD, HSET) and only then pops it, so a message is always either queued or
recorded, never neither: those messages have no lost-message window, and they cost the
consumer one round trip between them and no re-encoding (the script stores the text it read).

What stays as kombu has it: the message format, the unacked keys and the restore path (so
producers, ``restore_visible`` and the batched acks of ``workers.fastpath.acks`` need no change, and
workers on the stock transport can share queues with these), the prefetch limit (the script
takes at most the room the QoS has left), fairness (queues are taken in turn, in the consumer's
round-robin order, priority levels first), ``no_ack`` consumers (their queues, e.g. Celery's
reply queues, are left to BRPOP) and large messages (the script stops at ``_BYTE_BUDGET``
bytes, so a backlog of 1-2 MB ``sign_batch`` messages is read one BRPOP at a time and never
holds Redis up for long). A message the script cannot read a tag from stays queued for BRPOP;
one the script can read but Python's JSON cannot is removed from the unacked records and
logged, never handed to the consumer (kombu's own BRPOP path would drop it too).
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

#: Most bytes of messages one script call takes (beyond the BRPOP's): enough for 64 single
#: signing jobs (~2 KB each) many times over, small enough that one call holds Redis for
#: milliseconds, not the ~0.9 s that 64 messages of 2 MB took when measured.
_BYTE_BUDGET = 1_048_576

#: KEYS[1] unacked hash, KEYS[2] unacked index, KEYS[3..] queue keys grouped by priority level
#: (ARGV[3] keys per level, in the consumer's round-robin order). ARGV[1] most messages,
#: ARGV[2] now, ARGV[4] byte budget. Within a level, queues are taken one message each in turn.
#: Returns key, tag, message for each message taken. A message whose tag cannot be read is
#: left where it is and that queue is skipped until BRPOP takes it (kombu then deals with it).
_TAKE = """
local room = tonumber(ARGV[1])
local per_level = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local taken = {}
local first = 3
while first <= #KEYS and room > 0 and budget > 0 do
    local open = {}
    for i = first, math.min(first + per_level - 1, #KEYS) do open[#open + 1] = KEYS[i] end
    while #open > 0 and room > 0 and budget > 0 do
        local still = {}
        for _, key in ipairs(open) do
            if room <= 0 or budget <= 0 then break end
            local item = redis.call('LINDEX', key, -1)
            if item and #item <= budget then
                local ok, message = pcall(cjson.decode, item)
                local properties = ok and type(message) == 'table' and message['properties']
                local tag = type(properties) == 'table' and properties['delivery_tag']
                if type(tag) == 'string' then
                    local info = properties['delivery_info']
                    local exchange, routing_key = '', ''
                    if type(info) == 'table' then
                        if type(info['exchange']) == 'string' then exchange = info['exchange'] end
                        if type(info['routing_key']) == 'string' then
                            routing_key = info['routing_key']
                        end
                    end
                    redis.call('ZADD', KEYS[2], ARGV[2], tag)
                    redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' ..
                        cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
                    redis.call('RPOP', key)
                    taken[#taken + 1] = key
                    taken[#taken + 1] = tag
                    taken[#taken + 1] = item
                    room = room - 1
                    budget = budget - #item
                    still[#still + 1] = key
                end
            elseif item then
                budget = 0
            end
        end
        open = still
    end
    first = first + per_level
end
return taken
"""


class QoS(redis_transport.QoS):
    """kombu's Redis QoS; messages the script already recorded skip the unacked round trip."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        #: Tags of messages being delivered right now that the script has recorded.
        self.recorded: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._no_ack_queues: set[str] = set()

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        if queue is not None:
            self._no_ack_queues.discard(queue)
        return super().basic_cancel(consumer_tag)  # type: ignore[no-untyped-call]

    def _brpop_read(self, **options: Any) -> bool:
        delivered: bool = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        if delivered:
            self._take_more()
        return delivered

    def _take_more(self) -> None:
        if self._closing or not self.fetch_batch or not self.ack_emulation:
            return
        queues = [
            q
            for q in self._queue_cycle.consume(len(self.active_queues))
            if q not in self._no_ack_queues
        ]
        room = self.qos.can_consume_max_estimate()
        limit = self.fetch_batch if room is None else min(room, self.fetch_batch)
        if not queues or limit <= 0:
            return
        prefix = self.global_keyprefix or ""
        keys = [
            prefix + self.unacked_key,
            prefix + self.unacked_index_key,
            *(
                prefix + self._q_for_pri(q, pri)  # type: ignore[no-untyped-call]
                for pri in self.priority_steps
                for q in queues
            ),
        ]
        # A client over the channel's current pool that does not add the key prefix: the keys
        # above carry it already (kombu's prefixing client prefixes only EVALSHA's first key).
        client = redis.Redis(connection_pool=self.pool)
        if self._take is None:
            self._take = client.register_script(_TAKE)
        try:
            reply = self._take(
                keys=keys, args=[limit, time(), len(queues), _BYTE_BUDGET], client=client
            )
        except self.connection_errors as exc:
            # Nothing was lost: each message is recorded before it is popped, in one script.
            log.warning("batched fetch failed (%s); BRPOP goes on", type(exc).__name__)
            return
        taken = [
            (reply[i].decode()[len(prefix) :], reply[i + 1].decode(), reply[i + 2])
            for i in range(0, len(reply), 3)
        ]
        for index, (key, tag, item) in enumerate(taken):
            try:
                self._deliver_taken(key, tag, item)
            except BaseException:
                # Recorded as unacked but not handed to the consumer: queue the rest again now
                # (as a rejected message is), not after the visibility timeout.
                self._give_back([tag for _, tag, _ in taken[index + 1 :]])
                raise

    def _deliver_taken(self, key: str, tag: str, item: bytes) -> None:
        try:
            payload = loads(item)  # type: ignore[no-untyped-call]
        except ValueError:
            # cjson read its tag, Python's json refuses it: a message nobody can decode. It
            # must not stay in the unacked records, where kombu's restore would fail on it.
            self.qos._remove_from_indices(tag).execute()
            log.error("dropped an undecodable message of %d bytes from %s", len(item), key)
            return
        queue = key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self.qos.recorded.add(tag)
        try:
            self.connection._deliver(payload, queue)
        finally:
            self.qos.recorded.discard(tag)

    def _give_back(self, tags: list[str]) -> None:
        for tag in tags:
            try:
                self.qos.restore_by_tag(tag, leftmost=True)
            except Exception as exc:  # the visibility timeout restores it instead
                log.warning("message %s stays unacked until restored (%s)", tag, exc)


class Transport(redis_transport.Transport):
    """``broker_transport = "workers.fastpath.transport:Transport"`` for a ``redis://`` broker."""

    Channel = Channel
