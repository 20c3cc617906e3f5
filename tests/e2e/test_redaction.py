"""A producer that sets no redacted ``argsrepr`` / ``kwargsrepr`` leaks no payload byte.

Celery puts those two headers in the worker's log context and its task-received event, which
Flower shows. A producer written from the contract may omit them, set its own (Python
Celery's default is the ``repr`` of the arguments), or send protocol 1. Raw messages (no
Celery on the producer's side) of each kind go to a real worker: each job is signed, and its
payload marker, raw or base64, is in no worker log line and no task event, while the events
show its hash and size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tenantkeys import jobs
from tenantkeys.queue.config import celery_config
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.sending import results
from tests.e2e.harness import Deployment, wait_for
from tests.producers.examples import example

pytestmark = pytest.mark.e2e

MARKER = "redaction-marker-7f3c9a"
PAYLOAD = (MARKER + "|").encode() * 8
ENCODED = jobs.encode_payload(PAYLOAD)


class Events:
    """Every task event the workers send, captured by Celery's own event receiver."""

    def __init__(self, deployment: Deployment) -> None:
        self.app = Celery("events", set_as_current=False)
        self.app.conf.update(celery_config(deployment.settings))
        self.seen: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._capture, daemon=True)
        self._thread.start()
        assert self.ready.wait(30), "the event receiver did not start"

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
            consume_ready = receiver.on_consume_ready

            def ready(*args: Any, **kwargs: Any) -> None:
                # The receiver's queue is bound now: from here on no event is missed.
                consume_ready(*args, **kwargs)
                self.ready.set()

            receiver.on_consume_ready = ready
            self._receiver = receiver
            receiver.capture(limit=None, timeout=None, wakeup=False)

    def received(self, job_id: str) -> dict[str, Any] | None:
        return next(
            (
                e
                for e in list(self.seen)
                if e.get("type") == "task-received" and e["uuid"] == job_id
            ),
            None,
        )

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = Deployment(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def _message(task: str, kwargs: dict[str, Any], reprs: str) -> Any:
    built = example("celery_message").task_message(task, kwargs)
    if reprs == "protocol-1":  # no headers: task, id and arguments in one body
        document = {"task": task, "id": built.job_id, "args": [], "kwargs": kwargs}
        return dataclasses.replace(built, headers={}, body=json.dumps(document).encode())
    if reprs == "omitted":
        del built.headers["argsrepr"], built.headers["kwargsrepr"]
    elif reprs == "python-repr":  # what Python Celery sets by default: the arguments' repr
        built.headers["argsrepr"], built.headers["kwargsrepr"] = "()", repr(kwargs)
    return built


def test_a_producer_without_redacted_reprs_leaks_no_payload(deployment: Deployment) -> None:
    runtime = deployment.runtime()
    runtime.service.create_keys("acme")
    runtime.close()
    events = Events(deployment)
    worker = deployment.worker("w1")
    item = {"tenant_id": "acme", "payload": ENCODED}
    sent = [
        _message(jobs.SIGN, item, "omitted"),
        _message(jobs.SIGN, item, "python-repr"),
        _message(jobs.SIGN_BATCH, {"items": [item, item]}, "omitted"),
        _message(jobs.SIGN_BATCH, {"items": [item]}, "python-repr"),
        _message(jobs.SIGN, item, "protocol-1"),
        _message(jobs.SIGN_BATCH, {"items": [item]}, "protocol-1"),
    ]
    broker = redis.Redis.from_url(deployment.redis_db.url)  # the broker: Redis (the default)
    try:
        for message in sent:
            example("python_redis").publish(broker, message)
    finally:
        broker.close()
    ids = [message.job_id for message in sent]
    wait_for(lambda: len(results(deployment, ids)) == len(ids), 60, "every job's result")
    done = results(deployment, ids)
    assert all(done[job_id]["ok"] for job_id in ids), done
    wait_for(lambda: all(events.received(job_id) for job_id in ids), 60, "task-received events")
    events.stop()

    digest = hashlib.sha256(PAYLOAD).hexdigest()
    single = json.loads(events.received(ids[0])["kwargs"])  # type: ignore[index]
    assert single == {"payload_sha256": digest, "payload_size": len(PAYLOAD), "tenant_id": "acme"}
    batch = json.loads(events.received(ids[2])["kwargs"])  # type: ignore[index]
    assert batch["item_count"] == 2 and batch["items"][0]["payload_sha256"] == digest
    # The payload's start, as it travels (base64) and as bytes: in no event, no log line.
    leaks = (MARKER, ENCODED[:16])
    shown = json.dumps(events.seen)
    log = deployment.log("w1")
    for leak in leaks:
        assert leak not in shown, [e for e in events.seen if leak in json.dumps(e)][:2]
        assert leak not in log, [line for line in log.splitlines() if leak in line][:3]
    assert worker.poll() is None, "the worker died"
