"""The hand-built messages of docs/contract/examples/, read by the code that reads real ones.

Celery builds the reference message; kombu's Redis envelope parser, the worker's take script's
properties rule, py-amqp's table decoder and Celery's worker ``Request`` read ours. No service.
"""

from __future__ import annotations

import ast
import json
import sys
from typing import Any

import pika
import pytest
from amqp import serialization  # type: ignore[import-untyped]
from celery import Celery
from celery.worker.request import Request
from kombu.connection import Connection
from kombu.transport.virtual import Message

from tests.docs.test_contract import errors_of
from tests.producers.examples import EXAMPLES, FORBIDDEN, example

pytestmark = pytest.mark.unit

KWARGS = {"tenant_id": "acme", "payload": "aGVsbG8="}
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Modules the Python examples may import: the standard library, their clients, each other.
ALLOWED = {"redis", "pika", "celery_message"} | set(sys.stdlib_module_names)


def _app() -> Celery:
    app = Celery("producers-test", set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])

    @app.task(name="tenantkeys.sign")  # type: ignore[untyped-decorator]
    def sign(**_: Any) -> None:
        """A stand-in: the worker's Request only needs the task to exist."""

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


def _redis_item(job_id: str = "job-2") -> tuple[Any, str]:
    wire, redis_example = example("celery_message"), example("python_redis")
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


def test_the_messages_are_the_published_ones() -> None:
    """What the examples send validates against docs/contract/schemas."""
    wire = example("celery_message")
    message, item = _redis_item()
    assert errors_of("redis-envelope.json", json.loads(item)) == []
    assert errors_of("tenantkeys.sign.body.json", json.loads(message.body)) == []
    batch = wire.task_message("tenantkeys.sign_batch", {"items": [dict(KWARGS)] * 2})
    assert errors_of("headers.json", batch.headers) == []
    assert errors_of("tenantkeys.sign_batch.body.json", json.loads(batch.body)) == []


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
