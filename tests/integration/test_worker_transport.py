"""The worker's Redis transport on a real Redis: no message is ever popped without being
recorded, many are taken per round trip, in kombu's own unacked format (so acks,
``restore_visible`` and stock consumers work unchanged)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import multiprocessing
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue
from kombu.transport import virtual

from tests.conftest import REDIS_HOST, REDIS_PORT, REDIS_TEST_DB, port_open, service_missing
from workers.fastpath.transport import Transport

pytestmark = pytest.mark.integration

DB = REDIS_TEST_DB
URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}"


@pytest.fixture
def prefix() -> Iterator[str]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    value = f"tktransport-{uuid.uuid4().hex[:8]}:"
    yield value
    client = _raw()
    keys = list(client.scan_iter(f"{value}*")) + list(client.scan_iter(f"_kombu.binding.*{value}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _queue(prefix: str, suffix: str = "") -> Queue:
    name = f"q{prefix.rstrip(':')}{suffix}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


def _publish(prefix: str, count: int, suffix: str = "", pad: int = 0, **options: Any) -> None:
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
                **options,
            )


def _consumer(prefix: str, fetch_batch: int = 16, **options: Any) -> Connection:
    return Connection(
        URL,
        transport=Transport,
        transport_options={"global_keyprefix": prefix, "fetch_batch": fetch_batch, **options},
    )


def _raw() -> redis.Redis:
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


def _restore_all(prefix: str) -> None:
    """kombu's own restore, with a visibility timeout of 0: everything unacked is overdue."""
    raw = _raw()
    raw.delete(f"{prefix}unacked_mutex")  # as if expired: a killed consumer may have held it
    raw.close()
    with _consumer(prefix, visibility_timeout=0) as conn:
        conn.default_channel.qos.restore_visible(num=100_000, interval=1)


def _drain(conn: Connection, timeout: float) -> None:
    """One ``drain_events``; nothing to deliver within ``timeout`` is fine."""
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=timeout)


def _body(item: bytes) -> bytes:
    message = json.loads(item)
    assert message["properties"]["body_encoding"] == "base64"
    return base64.b64decode(message["body"])


def test_one_round_trip_takes_a_batch_and_records_each_as_unacked(prefix: str) -> None:
    _publish(prefix, 50)
    raw = _raw()
    queue_key = f"{prefix}{_queue(prefix).name}"
    with _consumer(prefix) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        # One script call: fetch_batch messages from one read event, in order.
        assert [m.payload["n"] for m in got] == list(range(16))
        assert raw.llen(queue_key) == 34
        unacked = raw.hgetall(f"{prefix}unacked")
        assert len(unacked) == 16 and raw.zcard(f"{prefix}unacked_index") == 16
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
    with _consumer(prefix) as conn:
        got = _drain_once(conn, prefix, prefetch=5)
        assert len(got) == 5
        raw = _raw()
        assert raw.llen(f"{prefix}{_queue(prefix).name}") == 15
        raw.close()
        for message in got:
            message.ack()


def test_fetch_batch_zero_is_kombus_one_message_per_round_trip(prefix: str) -> None:
    _publish(prefix, 5)
    with _consumer(prefix, fetch_batch=0) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        assert len(got) == 1
        got[0].ack()


