"""The hand-built messages of docs/contract/examples/, read by the code that reads real ones.

Celery builds the reference message; kombu's Redis envelope parser, the worker's take script's
properties rule, py-amqp's table decoder and Celery's worker ``Request`` read ours. No service.
"""

from __future__ import annotations

import ast
import json
import sys
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pika
import pytest
from amqp import serialization  # type: ignore[import-untyped]
from celery import Celery
from celery.worker.request import Request
from kombu.connection import Connection
from kombu.serialization import dumps
from kombu.transport.virtual import Message

from tenantkeys.jobs import published
from tests.docs.test_contract import errors_of, json_instance
from tests.producers.examples import EXAMPLES, FORBIDDEN, example

pytestmark = pytest.mark.unit

KWARGS = {"tenant_id": "acme", "payload": "aGVsbG8="}
#: A compact sign_batch: raw bytes, some that are not UTF-8 (msgpack carries them as bin).
PAYLOADS = [b"hello", b"\x00\x01\xff binary"]
COMPACT: dict[str, Any] = {"tenant_id": "acme", "payloads": PAYLOADS}
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Modules the Python examples may import: the standard library, their clients, each other.
ALLOWED = {"redis", "pika", "msgpack", "celery_message"} | set(sys.stdlib_module_names)


def _app() -> Celery:
    app = Celery("producers-test", set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json", "msgpack"])

    @app.task(name="tenantkeys.sign")  # type: ignore[untyped-decorator]
    def sign(**_: Any) -> None:
        """A stand-in: the worker's Request only needs the task to exist."""

    @app.task(name="tenantkeys.sign_batch")  # type: ignore[untyped-decorator]
    def sign_batch(**_: Any) -> None:
        """A stand-in, as above."""

    return app


def test_examples_import_only_the_standard_library_and_their_clients() -> None:
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert {p.name for p in scripts} >= {"celery_message.py", "python_redis.py", "python_amqp.py"}
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                root = name.split(".")[0]
                assert root not in FORBIDDEN, f"{path.name} imports {name}"
                assert root in ALLOWED, f"{path.name} imports {name}"


def test_the_message_is_the_one_celery_builds() -> None:
    wire = example("celery_message")
    ours = wire.task_message("tenantkeys.sign", dict(KWARGS), job_id="job-1")
    theirs = _app().amqp.as_task_v2(
        "job-1", "tenantkeys.sign", args=(), kwargs=dict(KWARGS), argsrepr="()"
    )
    # Every header Celery sends, with Celery's value (origin and repr are the sender's own).
    for name, value in theirs.headers.items():
        assert name in ours.headers, name
        if name not in ("origin", "kwargsrepr"):
            assert ours.headers[name] == value, name
    assert json.loads(ours.body) == json.loads(json.dumps(theirs.body))
    assert ours.properties["correlation_id"] == theirs.properties["correlation_id"] == "job-1"
    assert ours.queue == "tenantkeys.sign"
    # What Flower shows: a hash and a size, never the payload.
    assert "aGVsbG8=" not in ours.headers["kwargsrepr"]
    assert json.loads(ours.headers["kwargsrepr"])["payload_size"] == 5


def test_the_compact_message_is_the_one_celery_and_kombu_build() -> None:
    """msgpack body, bin payloads, content type and encoding: kombu's ``msgpack`` serializer
    (what ``SigningClient.submit_batch`` sends) gives the same bytes for Celery's body."""
    wire = example("celery_message")
    kwargs = wire.compact_batch_job("acme", COMPACT["payloads"])
    ours = wire.task_message("tenantkeys.sign_batch", kwargs, job_id="job-6", binary=True)
    theirs = _app().amqp.as_task_v2(
        "job-6", "tenantkeys.sign_batch", args=(), kwargs=dict(COMPACT), argsrepr="()"
    )
    content_type, content_encoding, body = dumps(theirs.body, serializer="msgpack")  # type: ignore[no-untyped-call]
    assert (ours.content_type, ours.content_encoding) == (content_type, content_encoding)
    assert (content_type, content_encoding) == (
        published.BINARY_CONTENT_TYPE,
        published.BINARY_CONTENT_ENCODING,
    )
    assert ours.body == body
    for payload in PAYLOADS:  # each a bin (0xc4, its length, its bytes)
        assert bytes([0xC4, len(payload)]) + payload in ours.body
    # What Flower shows: counts and sizes, as the workers' own summary, never the payloads.
    assert json.loads(ours.headers["kwargsrepr"]) == {
        "payload_bytes": 15,
        "payload_count": 2,
        "tenant_id": "acme",
    }
    assert errors_of("headers.json", ours.headers) == []


def _redis_item(job_id: str = "job-2", *, compact: bool = False) -> tuple[Any, str]:
    wire, redis_example = example("celery_message"), example("python_redis")
    if compact:
        kwargs = wire.compact_batch_job("acme", COMPACT["payloads"])
        message = wire.task_message("tenantkeys.sign_batch", kwargs, job_id=job_id, binary=True)
    else:
        message = wire.task_message("tenantkeys.sign", dict(KWARGS), job_id=job_id)
    return message, redis_example.redis_envelope(message)


def test_kombu_and_the_worker_read_the_redis_envelope() -> None:
    message, item = _redis_item()
    with Connection("memory://") as connection:  # type: ignore[no-untyped-call]
        # kombu's own reading of a Redis list item (body base64 inside the JSON envelope)
        received = Message(json.loads(item), channel=connection.default_channel)  # type: ignore[no-untyped-call]
        decoded = received.decode()  # type: ignore[no-untyped-call]
        assert decoded == json.loads(message.body) == [[], KWARGS, EMBED]
        assert received.content_type == "application/json"
        assert received.delivery_info["routing_key"] == "tenantkeys.sign"
        assert received.delivery_tag
        request = Request(received, app=_app(), decoded=False)
    assert (request.id, request.task_name, request.kwargs) == ("job-2", "tenantkeys.sign", KWARGS)
    assert request.args == [] and request.eta is None and request.expires is None


def test_kombu_and_the_worker_read_the_compact_redis_envelope() -> None:
    _, item = _redis_item("job-7", compact=True)
    envelope = json.loads(item)
    assert (envelope["content-type"], envelope["content-encoding"]) == (
        "application/x-msgpack",
        "binary",
    )
    assert envelope["properties"]["body_encoding"] == "base64"
    with Connection("memory://") as connection:  # type: ignore[no-untyped-call]
        received = Message(  # type: ignore[no-untyped-call]
            envelope,
            channel=connection.default_channel,
            accept={published.BINARY_CONTENT_TYPE},  # as the workers' accept_content
        )
        decoded = received.decode()  # type: ignore[no-untyped-call]
        assert decoded == [[], COMPACT, EMBED]  # the payloads come back as raw bytes
        request = Request(received, app=_app(), decoded=False)
    assert (request.id, request.task_name, request.kwargs) == (
        "job-7",
        "tenantkeys.sign_batch",
        COMPACT,
    )


def test_the_messages_are_the_published_ones() -> None:
    """What the examples send validates against docs/contract/schemas."""
    wire = example("celery_message")
    message, item = _redis_item()
    assert errors_of("redis-envelope.json", json.loads(item)) == []
    assert errors_of("tenantkeys.sign.body.json", json.loads(message.body)) == []
    batch = wire.task_message("tenantkeys.sign_batch", {"items": [dict(KWARGS)] * 2})
    assert errors_of("headers.json", batch.headers) == []
    assert errors_of("tenantkeys.sign_batch.body.json", json.loads(batch.body)) == []
    compact, item = _redis_item(compact=True)
    assert errors_of("redis-envelope.json", json.loads(item)) == []
    body = msgpack.unpackb(compact.body, raw=False)
    assert body[1]["payloads"] == COMPACT["payloads"]  # bin, not str
    compact_body = published.body_file(published.COMPACT_BATCH)
    assert errors_of(compact_body, json_instance(body)) == []
    # The JSON twin (what retries and dead letters carry) fits the same schema.
    twin = {**COMPACT, "payloads": [wire.encode_payload(p) for p in COMPACT["payloads"]]}
    json_twin = wire.task_message("tenantkeys.sign_batch", twin)
    assert errors_of(compact_body, json.loads(json_twin.body)) == []
    # And the schemas can fail: an envelope whose encoding is not its content type's, a
    # compact job without payloads, without its tenant, or naming items too.
    assert errors_of("redis-envelope.json", {**json.loads(item), "content-encoding": "utf-8"})
    assert errors_of(compact_body, [[], {"tenant_id": "acme", "payloads": []}, EMBED])
    assert errors_of(compact_body, [[], {"payloads": ["aGVsbG8="]}, EMBED])
    assert errors_of(compact_body, [[], {**twin, "items": []}, EMBED])


def test_the_worker_take_script_finds_the_properties_in_the_tail() -> None:
    # workers/fastpath/take.lua decodes what follows the last '"properties":' (kombu writes
    # them last) and needs a string delivery_tag there, or it drops the message.
    _, item = _redis_item()
    tail = json.loads(item[item.rindex('"properties":') + len('"properties":') : -1])
    assert isinstance(tail["delivery_tag"], str)
    assert tail["delivery_info"] == {"exchange": "", "routing_key": "tenantkeys.sign"}
    assert len({json.loads(_redis_item()[1])["properties"]["delivery_tag"] for _ in range(3)}) == 3


def test_kombus_amqp_client_reads_the_headers_pika_sends() -> None:
    wire, amqp_example = example("celery_message"), example("python_amqp")
    message = wire.task_message("tenantkeys.sign", dict(KWARGS), job_id="job-3")
    properties: pika.BasicProperties = amqp_example.properties(message)
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, properties.headers)
    [headers], _ = serialization.loads("F", b"".join(pieces), 0)
    assert headers == {**message.headers, "enqueued_at": properties.headers["enqueued_at"]}
    assert errors_of("headers.json", headers) == []
    assert float(headers["enqueued_at"]) == pytest.approx(message.headers["enqueued_at"])
    assert (properties.content_type, properties.content_encoding) == ("application/json", "utf-8")
    assert (properties.correlation_id, properties.delivery_mode) == ("job-3", 2)


