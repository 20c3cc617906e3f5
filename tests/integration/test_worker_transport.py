"""The worker's Redis transport on a real Redis: many messages per round trip, each taken
atomically, in kombu's own unacked format (so acks and ``restore_visible`` work unchanged)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing

pytestmark = pytest.mark.integration

DB = 12
URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}"
TRANSPORT = "workers.fastpath.transport:Transport"


@pytest.fixture
def prefix() -> Iterator[str]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    value = f"tktransport-{uuid.uuid4().hex[:8]}:"
    yield value
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=DB)
    keys = list(client.scan_iter(f"{value}*")) + list(client.scan_iter(f"_kombu.binding.*{value}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _queue(prefix: str, suffix: str = "") -> Queue:
    name = f"q{prefix.rstrip(':')}{suffix}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


def _publish(prefix: str, count: int, suffix: str = "", pad: int = 0) -> None:
    """Published by kombu's stock transport, as producers do."""
    queue = _queue(prefix, suffix)
    with Connection(URL, transport_options={"global_keyprefix": prefix}) as conn:
        producer = Producer(conn)
        for i in range(count):
            producer.publish(
                {"n": i, "pad": "x" * pad},
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                serializer="json",
            )


def _consumer(prefix: str, prefetch: int, fetch_batch: int = 16, **options: Any) -> Connection:
    return Connection(
        URL,
        transport=TRANSPORT,
        transport_options={"global_keyprefix": prefix, "fetch_batch": fetch_batch, **options},
    )


def _raw(prefix: str) -> redis.Redis:
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=DB)


def _drain_once(
    conn: Connection, prefix: str, prefetch: int, queues: list[Queue] | None = None, **options: Any
) -> list[Any]:
    got: list[Any] = []
    consumer = conn.Consumer(
        queues or [_queue(prefix)], callbacks=[lambda body, message: got.append(message)], **options
    )
    consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    conn.drain_events(timeout=5)
    return got


def test_one_round_trip_takes_a_batch_and_records_each_as_unacked(prefix: str) -> None:
    _publish(prefix, 50)
    raw = _raw(prefix)
    queue_key = f"{prefix}{_queue(prefix).name}"
    with _consumer(prefix, prefetch=100) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        # One BRPOP, then the script: 1 + fetch_batch messages from one read event, in order.
        assert [m.payload["n"] for m in got] == list(range(17))
        assert raw.llen(queue_key) == 33
        unacked = raw.hgetall(f"{prefix}unacked")
        assert len(unacked) == 17 and raw.zcard(f"{prefix}unacked_index") == 17
        for message in got:
            # kombu's own format: [message, exchange, routing_key]; restore reads it back.
            stored, exchange, routing_key = json.loads(unacked[message.delivery_tag.encode()])
            assert stored["properties"]["delivery_tag"] == message.delivery_tag
            assert (exchange, routing_key) == (_queue(prefix).name, _queue(prefix).name)
        for message in got:
            message.ack()
        assert raw.hlen(f"{prefix}unacked") == 0 and raw.zcard(f"{prefix}unacked_index") == 0
    raw.close()


def test_the_prefetch_limit_bounds_the_batch(prefix: str) -> None:
    _publish(prefix, 20)
    with _consumer(prefix, prefetch=5) as conn:
        got = _drain_once(conn, prefix, prefetch=5)
        assert len(got) == 5
        raw = _raw(prefix)
        assert raw.llen(f"{prefix}{_queue(prefix).name}") == 15
        raw.close()
        for message in got:
            message.ack()


def test_fetch_batch_zero_is_kombus_one_message_per_round_trip(prefix: str) -> None:
    _publish(prefix, 5)
    with _consumer(prefix, prefetch=100, fetch_batch=0) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        assert len(got) == 1
        got[0].ack()


