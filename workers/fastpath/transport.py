"""The worker's Redis transport: kombu's, minus the lost-message window, many messages per trip.

kombu's Redis consumer takes a message with BRPOP and records it as unacked (ZADD to the index,
HSET of the message re-encoded as JSON) in a second round trip. A worker killed between the two
has taken a message nobody will restore: a fire-and-forget job is gone. Under load it is also
two round trips and a JSON encode per message on the consumer thread that feeds every pool
process.

Here nothing ever pops a message without recording it in the same atomic step. The consumer
asks for messages with one Lua script (:data:`_TAKE`): for each message it reads the tail of a
queue, records it as unacked in kombu's own format (index score, hash value ``[message,
exchange, routing_key]`` holding the text it read, no re-encoding) and only then pops it. So a
message is at every instant queued or recorded, never neither, and one round trip takes up to
``fetch_batch`` messages. When that script finds every queue empty, the consumer waits with
``BLMOVE key key RIGHT RIGHT``: a blocking move of a queue's tail onto itself, which leaves the
queue as it was and only wakes the consumer, whose next script call takes the message. There is
no in-flight list to restore and no consumer registry: a killed consumer leaves its messages
either queued or unacked, and kombu's ``restore_visible`` brings the latter back.

BLMOVE watches one key where BRPOP watched all of them, so an idle consumer watches its busiest
key (the most messages taken, recent rounds weighing more) for ``fetch_wait`` seconds, then
scans every queue again. A message arriving on the watched key is taken at once; one arriving
while idle on another queue or priority level waits until the wait ends, which Redis rounds up
to its next ``hz`` tick: 50 to 150 ms on a default server (hz 10; measured p50 90 ms). On a
single-key consumer the wait is kombu's ``brpop_timeout``. Several idle consumers watching one
key all wake for a message; one takes it. Under load no one waits: each round trip takes what
is queued, from every key, in kombu's order.

What stays as kombu has it: the message format, the unacked keys and the restore path (so
producers, ``restore_visible``, the batched acks of :mod:`workers.fastpath.acks` and workers on
the stock transport share queues with these), the prefetch limit (the script takes at most the
room the QoS has left), fairness (within a priority level, queues are taken one message each in
turn, in the consumer's round-robin order, higher levels first, as BRPOP's key order does),
``no_ack`` consumers (their messages are popped without a record, one per queue and round, as
BRPOP would) and the key prefix (``global_keyprefix``). Large messages: a round stops at
:data:`_BYTE_BUDGET` bytes (its first message is taken whatever its size), so a backlog of
1-2 MB ``sign_batch`` messages is taken one per round trip and never holds Redis up for long;
the script decodes only the tail of a message (kombu writes its properties last), not 2 MB.

An item that is not a kombu message (no delivery tag) is popped and dropped with an error log,
as kombu's BRPOP path drops it (with an exception); one the script reads but Python's JSON
cannot is removed from the unacked records and dropped the same way (kombu's restore would fail
on it). Messages taken while the channel closes, or after a callback raised, are queued again
at once, where they were. A round whose reply is lost with the connection stays unacked and
comes back after the visibility timeout (BRPOP's reply would have been lost for good).

``fetch_batch = 0`` (``TENANTKEYS_BROKER_FETCH_BATCH=0``) is kombu's stock path, window
included: the fallback if an upgrade breaks the members listed in :mod:`workers.fastpath`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from importlib import resources
from queue import Empty
from time import monotonic, time
from typing import Any, NamedTuple

from kombu.transport import redis as redis_transport
from kombu.transport import virtual
from kombu.utils.json import loads
from redis.exceptions import NoScriptError

log = logging.getLogger(__name__)

#: Most bytes of messages one script call takes (its first message whatever its size): enough
#: for 64 single signing jobs (~2 KB each) many times over, small enough that one call holds
#: Redis for milliseconds even when the queue holds 2 MB sign_batch messages.
_BYTE_BUDGET = 1_048_576

#: Weight a round keeps of the traffic counted before it: after a burst of sign jobs, one
#: maintenance job does not move the watch, a lasting change of traffic does.
_TRAFFIC_DECAY = 0.9

#: The take script (take.lua: its header says what KEYS, ARGV and the reply hold). Every
#: message leaves its queue through it, recorded as unacked first, in one atomic call.
_TAKE = (resources.files(__package__) / "take.lua").read_text(encoding="utf-8")
_TAKE_SHA = hashlib.sha1(_TAKE.encode(), usedforsecurity=False).hexdigest()


class _Taken(NamedTuple):
    """One item of a take script's reply."""

    kind: str  # 'a' recorded as unacked, 'n' for a no_ack consumer, 'x' not a kombu message
    key: str  # the queue key it came from, without the global key prefix
    tag: str
    item: bytes


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
    """kombu's Redis channel, taking messages with :data:`_TAKE` and waiting with BLMOVE."""

    QoS = QoS
    #: Most messages one round trip takes (transport option ``fetch_batch``; 0 = kombu's path).
    fetch_batch = 64
    #: Seconds an idle consumer watches one key before it scans every queue again (transport
    #: option ``fetch_wait``): how long a message on another key may wait while it is idle.
    #: Redis ends a blocking wait on its next ``hz`` tick: 0.05 s waits 50-150 ms at hz 10.
    fetch_wait = 0.05
    from_transport_options = (  # type: ignore[assignment]
        *redis_transport.Channel.from_transport_options,
        "fetch_batch",
        "fetch_wait",
    )

    #: What the reply pending on the blocking connection answers: "take", "wait" or nothing.
    _pending: str | None = None
    #: The last take found every queue empty: wait on one key before the next.
    _idle = False
    _script_loaded = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._no_ack_queues: set[str] = set()
        #: Messages taken per key (without prefix), decayed each round: the busiest is watched.
        self._traffic: dict[str, float] = {}

    @property
    def _fast(self) -> bool:
        return bool(self.fetch_batch) and bool(self.ack_emulation)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        self._idle = False  # a new queue is scanned at once, not after the wait
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        if queue is not None:
            self._no_ack_queues.discard(queue)
        return super().basic_cancel(consumer_tag)  # type: ignore[no-untyped-call]

    # -- the blocking connection: kombu's poller calls these for its "BRPOP" registration --

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._fast:
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        queues: list[str] = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys: list[str] = [
            self._q_for_pri(queue, pri)  # type: ignore[no-untyped-call]
            for pri in self.priority_steps
            for queue in queues
        ]
        prefix = self.global_keyprefix or ""
        if self._idle:
            watched = max(keys, key=lambda key: self._traffic.get(key, 0.0))
            wait = self.fetch_wait
            if len(keys) == 1 and self.brpop_timeout:
                wait = self.brpop_timeout  # nothing else to miss meanwhile
            if timeout is not None:
                wait = timeout
            key = prefix + watched
            self._send("wait", "BLMOVE", key, key, "RIGHT", "RIGHT", wait)
            return
        room = self.qos.can_consume_max_estimate()
        limit = self.fetch_batch if room is None else max(1, min(room, self.fetch_batch))
        script_keys = [prefix + self.unacked_key, prefix + self.unacked_index_key]
        script_keys += [prefix + key for key in keys]
        no_ack = "".join("1" if queue in self._no_ack_queues else "0" for queue in queues)
        self._load_script()
        self._send(
            "take",
            "EVALSHA",
            _TAKE_SHA,
            len(script_keys),
            *script_keys,
            limit,
            time(),
            len(queues),
            _BYTE_BUDGET,
            no_ack,
        )

    def _send(self, pending: str, *command: Any) -> None:
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self._pending = pending
        connection.send_command(*command)

    def _load_script(self) -> None:
        if not self._script_loaded:
            with self.conn_or_acquire() as client:
                client.script_load(_TAKE)
            self._script_loaded = True

    def _brpop_read(self, **options: Any) -> bool:
        if not self._fast:
            delivered: bool = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
            return delivered
        pending, self._pending = self._pending, None
        try:
            if pending is None:
                raise Empty()
            connection = self.client.connection
            try:
                reply = self.client.parse_response(
                    connection, "EVALSHA" if pending == "take" else "BLMOVE", **options
                )
            except NoScriptError:
                # Flushed or failed over since it was loaded: the script ran nothing.
                self._script_loaded = False
                raise Empty() from None
            except self.connection_errors:
                # As kombu: disconnect, and the next poll reconnects. A take's messages may be
                # recorded already; they come back after the visibility timeout.
                connection.disconnect()
                raise
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]  # idle: kombu's moment
        if pending == "wait":
            self._idle = False  # a message on the watched key, or time to scan them all
            raise Empty()
        taken = self._parse(reply)
        if not taken:
            self._idle = True
            raise Empty()
        if self._closing:
            self._give_back(taken)
            raise Empty()
        for key in self._traffic:
            self._traffic[key] *= _TRAFFIC_DECAY
        for item in taken:
            if item.kind != "x":
                self._traffic[item.key] = self._traffic.get(item.key, 0.0) + 1
        self._deliver_round(taken)
        return True

    def _parse(self, reply: Sequence[bytes]) -> list[_Taken]:
        cut = len(self.global_keyprefix or "")
        return [
            _Taken(
                reply[i].decode(), reply[i + 1].decode()[cut:], reply[i + 2].decode(), reply[i + 3]
            )
            for i in range(0, len(reply), 4)
        ]

    def _deliver_round(self, taken: list[_Taken]) -> None:
        for index, item in enumerate(taken):
            try:
                self._deliver_one(item)
            except BaseException:
                # Taken but not handed to the consumer: queue the rest again now, where they
                # were, not after the visibility timeout. The callback's error propagates, as
                # it does from kombu's BRPOP path.
                self._give_back(taken[index + 1 :])
                raise

    def _deliver_one(self, taken: _Taken) -> None:
        if taken.kind == "x":
            log.error(
                "dropped an item of %s bytes from %s: not a kombu message",
                taken.item.decode(),
                taken.key,
            )
            return
        try:
            payload = loads(taken.item)  # type: ignore[no-untyped-call]
        except ValueError:
            # cjson read it, Python's json refuses it: a message nobody can decode. It must
            # not stay in the unacked records, where kombu's restore would fail on it.
            if taken.kind == "a":
                self.qos._remove_from_indices(taken.tag).execute()
            log.error(
                "dropped an undecodable message of %d bytes from %s", len(taken.item), taken.key
            )
            return
        queue = taken.key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        if taken.kind == "n":
            self.connection._deliver(payload, queue)
            return
        self.qos.recorded.add(taken.tag)
        try:
            self.connection._deliver(payload, queue)
        finally:
            self.qos.recorded.discard(taken.tag)

    def _give_back(self, taken: Sequence[_Taken]) -> None:
        """Queue taken messages again at the tail, in their order (the next to be taken)."""
        for item in reversed(taken):
            try:
                if item.kind == "a":
                    self.qos.restore_by_tag(item.tag, leftmost=False)
                elif item.kind == "n":
                    with self.conn_or_acquire() as client:  # it adds the key prefix
                        client.rpush(item.key, item.item)
            except Exception as exc:  # an 'a' comes back after the visibility timeout instead
                log.warning("a taken message stays where it is (%s)", type(exc).__name__)


class Transport(redis_transport.Transport):
    """kombu's Redis transport with :class:`Channel`: ``broker_transport = Transport``."""

    Channel = Channel