def test_an_item_that_is_no_kombu_message_is_dropped_not_left_in_the_way(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    _publish(prefix, 3)
    raw = _raw()
    queue_key = f"{prefix}{_queue(prefix).name}"
    raw.lpush(queue_key, b"not a kombu message")  # newer than the three messages
    _publish(prefix, 1)
    # [m0', garbage, m2, m1, m0] from head to tail: the garbage is popped without a record
    # (kombu's BRPOP path drops it too), so it cannot stall the queue behind it.
    with caplog.at_level(logging.ERROR, "workers.fastpath.transport"), _consumer(prefix) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        assert [m.payload["n"] for m in got] == [0, 1, 2, 0]
        assert raw.llen(queue_key) == 0 and raw.hlen(f"{prefix}unacked") == 4
        for message in got:
            message.ack()
    assert "dropped an item of 19 bytes" in caplog.text
    assert "not a kombu message" in caplog.text
    raw.close()


def test_queues_are_taken_in_turn(prefix: str) -> None:
    _publish(prefix, 30, "-a")
    _publish(prefix, 30, "-b")
    queues = [_queue(prefix, "-a"), _queue(prefix, "-b")]
    with _consumer(prefix) as conn:
        got = _drain_once(conn, prefix, prefetch=100, queues=queues)
        names = [m.delivery_info["routing_key"] for m in got]
        assert len(names) == 16
        # Not 16 from the first queue: one each, in turn.
        assert abs(names.count(queues[0].name) - names.count(queues[1].name)) <= 1
        for message in got:
            message.ack()


def test_higher_priority_levels_are_taken_first(prefix: str) -> None:
    _publish(prefix, 3, priority=9)  # kombu's Redis transport: 0 is taken first, 9 last
    _publish(prefix, 3, priority=0)
    with _consumer(prefix) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        assert [m.properties["priority"] for m in got] == [0, 0, 0, 9, 9, 9]
        for message in got:
            message.ack()


def test_no_ack_consumers_take_one_message_per_round_and_record_none(prefix: str) -> None:
    _publish(prefix, 10)
    raw = _raw()
    with _consumer(prefix) as conn:
        got = _drain_once(conn, prefix, prefetch=100, no_ack=True)
        # kombu records nothing for no_ack consumers (nobody acks them); neither do we.
        assert len(got) == 1
        assert raw.hlen(f"{prefix}unacked") == 0
        assert raw.llen(f"{prefix}{_queue(prefix).name}") == 9
    raw.close()


def test_large_messages_stop_the_batch_at_its_byte_budget(prefix: str) -> None:
    _publish(prefix, 2, pad=1_200_000)
    _publish(prefix, 4, pad=200_000)
    got: list[int] = []
    with _consumer(prefix) as conn:
        consumer = conn.Consumer(
            [_queue(prefix)], callbacks=[lambda body, message: got.append(len(body["pad"]))]
        )
        consumer.qos(prefetch_count=100)
        consumer.consume()
        rounds = []
        for _ in range(3):  # one round trip each
            before = len(got)
            conn.drain_events(timeout=5)
            rounds.append(got[before:])
        raw = _raw()
        assert raw.llen(f"{prefix}{_queue(prefix).name}") == 1
        raw.close()
    # Above the 1 MiB budget a message is taken alone (the first of a round is taken whatever
    # its size); 270 KB messages (200 KB of padding, base64) three to a round.
    assert rounds == [[1_200_000], [1_200_000], [200_000] * 3]


def test_a_message_only_lua_can_parse_is_dropped_from_the_records(prefix: str) -> None:
    _publish(prefix, 3)
    raw = _raw()
    queue_key = f"{prefix}{_queue(prefix).name}"
    # cjson reads hex numbers, Python's json does not: the script takes it, Python cannot.
    poison = b'{"properties": {"delivery_tag": "poison", "delivery_info": {}}, "n": 0x10}'
    raw.lpush(queue_key, poison)
    _publish(prefix, 2)
    with _consumer(prefix) as conn:
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


def test_the_tag_is_read_whatever_the_key_order_and_headers(prefix: str) -> None:
    # The script decodes only the tail of a message when kombu's order puts its properties
    # last; another client's order, or a header that looks like properties, must not fool it.
    _publish(prefix, 2)
    raw = _raw()
    queue_key = f"{prefix}{_queue(prefix).name}"
    first, second = (json.loads(item) for item in raw.lrange(queue_key, 0, -1)[::-1])
    reordered = {"properties": first.pop("properties"), **first}
    second["headers"]["properties"] = {"delivery_tag": "not-the-tag"}
    raw.delete(queue_key)
    raw.lpush(queue_key, json.dumps(reordered), json.dumps(second))
    with _consumer(prefix) as conn:
        got = _drain_once(conn, prefix, prefetch=100)
        tags = [m.delivery_tag for m in got]
        assert tags == [
            reordered["properties"]["delivery_tag"],
            second["properties"]["delivery_tag"],
        ]
        assert sorted(raw.hkeys(f"{prefix}unacked")) == sorted(t.encode() for t in tags)
        for message in got:
            message.ack()
        assert raw.hlen(f"{prefix}unacked") == 0
    raw.close()


def test_a_failing_script_leaves_every_message_queued(prefix: str) -> None:
    _publish(prefix, 3)
    raw = _raw()
    queue_key = f"{prefix}{_queue(prefix).name}"
    raw.set(f"{prefix}unacked_index", "not a sorted set")  # every ZADD now fails
    try:
        with _consumer(prefix) as conn:
            consumer = conn.Consumer([_queue(prefix)], callbacks=[lambda body, message: None])
            consumer.consume()
            with pytest.raises(redis.ResponseError):
                conn.drain_events(timeout=5)
            # Recorded before popped: the failed write popped nothing.
            assert raw.llen(queue_key) == 3
    finally:
        raw.delete(f"{prefix}unacked_index")
        raw.close()


def test_a_killed_consumer_loses_nothing_and_restore_brings_all_back(prefix: str) -> None:
    _publish(prefix, 30)
    raw = _raw()
    queue_key = f"{prefix}{_queue(prefix).name}"
    child = _fork(_take_one_round_then_die, prefix)
    child.join(30)
    assert child.exitcode == -9
    # One round of fetch_batch = 9, all recorded as unacked; the other 21 still queued.
    assert raw.hlen(f"{prefix}unacked") == 9 and raw.llen(queue_key) == 21
    _restore_all(prefix)
    assert raw.hlen(f"{prefix}unacked") == 0
    bodies = sorted(json.loads(_body(item))["n"] for item in raw.lrange(queue_key, 0, -1))
    assert bodies == list(range(30))
    raw.close()


def _take_one_round_then_die(prefix: str) -> None:
    import os
    import signal

    with _consumer(prefix, fetch_batch=9) as conn:
        _drain_once(conn, prefix, prefetch=100)
        os.kill(os.getpid(), signal.SIGKILL)  # no ack, no restore at shutdown


def test_a_failing_callback_propagates_and_the_rest_goes_back_to_the_queue(prefix: str) -> None:
    _publish(prefix, 6)
    raw = _raw()
    queue_key = f"{prefix}{_queue(prefix).name}"
    seen: list[int] = []

    def callback(body: Any, message: Any) -> None:
        seen.append(body["n"])
        if body["n"] == 2:
            raise KeyError("from the task callback")  # kombu counts KeyError as a connection error
        message.ack()

    with _consumer(prefix) as conn:
        consumer = conn.Consumer([_queue(prefix)], callbacks=[callback])
        consumer.qos(prefetch_count=100)
        consumer.consume()
        # As with kombu's own BRPOP path, the callback's error reaches the caller...
        with pytest.raises(KeyError):
            conn.drain_events(timeout=5)
        assert seen == [0, 1, 2]
        # ... and the messages taken after it are queued again at once, in their order.
        assert raw.llen(queue_key) == 3
        assert raw.hlen(f"{prefix}unacked") == 1  # message 2: delivered, neither acked nor lost
        assert [json.loads(_body(item))["n"] for item in raw.lrange(queue_key, 0, -1)] == [5, 4, 3]
    raw.close()


def test_a_round_read_while_the_channel_closes_is_queued_again(prefix: str) -> None:
    _publish(prefix, 20)
    raw = _raw()
    got: list[int] = []
    conn = _consumer(prefix)
    try:
        consumer = conn.Consumer([_queue(prefix)], callbacks=[lambda b, m: got.append(b["n"])])
        consumer.qos(prefetch_count=100)
        consumer.consume()
        channel = consumer.channel
        conn.transport.cycle._register_BRPOP(channel)  # a take in flight, as between hub ticks
        deadline = time.monotonic() + 10
        while raw.hlen(f"{prefix}unacked") < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert raw.hlen(f"{prefix}unacked") == 16  # the script ran: 16 recorded
        channel.close()  # reads that reply, delivers nothing, queues the 16 again
        assert got == []
        assert raw.llen(f"{prefix}{_queue(prefix).name}") == 20
        assert raw.hlen(f"{prefix}unacked") == 0
    finally:
        conn.release()
        raw.close()


def test_an_idle_consumer_wakes_for_its_watched_queue_and_the_others(prefix: str) -> None:
    queues = [_queue(prefix, "-a"), _queue(prefix, "-b")]
    _publish(prefix, 1, "-a")
    got: list[str] = []
    with _consumer(prefix) as conn:
        consumer = conn.Consumer(
            queues, callbacks=[lambda b, m: (got.append(m.delivery_info["routing_key"]), m.ack())]
        )
        consumer.qos(prefetch_count=100)
        consumer.consume()
        conn.drain_events(timeout=5)
        # Now idle, watching "-a" (its busiest key) with BLMOVE key key: a message there
        # wakes it, and one on "-b" is found by the scan after the wait.
        for suffix in ("-a", "-b", "-a"):
            publisher = threading.Timer(0.3, _publish, (prefix, 1, suffix))
            publisher.start()
            conn.drain_events(timeout=5)
            publisher.join()
    assert got == [queues[0].name, queues[0].name, queues[1].name, queues[0].name]


def test_stock_and_fast_path_consumers_share_queues_and_records(prefix: str) -> None:
    _publish(prefix, 40)
    raw = _raw()
    seen: list[int] = []
    with _consumer(prefix, fetch_batch=0) as stock, _consumer(prefix) as fast:
        consumers = []
        for conn in (stock, fast):
            consumer = conn.Consumer(
                [_queue(prefix)], callbacks=[lambda b, m: (seen.append(b["n"]), m.ack())]
            )
            consumer.qos(prefetch_count=100)
            consumer.consume()
            consumers.append(consumer)
        while len(seen) < 40:
            for conn in (stock, fast):
                _drain(conn, 0.2)
    assert sorted(seen) == list(range(40))
    assert raw.hlen(f"{prefix}unacked") == 0 and raw.llen(f"{prefix}{_queue(prefix).name}") == 0
    raw.close()


def test_without_a_key_prefix_the_keys_are_kombus_own(prefix: str) -> None:
    # Unique queue and unacked key names stand in for the prefix, on the shared database.
    name = f"q{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
    options = {"unacked_key": f"{name}.unacked", "unacked_index_key": f"{name}.index"}
    raw = _raw()
    try:
        with Connection(URL) as conn:
            for i in range(3):
                Producer(conn).publish(
                    {"n": i},
                    routing_key=name,
                    exchange=queue.exchange,
                    declare=[queue],
                    serializer="json",
                )
        with Connection(URL, transport=Transport, transport_options=options) as conn:
            got = _drain_once(conn, prefix, prefetch=100, queues=[queue])
            assert [m.payload["n"] for m in got] == [0, 1, 2]
            assert raw.llen(name) == 0 and raw.hlen(f"{name}.unacked") == 3
            assert raw.zcard(f"{name}.index") == 3
            for message in got:
                message.ack()
            assert raw.hlen(f"{name}.unacked") == 0
    finally:
        raw.delete(
            name,
            f"{name}.unacked",
            f"{name}.index",
            f"_kombu.binding.{name}",
            f"_kombu.binding_permanent.{name}",
        )
        raw.close()


# -- every instant: a Redis MONITOR trace replayed command by command ----------------------


@dataclass
class _Replay:
    """The queues and unacked records of ``prefix`` rebuilt from a MONITOR trace.

    Each command (a script with the commands it ran, a MULTI ... EXEC block) is applied as one
    step, as Redis runs it; after each step, every message ever published must be queued,
    recorded as unacked or already acked (its record deleted without being queued again).
    """

    prefix: bytes
    queues: dict[bytes, list[str]] = field(default_factory=dict)
    unacked: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    published: set[str] = field(default_factory=set)
    blocked: dict[bytes, list[bytes]] = field(default_factory=dict)  # client -> BRPOP keys
    waits: int = 0  # BLMOVE waits of an idle consumer
    violations: list[str] = field(default_factory=list)

    def step(self, client: bytes, commands: list[list[bytes]]) -> None:
        for command in commands:
            self._apply(client, command)
        for waiting, keys in list(self.blocked.items()):  # a BRPOP served once its key fills
            if self._brpop(keys) is not None:
                del self.blocked[waiting]
        queued = {tag for tags in self.queues.values() for tag in tags}
        for tag in sorted(self.published - queued - self.unacked - self.acked):
            self.violations.append(f"{tag} neither queued nor unacked after {commands[0][:2]!r}")

    def _apply(self, client: bytes, command: list[bytes]) -> None:
        name, args = command[0].upper(), command[1:]
        ours = [arg for arg in args if arg.startswith(self.prefix)]
        if not ours:
            return
        if name in {b"LPUSH", b"RPUSH"}:
            tags = [self._tag(value) for value in args[1:]]
            queue = self.queues.setdefault(args[0], [])
            for tag in tags:
                queue.insert(0, tag) if name == b"LPUSH" else queue.append(tag)
                self.acked.discard(tag)
        elif name == b"LTRIM":
            queue = self.queues.get(args[0], [])
            start, stop = int(args[1]), int(args[2])
            kept = queue[start : (stop + 1) or None] if stop != -1 else queue[start:]
            self.queues[args[0]] = kept
        elif name == b"RPOP":
            queue = self.queues.get(args[0], [])
            if queue:
                queue.pop()
        elif name in {b"LMOVE", b"BLMOVE"}:
            self.waits += name == b"BLMOVE"
            source, target = self.queues.get(args[0], []), self.queues.setdefault(args[1], [])
            if source:
                tag = source.pop() if args[2].upper() == b"RIGHT" else source.pop(0)
                target.append(tag) if args[3].upper() == b"RIGHT" else target.insert(0, tag)
        elif name == b"BRPOP":
            self.blocked.pop(client, None)  # a BRPOP still blocked before has timed out
            if self._brpop(args[:-1]) is None:
                self.blocked[client] = args[:-1]
        elif name == b"HSET" and args[0].endswith(b"unacked"):
            self.unacked.add(args[1].decode())
        elif name == b"HDEL" and args[0].endswith(b"unacked"):
            for tag in args[1:]:
                if tag.decode() in self.unacked:
                    self.unacked.discard(tag.decode())
                    self.acked.add(tag.decode())

    def _brpop(self, keys: list[bytes]) -> str | None:
        for key in keys:
            if self.queues.get(key):
                return self.queues[key].pop()
        return None

    def _tag(self, value: bytes) -> str:
        tag = str(json.loads(value)["properties"]["delivery_tag"])
        self.published.add(tag)
        return tag


_MONITOR_LINE = re.compile(rb"^\S+ \[(\d+) ([^\]]*)\] (.*)$", re.DOTALL)
_MONITOR_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unrepr(text: bytes) -> bytes:
    """Undo Redis's quoting of one MONITOR argument (sdscatrepr)."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i : i + 1] == b"\\":
            escaped = text[i + 1 : i + 2]
            if escaped == b"x":
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            out += _ESCAPES.get(escaped, escaped)
            i += 2
            continue
        out += text[i : i + 1]
        i += 1
    return bytes(out)


class _Monitor:
    """Records every command Redis runs on our database, in the order it runs them."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.end = f"tkmonitor-end-{uuid.uuid4().hex}".encode()
        self._connection = _raw().connection_pool.get_connection()
        self._connection.send_command("MONITOR")
        if self._connection.read_response() not in (b"OK", "OK"):
            service_missing("Redis MONITOR")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            line = self._connection.read_response()
            if self.end in line:
                return
            if line.split(b" ", 2)[1] == f"[{DB}".encode():
                self.lines.append(line)

    def stop(self) -> list[bytes]:
        client = _raw()
        client.echo(self.end)
        client.close()
        self._thread.join(30)
        self._connection.disconnect()
        return self.lines


def _replay(prefix: str, lines: list[bytes]) -> _Replay:
    replay = _Replay(prefix.encode())
    transactions: dict[bytes, list[list[bytes]]] = {}
    group: tuple[bytes, list[list[bytes]]] | None = None
    for line in lines:
        match = _MONITOR_LINE.match(line)
        assert match is not None, line[:200]
        client = match.group(2)
        command = [_unrepr(arg) for arg in _MONITOR_ARG.findall(match.group(3))]
        if client == b"lua":  # run by the script of the step before, inside it
            assert group is not None
            group[1].append(command)
            continue
        if group is not None:
            replay.step(*group)
            group = None
        name = command[0].upper()
        if name == b"MULTI":
            transactions[client] = []
        elif name == b"EXEC":
            replay.step(client, transactions.pop(client, []) or [[b"EXEC"]])
        elif client in transactions:
            transactions[client].append(command)
        else:
            group = (client, [command])
    if group is not None:
        replay.step(*group)
    return replay


def _trickle_and_drain(prefix: str, fetch_batch: int) -> list[bytes]:
    """Bursts of messages with pauses (the consumer takes, waits idle, wakes), all acked."""
    bursts = [1, 5, 1, 1, 20, 3, 1, 40, 1]
    total = sum(bursts)
    monitor = _Monitor()
    seen: list[int] = []

    def publish() -> None:
        for size in bursts:
            time.sleep(0.15)  # long enough for the consumer to go idle and wait
            _publish(prefix, size)

    publisher = threading.Thread(target=publish)
    try:
        with _consumer(prefix, fetch_batch=fetch_batch) as conn:
            consumer = conn.Consumer(
                [_queue(prefix)], callbacks=[lambda b, m: (seen.append(b["n"]), m.ack())]
            )
            consumer.qos(prefetch_count=10)
            consumer.consume()
            publisher.start()
            deadline = time.monotonic() + 30
            while len(seen) < total and time.monotonic() < deadline:
                _drain(conn, 0.5)
    finally:
        if publisher.ident is not None:
            publisher.join()
        lines = monitor.stop()
    assert len(seen) == total
    return lines


def test_a_taken_message_is_queued_or_recorded_at_every_instant(prefix: str) -> None:
    replay = _replay(prefix, _trickle_and_drain(prefix, fetch_batch=16))
    assert len(replay.published) == 73
    assert replay.acked == replay.published
    # Rounds began both from a busy queue and from an idle wait woken by a new message: the
    # first message of each round was checked like every other, after every step.
    assert replay.waits > 0
    assert replay.violations == []


def test_the_instant_check_sees_kombus_window(prefix: str) -> None:
    # The control: kombu's path (BRPOP, then ZADD + HSET) leaves each message neither queued
    # nor recorded for one step, and the replay must see it, or it proves nothing above.
    replay = _replay(prefix, _trickle_and_drain(prefix, fetch_batch=0))
    assert replay.acked == replay.published
    assert len(replay.violations) >= len(replay.published)


# -- SIGKILL at random points of a stream of fire-and-forget messages ----------------------


def _fork(target: Any, *args: Any) -> Any:
    process = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _produce(prefix: str, stop_key: str) -> None:
    """Fire and forget: bursts of messages, each then noted as published; no result waited."""
    queue = _queue(prefix)
    client = _raw()
    rng = random.Random()
    n = 0
    with Connection(URL, transport_options={"global_keyprefix": prefix}) as conn:
        producer = Producer(conn)
        while not client.exists(stop_key):
            for _ in range(rng.randint(1, 10)):
                producer.publish(
                    {"n": n},
                    exchange=queue.exchange,
                    routing_key=queue.routing_key,
                    declare=[queue],
                    serializer="json",
                )
                client.sadd(f"{prefix}published", n)
                n += 1
            time.sleep(rng.uniform(0, 0.02))


def _consume(prefix: str, fetch_batch: int, deliver_delay: float) -> None:
    """A consumer that always holds a message unacked (the latest), until it is killed."""
    deliver = virtual.Transport._deliver

    def slow_deliver(self: Any, message: Any, queue: str) -> None:
        # Between the broker's reply and the consumer's bookkeeping: kombu's window, widened.
        time.sleep(deliver_delay)
        deliver(self, message, queue)

    virtual.Transport._deliver = slow_deliver  # type: ignore[method-assign]  # this child only
    client = _raw()
    held: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        client.sadd(f"{prefix}done", body["n"])
        held.append(message)
        while len(held) > 1:
            held.pop(0).ack()

    with _consumer(prefix, fetch_batch=fetch_batch) as conn:
        consumer = conn.Consumer([_queue(prefix)], callbacks=[on_message])
        consumer.qos(prefetch_count=8)
        consumer.consume()
        while True:
            _drain(conn, 1)


def _kill_repeatedly(prefix: str, kills: int, fetch_batch: int, delay: float) -> list[int]:
    """SIGKILL a consumer ``kills`` times mid-stream; each time the unacked messages it held."""
    raw = _raw()
    stop_key = f"{prefix}stop"
    producer = _fork(_produce, prefix, stop_key)
    caught: list[int] = []
    try:
        for _ in range(kills):
            before = raw.scard(f"{prefix}done")
            consumer = _fork(_consume, prefix, fetch_batch, delay)
            deadline = time.monotonic() + 20
            while raw.scard(f"{prefix}done") < before + 3 and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(random.uniform(0, 0.05))
            consumer.kill()
            consumer.join(10)
            assert consumer.exitcode == -9
            caught.append(int(raw.hlen(f"{prefix}unacked")))
            _restore_all(prefix)
    finally:
        raw.set(stop_key, 1)
        producer.join(10)
        raw.close()
    return caught


def _drain_all(prefix: str) -> None:
    """A last, healthy consumer takes and acks everything left."""
    raw = _raw()
    _restore_all(prefix)
    with _consumer(prefix) as conn:
        consumer = conn.Consumer(
            [_queue(prefix)],
            callbacks=[lambda b, m: (raw.sadd(f"{prefix}done", b["n"]), m.ack())],
        )
        consumer.qos(prefetch_count=100)
        consumer.consume()
        queue_key = f"{prefix}{_queue(prefix).name}"
        while raw.llen(queue_key):
            _drain(conn, 1)
    assert raw.hlen(f"{prefix}unacked") == 0
    raw.close()


def _lost(prefix: str) -> set[int]:
    raw = _raw()
    published = {int(n) for n in raw.smembers(f"{prefix}published")}
    done = {int(n) for n in raw.smembers(f"{prefix}done")}
    raw.close()
    assert len(published) > 100
    return published - done


def test_sigkilled_consumers_lose_no_fire_and_forget_message(prefix: str) -> None:
    caught = _kill_repeatedly(prefix, kills=20, fetch_batch=4, delay=0.005)
    # Each kill hit work in flight (taken, unacked), or it tested nothing.
    void = [i for i, held in enumerate(caught) if held == 0]
    if void:
        pytest.fail(f"kills {void} caught no message in flight: the test proved nothing")
    _drain_all(prefix)
    assert _lost(prefix) == set()


def test_the_kill_check_sees_kombus_window(prefix: str) -> None:
    # The control: on kombu's path, a kill between BRPOP and the record loses messages, and
    # the check above must see that, or its zero proves nothing.
    _kill_repeatedly(prefix, kills=8, fetch_batch=0, delay=0.005)
    _drain_all(prefix)
    assert _lost(prefix)