def test_a_foreign_item_is_left_in_the_queue(prefix: str) -> None:
    _publish(prefix, 3)
    raw = _raw(prefix)
    queue_key = f"{prefix}{_queue(prefix).name}"
    raw.lpush(queue_key, b"not a kombu message")  # newer than the three messages
    # The list is now [garbage, m2, m1, m0] from head to tail: BRPOP takes m0, the script m1
    # and m2, then meets the foreign item, puts it back where it was and stops.
    with _consumer(prefix, prefetch=100) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        assert [m.payload["n"] for m in got] == [0, 1, 2]
        assert raw.lrange(queue_key, 0, -1) == [b"not a kombu message"]
        for message in got:
            message.ack()
    raw.close()


def test_queues_are_taken_in_turn(prefix: str) -> None:
    _publish(prefix, 30, "-a")
    _publish(prefix, 30, "-b")
    queues = [_queue(prefix, "-a"), _queue(prefix, "-b")]
    with _consumer(prefix, prefetch=100) as conn:
        got = _drain_once(conn, prefix, prefetch=100, queues=queues)
        names = [m.delivery_info["routing_key"] for m in got]
        assert len(names) == 17
        # Not 16 from the first queue and 1 from the other: one each, in turn.
        assert abs(names.count(queues[0].name) - names.count(queues[1].name)) <= 1
        for message in got:
            message.ack()


def test_no_ack_consumers_are_left_to_brpop(prefix: str) -> None:
    _publish(prefix, 10)
    raw = _raw(prefix)
    with _consumer(prefix, prefetch=100) as conn:
        got = _drain_once(conn, prefix, prefetch=100, no_ack=True)
        # kombu records nothing for no_ack consumers; the script must not either.
        assert len(got) == 1
        assert raw.hlen(f"{prefix}unacked") == 0
    raw.close()


def test_large_messages_stop_the_batch_at_its_byte_budget(prefix: str) -> None:
    _publish(prefix, 4, pad=600_000)
    raw = _raw(prefix)
    with _consumer(prefix, prefetch=100) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        # BRPOP takes one; the script one more (600 KB of its 1 MiB budget), then stops.
        assert [m.payload["n"] for m in got] == [0, 1]
        assert raw.llen(f"{prefix}{_queue(prefix).name}") == 2
        for message in got:
            message.ack()
    raw.close()


def test_a_message_only_lua_can_parse_is_dropped_from_the_records(prefix: str) -> None:
    _publish(prefix, 3)
    raw = _raw(prefix)
    queue_key = f"{prefix}{_queue(prefix).name}"
    # cjson reads hex numbers, Python's json does not: the script takes it, Python cannot.
    poison = b'{"properties": {"delivery_tag": "poison", "delivery_info": {}}, "n": 0x10}'
    raw.lpush(queue_key, poison)
    _publish(prefix, 2)
    with _consumer(prefix, prefetch=100) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        assert [m.payload["n"] for m in got] == [0, 1, 2, 0, 1]
        assert b"poison" not in raw.hkeys(f"{prefix}unacked")
        assert raw.zscore(f"{prefix}unacked_index", "poison") is None
        for message in got:
            message.ack()
        # kombu's restore still works (an undecodable record would make it fail).
        conn.default_channel.qos.restore_visible(num=100)
    assert raw.llen(queue_key) == 0
    raw.close()


def test_a_failing_script_leaves_every_message_queued(prefix: str) -> None:
    _publish(prefix, 3)
    raw = _raw(prefix)
    queue_key = f"{prefix}{_queue(prefix).name}"
    raw.set(f"{prefix}unacked_index", "not a sorted set")  # every ZADD now fails
    with _consumer(prefix, prefetch=100) as conn:
        channel = conn.default_channel
        consumer = conn.Consumer([_queue(prefix)], callbacks=[lambda body, message: None])
        consumer.consume()
        with pytest.raises(redis.ResponseError):
            channel._take_more()
        # Recorded before popped: the failed write popped nothing.
        assert raw.llen(queue_key) == 3
        raw.delete(f"{prefix}unacked_index")
    raw.close()