def test_a_result_counts_once_its_state_is_final() -> None:
    wire = example("celery_message")
    for state in ("PENDING", "STARTED", "RETRY"):
        assert wire.parse_result(json.dumps({"status": state, "result": None})) is None
    assert wire.parse_result(None) is None
    done = {"status": "SUCCESS", "result": 1, "task_id": "job-4"}
    stored = [None, json.dumps({"status": "RETRY"}), json.dumps(done)]
    keys: list[str] = []

    def get(key: str) -> str | None:
        keys.append(key)
        return stored.pop(0)

    assert wire.wait_result(get, "job-4", timeout=30) == done
    assert keys == ["celery-task-meta-job-4"] * 3
    with pytest.raises(TimeoutError):
        wire.wait_result(lambda key: None, "job-5", timeout=0)


def test_a_compact_result_pairs_each_payload_with_its_outcome() -> None:
    wire = example("celery_message")
    detail = {"code": "TK-PAYLOAD-TOO-LARGE", "retryable": False}
    result = {"jws": ["h..s0", None, "h..s2"], "errors": [{"index": 1, "error": detail}]}
    assert wire.outcomes(result) == [
        {"ok": True, "jws": "h..s0"},
        {"ok": False, "error": detail},
        {"ok": True, "jws": "h..s2"},
    ]
    with pytest.raises(KeyError):  # a null without its error is no compact result
        wire.outcomes({"jws": [None], "errors": []})
