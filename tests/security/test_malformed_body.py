"""A JSON message whose body is not Celery's ``[args, kwargs, embed]`` must not stop a worker.

Found by this suite: such a body made Celery's strategy raise ``ValueError`` before any task
code ran, the consumer logged "Unrecoverable error" and the worker exited; the message went
back on the queue and stopped the next worker too. ``DeadLetterConsumer`` now checks the shape
first (workers/dead_letter.py) and dead-letters anything else.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkeys import jobs
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.deployment import fault_deployment
from tests.e2e.faults.sending import results
from tests.e2e.harness import Deployment, wait_for
from tests.security.test_hostile_broker import _publish

pytestmark = pytest.mark.e2e


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = fault_deployment(tmp_path)
    yield made
    made.stop()


@pytest.mark.parametrize("task", [jobs.CREATE_KEYS, jobs.SIGN])
@pytest.mark.parametrize("body", [{"a": 1}, [1, 2, 3, 4], "text", 7], ids=str)
def test_a_body_of_the_wrong_shape_is_dead_lettered_and_the_worker_lives(
    deployment: Deployment, task: str, body: object
) -> None:
    worker = deployment.worker("w1", concurrency=1)
    job_id = str(uuid.uuid4())
    _publish(
        deployment,
        [
            {
                "body": json.dumps(body).encode(),
                "content_type": "application/json",
                "headers": {"id": job_id, "task": task, "lang": "py"},
                "queue": jobs.ROUTES[task],
            }
        ],
    )
    store = deployment.deadletters()
    wait_for(
        lambda: (
            worker.poll() is not None
            or job_id in results(deployment, [job_id])
            or any(e.job_id == job_id for e in store.entries())
        ),
        30,
        "the message to be dead-lettered (or the worker to die)",
        0.2,
    )
    assert worker.poll() is None, "the worker died: " + deployment.log("w1")[-1500:]
    assert any(e.job_id == job_id for e in store.entries())
    with deployment.client() as client:
        client.create_keys("acme", ["signing"], timeout=30)