_KILLED_CONSUMER = textwrap.dedent(
    """
    import os, signal, sys
    from kombu import Connection, Exchange, Queue
    url, prefix, name = sys.argv[1:4]
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(url, transport="workers.fastpath.transport:Transport",
                    transport_options={"global_keyprefix": prefix, "fetch_batch": 9}) as conn:
        consumer = conn.Consumer([queue], callbacks=[lambda body, message: None])
        consumer.qos(prefetch_count=100)
        consumer.consume()
        conn.drain_events(timeout=5)
        os.kill(os.getpid(), signal.SIGKILL)  # no ack, no restore at shutdown
    """
)


def test_a_killed_consumer_loses_nothing_and_restore_brings_all_back(prefix: str) -> None:
    _publish(prefix, 30)
    raw = _raw(prefix)
    queue_key = f"{prefix}{_queue(prefix).name}"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_CONSUMER, URL, prefix, _queue(prefix).name],
        cwd=os.getcwd(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    # 1 by BRPOP + 9 by the script, all recorded as unacked; the other 20 still queued.
    assert raw.hlen(f"{prefix}unacked") == 10 and raw.llen(queue_key) == 20
    # kombu's own restore (a visibility timeout of 0: everything unacked is overdue).
    with _consumer(prefix, prefetch=100, visibility_timeout=0) as conn:
        conn.default_channel.qos.restore_visible(num=100)
    assert raw.hlen(f"{prefix}unacked") == 0
    bodies = sorted(json.loads(_body(item))["n"] for item in raw.lrange(queue_key, 0, -1))
    assert bodies == list(range(30))
    raw.close()


def _body(item: bytes) -> bytes:
    import base64

    message = json.loads(item)
    assert message["properties"]["body_encoding"] == "base64"
    return base64.b64decode(message["body"])


def test_a_failing_callback_propagates_and_the_rest_goes_back_to_the_queue(prefix: str) -> None:
    _publish(prefix, 6)
    raw = _raw(prefix)
    queue_key = f"{prefix}{_queue(prefix).name}"
    seen: list[int] = []

    def callback(body: Any, message: Any) -> None:
        seen.append(body["n"])
        if body["n"] == 2:
            raise KeyError("from the task callback")  # kombu counts KeyError as a connection error
        message.ack()

    with _consumer(prefix, prefetch=100) as conn:
        consumer = conn.Consumer([_queue(prefix)], callbacks=[callback])
        consumer.qos(prefetch_count=100)
        consumer.consume()
        # As with kombu's own BRPOP path, the callback's error reaches the caller...
        with pytest.raises(KeyError):
            conn.drain_events(timeout=5)
        assert seen == [0, 1, 2]
        # ... and the messages taken after it are queued again at once, not left unacked.
        assert raw.llen(queue_key) == 3
        assert raw.hlen(f"{prefix}unacked") == 1  # message 2: delivered, neither acked nor lost
    raw.close()


def test_a_closing_channel_takes_no_new_batch(prefix: str) -> None:
    raw = _raw(prefix)
    got: list[int] = []
    conn = _consumer(prefix, prefetch=100)
    try:
        consumer = conn.Consumer([_queue(prefix)], callbacks=[lambda b, m: got.append(b["n"])])
        consumer.qos(prefetch_count=100)
        consumer.consume()
        channel = consumer.channel
        conn.transport.cycle._register_BRPOP(channel)  # a BRPOP in flight, as between hub ticks
        _publish(prefix, 20)
        time.sleep(0.2)
        channel.close()  # reads the pending BRPOP reply (one message), takes nothing more
        assert len(got) <= 1
        assert raw.llen(f"{prefix}{_queue(prefix).name}") == 20  # the one read is restored
    finally:
        conn.release()
        raw.close()
