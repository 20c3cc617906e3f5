"""``celery inspect`` answers (and so Flower's worker page) show no payload byte.

Celery's remote control describes each job it holds with ``Request.info()``, whose default
is the job's raw arguments: base64 payloads. A real worker on Redis, its one pool process
frozen (SIGSTOP), holds ``sign_batch`` jobs as reserved (taken from the broker, not yet run)
and, with a countdown, as scheduled, while one more is active: caught running (its Redis
answers slowed by a proxy) and frozen there. ``inspect reserved``, ``scheduled``, ``active``,
``query_task`` and Flower's ``/api/workers`` (what its worker page shows) must show each job's
id and task name with its redacted arguments (hash and size), never the payload's marker, raw
or base64. Batched ``sign`` jobs are sent too: celery-batches buffers them outside Celery's
reserved set, so they show in no answer at all (a known gap), and must leak nothing either.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tenantkeys import jobs
from tenantkeys.queue.config import celery_config
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.faults.outages import SlowProxy
from tests.e2e.faults.sending import results
from tests.e2e.harness import Deployment, wait_for
from tests.e2e.test_flower import Flower

pytestmark = pytest.mark.e2e

MARKER = f"inspect-marker-{uuid.uuid4().hex[:12]}"
PAYLOAD = (MARKER + "|").encode() * 8
ENCODED = jobs.encode_payload(PAYLOAD)


@pytest.fixture
def proxy() -> Iterator[SlowProxy]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = SlowProxy(REDIS_PORT)
    made.start()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def deployment(tmp_path: Path, proxy: SlowProxy) -> Iterator[Deployment]:
    # Time limits far above the test's frozen window: the worker kills a pool process whose job
    # outlives the hard limit, and Redis redelivers unacked jobs after the visibility timeout.
    made = Deployment(
        tmp_path,
        task_soft_time_limit_seconds=120,
        task_time_limit_seconds=150,
        broker_visibility_timeout_seconds=300,
    )
    # The workers' own Redis (cache, breaker, counters) through the proxy; broker and results
    # direct, so remote control and results stay fast when the proxy is slowed.
    made.values["redis_url"] = (
        f"redis://127.0.0.1:{proxy.port}/{made.redis_db.url.rsplit('/', 1)[1]}"
    )
    try:
        yield made
    finally:
        made.stop()


def _ids(answer: Any) -> set[str]:
    """Job ids in one node's ``reserved`` / ``active`` / ``scheduled`` list."""
    return {(entry.get("request") or entry)["id"] for entry in answer or []}


def _holding(answer: Any, node: str, job_ids: list[str]) -> dict[str, Any]:
    """The answer once the node's list holds every one of ``job_ids``; until then ``{}``."""
    return answer if answer and set(job_ids) <= _ids(answer.get(node)) else {}


def _flower_view(flower: Flower, node: str, reserved: list[str]) -> dict[str, Any]:
    """Flower's view of the worker (its own inspect answers), once it shows ``reserved``."""
    # Flower fetches the task lists only for one named worker, as its worker page does.
    view: dict[str, Any] = flower.get(f"/api/workers?refresh=1&workername={node}").get(node) or {}
    return view if set(reserved) <= _ids(view.get("reserved")) else {}


def test_inspect_answers_show_job_ids_and_names_but_no_payload(
    deployment: Deployment, proxy: SlowProxy
) -> None:
    runtime = deployment.runtime()
    runtime.service.create_keys("acme")
    runtime.close()
    pytest.importorskip("flower")
    worker = deployment.worker("w1", concurrency=1)
    flower = Flower(deployment)
    wait_for(flower.answers, 60, "Flower to answer", 0.2)
    pool = [
        int(pid)
        for pid in Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    ]
    assert pool, "the worker has no pool process"
    app = Celery("inspect", set_as_current=False)
    app.conf.update(celery_config(deployment.settings))
    item = {"tenant_id": "acme", "payload": ENCODED}
    node = f"w1@{socket.gethostname()}"
    inspect = app.control.inspect(destination=[node], timeout=5, limit=1)
    # Each Redis answer held 0.6 s (under the client's 1 s timeout): the job runs for seconds,
    # long enough to see it active, then its pool process is frozen with it.
    proxy.delay = 0.6
    running = app.send_task(jobs.SIGN_BATCH, kwargs={"items": [item]}).id
    wait_for(
        lambda: running in _ids((inspect.active() or {}).get(node)),
        60,
        "the slow job in `inspect active`",
        interval=0.05,
    )
    for child in pool:
        os.kill(child, signal.SIGSTOP)
    try:
        # Python Celery's default reprs (the arguments' repr): the consumer redacts them.
        now = [app.send_task(jobs.SIGN_BATCH, kwargs={"items": [item]}).id for _ in range(3)]
        later = [
            app.send_task(jobs.SIGN_BATCH, kwargs={"items": [item]}, countdown=600).id
            for _ in range(2)
        ]
        batched = [app.send_task(jobs.SIGN, kwargs=item).id for _ in range(2)]
        reserved = wait_for(
            lambda: _holding(inspect.reserved(), node, now), 60, "the jobs in `inspect reserved`"
        )
        scheduled = wait_for(
            lambda: _holding(inspect.scheduled(), node, later),
            60,
            "the countdown jobs in `inspect scheduled`",
        )
        answers = {
            "reserved": reserved,
            "scheduled": scheduled,
            "active": inspect.active(),
            # query_task knows the jobs Celery reserved (not those waiting for a countdown).
            "query_task": inspect.query_task(running, *now, *later, *batched),
            # Flower's worker page: the same inspect answers, through its own API.
            "flower": wait_for(
                lambda: _flower_view(flower, node, now), 30, "Flower's /api/workers", 0.5
            ),
        }
    finally:
        proxy.delay = 0
        for child in pool:
            os.kill(child, signal.SIGCONT)
    for leak in (MARKER, ENCODED[:16]):
        leaking = [name for name, answer in answers.items() if leak in json.dumps(answer)]
        assert not leaking, f"{leak!r} in these answers: {leaking}"
    node_reserved = reserved[node]
    assert {r["name"] for r in node_reserved} == {jobs.SIGN_BATCH}
    shown_kwargs = json.loads(node_reserved[0]["kwargs"])
    assert shown_kwargs["items"][0]["payload_sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    node_scheduled = scheduled[node]
    assert {s["request"]["name"] for s in node_scheduled} == {jobs.SIGN_BATCH}
    assert _ids(answers["active"][node]) == {running}, "the frozen job is not active any more"
    assert answers["active"][node][0]["name"] == jobs.SIGN_BATCH
    assert _ids(answers["flower"]["active"]) == {running}
    assert set(later) <= _ids(answers["flower"]["scheduled"])
    # The batched ``sign`` jobs show in no answer (celery-batches reserves them outside
    # Celery's state): the names below are ``sign_batch`` only.
    node_query = answers["query_task"][node]
    assert set(now) | {running} <= set(node_query)
    assert node_query[running][0] == "active"
    assert {info["name"] for _state, info in node_query.values()} == {jobs.SIGN_BATCH}
    # The jobs held while the pool was frozen still run once it is not.
    held = [running, *now, *batched]
    wait_for(lambda: len(results(deployment, held)) == len(held), 60, "the held jobs' results")
    done = results(deployment, held)
    assert all(done[job_id]["ok"] for job_id in held), done
    assert worker.poll() is None, "the worker died"
