"""Raw broker messages published with kombu straight into the queues of a real worker:
not JSON, no task header, unknown tasks, oversized bodies, and real task names with generated
arguments. The worker keeps running; every message ends in the dead-letter store or with an
error result under its id -- none is silently dropped. (JSON bodies of the wrong *shape* kill
the worker today: see test_pending_malformed_body.py.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Exchange, Producer

from tenantkeys import jobs
from tenantkeys.queue.config import celery_config
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.deployment import fault_deployment
from tests.e2e.faults.sending import results
from tests.e2e.harness import Deployment, wait_for
from tests.security.hostile import count_case, json_values
from tests.security.test_hostile_input import hostile_kwargs

pytestmark = pytest.mark.e2e
RAW_EXAMPLES, TASK_EXAMPLES = 60, 60


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = fault_deployment(tmp_path)
    yield made
    made.stop()


@st.composite
def raw_messages(draw: st.DrawFn) -> dict[str, Any]:
    """(body, content type, headers) of a message no producer of ours would send."""
    kind = draw(st.sampled_from(["not-json", "unknown-task", "no-task"]))
    headers: dict[str, Any] = {"id": str(uuid.uuid4()), "task": jobs.SIGN, "lang": "py"}
    content_type = "application/json"
    if kind == "not-json":
        body = draw(st.binary(min_size=1, max_size=200).filter(lambda b: not _is_json(b)))
        content_type = draw(st.sampled_from([content_type, "application/x-python-serialize"]))
    elif kind == "unknown-task":
        headers["task"] = "tenantkeys." + draw(st.text("abcdefgh_", min_size=1, max_size=12))
        body = json.dumps([[], {"tenant_id": "acme"}, {}]).encode()
    else:
        del headers["task"]
        body = json.dumps(draw(json_values)).encode()
    return {"kind": kind, "body": body, "content_type": content_type, "headers": headers}


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _publish(deployment: Deployment, messages: list[dict[str, Any]]) -> None:
    options = deployment.settings
    transport = celery_config(options)["broker_transport_options"]
    with Connection(options.effective_broker_url, transport_options=transport) as conn:
        producer = Producer(conn, exchange=Exchange(jobs.EXCHANGE, type="direct"))
        for message in messages:
            producer.publish(
                message["body"],
                routing_key=message.get("queue", jobs.SIGN_QUEUE),
                headers=message["headers"],
                content_type=message["content_type"],
                content_encoding="utf-8",
                serializer=None,
                declare=[],
            )


def test_raw_messages_never_stop_the_worker_and_none_is_dropped(
    deployment: Deployment,
) -> None:
    messages: list[dict[str, Any]] = []

    @settings(max_examples=RAW_EXAMPLES, deadline=None, database=None)
    @given(raw_messages())
    def collect(message: dict[str, Any]) -> None:
        count_case("raw broker messages (real worker)")
        messages.append(message)

    collect()

    @settings(
        max_examples=TASK_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from([jobs.SIGN, jobs.SIGN_BATCH, jobs.CREATE_KEYS]), hostile_kwargs())
    def collect_tasks(task: str, kwargs: Any) -> None:
        count_case("task arguments (real worker)")
        queue = jobs.ROUTES[task]
        body = json.dumps([[], kwargs if isinstance(kwargs, dict) else {"x": kwargs}, {}])
        headers = {"id": str(uuid.uuid4()), "task": task, "lang": "py"}
        messages.append(
            {
                "kind": "task",
                "body": body.encode(),
                "content_type": "application/json",
                "headers": headers,
                "queue": queue,
            }
        )

    collect_tasks()
    oversized = {"tenant_id": "acme", "payload": jobs.encode_payload(b"x" * (3 * 1_048_576))}
    messages.append(
        {
            "kind": "oversized-task",
            "body": json.dumps([[], oversized, {}]).encode(),
            "content_type": "application/json",
            "headers": {"id": str(uuid.uuid4()), "task": jobs.SIGN, "lang": "py"},
        }
    )
    messages.append(
        {
            "kind": "oversized-garbage",
            "body": b"\xff" * (4 * 1_048_576),
            "content_type": "application/json",
            "headers": {"id": str(uuid.uuid4()), "task": jobs.SIGN, "lang": "py"},
        }
    )

    worker = deployment.worker("w1", concurrency=2)
    with deployment.client() as client:
        client.create_keys("acme", timeout=60)
    _publish(deployment, messages)
    ids = [m["headers"]["id"] for m in messages]
    store = deployment.deadletters()

    def accounted() -> list[str]:
        done = results(deployment, ids)
        dead = {entry.job_id for entry in store.entries()}
        return [i for i in ids if i not in done and i not in dead]

    try:
        wait_for(lambda: not accounted(), 60, "every hostile message to be accounted for", 0.5)
    except AssertionError:
        missing = set(accounted())
        kinds = [(m["kind"], m["body"][:80]) for m in messages if m["headers"]["id"] in missing]
        raise AssertionError(
            f"{len(missing)} message(s) silently dropped: {kinds[:10]}\n"
            + deployment.log("w1")[-4000:]
        ) from None
    done = results(deployment, ids)
    for message in messages:
        envelope = done.get(message["headers"]["id"])
        if envelope is not None and not envelope["ok"]:
            assert str(envelope["error"]["code"]).startswith("TK-"), envelope
    for entry in store.entries():
        assert entry.code.startswith("TK-") and entry.job_id in ids
    assert worker.poll() is None, "the worker died"
    with deployment.client() as client:  # and it still signs
        client.sign("acme", b"still signing", timeout=30)
    log = deployment.log("w1")
    assert "Traceback" not in log, log[-3000:]
