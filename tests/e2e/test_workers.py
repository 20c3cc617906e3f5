"""Real workers on Redis and on RabbitMQ: jobs, a killed worker, Beat twice, bad messages."""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer

from tenantkeys import jobs
from tenantkeys.errors import InvalidRequest, KeyRevoked, TenantKeysError
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.kms import ProviderSet
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.service import KeyService
from tenantkeys.keys.store import KeyStore
from tenantkeys.queue.config import celery_config
from tenantkeys.signing import Signature
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.harness import Deployment, on_broker, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["redis", "rabbitmq"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    yield from on_broker(request.param, tmp_path)


@pytest.fixture
def redis_deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = Deployment(tmp_path, rotation_sweep_interval_seconds=0.5, rotation_sweep_page_size=7)
    yield made
    made.stop()


def test_jobs_and_bad_messages_through_the_queue(deployment: Deployment) -> None:
    deployment.worker("w1")
    runtime = deployment.runtime()
    with deployment.client() as client:
        created = client.create_keys("acme", timeout=30)
        assert {k["purpose"] for k in created} == {"signing", "encryption"}

        signature = client.sign("acme", b'{"b": 1, "a": 2}', canonical_json=True, timeout=30)
        assert isinstance(signature, Signature)
        runtime.service.verify("acme", b'{"a":2,"b":1}', signature.jws)

        results = client.sign_many("acme", [b"one", b"x" * (2 * 1_048_576), b"three"])
        assert isinstance(results[0], Signature) and isinstance(results[2], Signature)
        assert isinstance(results[1], InvalidRequest)
        assert results[1].code == "TK-PAYLOAD-TOO-LARGE"
        runtime.service.verify("acme", b"three", results[2].jws)

        with pytest.raises(InvalidRequest) as bad:
            client.sign("not a tenant!", b"x", timeout=30)
        assert bad.value.code == "TK-INVALID-TENANT"

        rotated = client.rotate_key("acme", "signing", expected_version=1)
        assert rotated["rotated"] and rotated["new_version"] == 2
        assert not client.rotate_key("acme", "signing", expected_version=1)["rotated"]
        after = client.sign("acme", b"after", timeout=30)
        assert after.kid != signature.kid
        runtime.service.verify("acme", b'{"a":2,"b":1}', signature.jws)  # old still verifies

        revoked = client.revoke_key("acme", after.kid)
        assert revoked["status"] == "revoked"
        with pytest.raises(KeyRevoked):
            runtime.service.verify("acme", b"after", after.jws)

        unknown = client.send("tenantkeys.no_such_task", {"tenant_id": "acme"})
        with pytest.raises(TenantKeysError, match="dead-lettered"):
            client.wait(unknown, 30)
    _publish_undecodable(deployment)
    store = deployment.deadletters()
    entries = wait_for(
        lambda: store.entries() if store.depth() >= 3 else None, 30, "three dead letters"
    )
    assert {e.task for e in entries} == {"tenantkeys.no_such_task", jobs.SIGN}
    assert all(not e.replayable for e in entries)
    with deployment.client() as client:  # the worker kept running
        client.sign("acme", b"still signing", timeout=30)
    runtime.close()


def _publish_undecodable(deployment: Deployment) -> None:
    exchange = Exchange(jobs.EXCHANGE, type="direct")
    options = deployment.settings
    transport = celery_config(options)["broker_transport_options"]
    with Connection(options.effective_broker_url, transport_options=transport) as conn:
        producer = Producer(conn, exchange=exchange)
        headers = {"task": jobs.SIGN, "id": str(uuid.uuid4()), "lang": "py"}
        producer.publish(
            b"{not json",
            routing_key=jobs.SIGN_QUEUE,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            serializer=None,
            declare=[],
        )
        producer.publish(
            b"\x80\x04K\x01.",
            routing_key=jobs.SIGN_QUEUE,
            headers={**headers, "id": str(uuid.uuid4())},
            content_type="application/x-python-serialize",
            content_encoding="binary",
            serializer=None,
            declare=[],
        )


def test_submit_many_publishes_single_jobs_together(deployment: Deployment) -> None:
    deployment.worker("w1")
    with deployment.client() as client:
        client.create_keys("acme", ["signing"], timeout=30)
        client.create_keys("umbrella", ["signing"], timeout=30)
        requests = [("acme" if i % 2 else "umbrella", b"evidence-%d" % i) for i in range(300)]
        ids = [f"job-{uuid.uuid4()}" for _ in requests]
        pending = client.submit_many(requests, job_ids=ids)
        assert [p.job_id for p in pending] == ids
        # The client polls for results: sending opened no result subscription per job.
        backend = client.app.backend
        channels = [backend.get_key_for_task(job_id) for job_id in ids[:20]]
        assert all(n == 0 for _, n in backend.client.pubsub_numsub(*channels))
        signatures = [p.result(timeout=60) for p in pending]
        # Sent again with the same ids: the same results, no duplicates signed differently.
        again = client.submit_many(requests, job_ids=ids)
        assert [p.result(timeout=60).jws for p in again] == [s.jws for s in signatures]
        with pytest.raises(InvalidRequest):
            client.submit_many(requests, job_ids=ids[:1])
        # Celery's own AsyncResult.get still works: it subscribes when it is called.
        assert client.app.AsyncResult(ids[0]).get(timeout=30)["ok"] is True
    runtime = deployment.runtime()
    for (tenant, payload), signature in zip(requests, signatures, strict=True):
        runtime.service.verify(tenant, payload, signature.jws)
    runtime.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def no_tick(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment whose batch tick (60 s, the largest allowed) never comes within a test."""
    yield from on_broker(
        request.param, tmp_path, functools.partial(Deployment, sign_batch_interval_seconds=60)
    )


def test_signing_batches_need_no_tick_and_grow_while_the_process_is_busy(
    no_tick: Deployment,
) -> None:
    """A free pool process takes each round of messages at once, and a batch coming back takes
    what waited meanwhile, as one batch: no job waits for the tick (here 60 s, past every wait
    below), and no tick makes one small batch after another behind a busy process."""
    no_tick.worker("w1", concurrency=1)
    count = 250  # not a multiple of the batch size (100): no job may wait for a full batch
    with no_tick.client() as client:
        client.create_keys("acme", ["signing"], timeout=30)
        requests = [("acme", b"evidence-%d" % i) for i in range(count)]
        pending = client.submit_many(requests)
        signatures = [p.result(timeout=30) for p in pending]
    sizes = [
        int(size)
        for size in re.findall(r"INFO.*signing batch of (\d+) jobs: ok=", no_tick.log("w1"))
    ]
    assert sum(sizes) == count, sizes
    assert max(sizes) > 1, f"every job ran in a batch of its own: {sizes}"
    runtime = no_tick.runtime()
    for (tenant, payload), signature in zip(requests[::50], signatures[::50], strict=True):
        runtime.service.verify(tenant, payload, signature.jws)
    runtime.close()


def test_a_killed_worker_loses_no_job(deployment: Deployment) -> None:
    first = deployment.worker("w1")
    tenants = ["t1", "t2", "t3", "t4"]
    with deployment.client() as client:
        for tenant in tenants:
            client.create_keys(tenant, ["signing"], timeout=30)
        payloads = [(tenants[i % 4], b"payload-%d" % i) for i in range(2000)]
        started = time.perf_counter()
        pending = [client.submit(t, p) for t, p in payloads]
        store = client.app.backend

        def done_count() -> int:
            return (
                sum(
                    1 for p in pending[::20] if store.get_task_meta(p.job_id)["status"] == "SUCCESS"
                )
                * 20
            )

        wait_for(lambda: done_count() >= 200, 60, "the first results")
        deployment.kill(first)  # SIGKILL the whole worker (parent and pool) mid-run
        deployment.worker("w2")
        try:
            signatures = [p.result(timeout=90) for p in pending]
        except TenantKeysError:
            missing = [
                p.job_id for p in pending if store.get_task_meta(p.job_id)["status"] != "SUCCESS"
            ]
            raise AssertionError(
                f"{len(missing)} jobs without a result: {missing[:5]}; {_broker_state(deployment)}"
            ) from None
        elapsed = time.perf_counter() - started
    print(
        f"\n2000 jobs with a SIGKILL in the middle: {elapsed:.1f} s "
        f"({2000 / elapsed:.0f} jobs/s, includes the redelivery wait)"
    )
    runtime = deployment.runtime()
    for (tenant, payload), signature in zip(payloads, signatures, strict=True):
        runtime.service.verify(tenant, payload, signature.jws)
    runtime.close()


def _broker_state(deployment: Deployment) -> str:
    from tenantkeys.keys.runtime import redis_client

    redis = redis_client(deployment.settings)
    queue = redis.llen(jobs.SIGN_QUEUE)
    unacked = redis.hlen("unacked")
    # kombu's restore of a dead worker's unacked jobs runs under this lock (see jobs.py).
    mutex = redis.ttl("unacked_mutex")
    return f"sign queue length {queue}, unacked {unacked}, restore mutex ttl {mutex}"


def test_two_beats_rotate_each_due_key_exactly_once(redis_deployment: Deployment) -> None:
    deployment = redis_deployment
    options = deployment.settings
    store = KeyStore.from_url(options.database_url)
    store.migrate()
    past = datetime.now(UTC) - timedelta(days=400)
    service = KeyService(
        store,
        ProviderSet.from_settings(options),
        LocalKeyCache(0, 1),
        clock=lambda: past,
    )
    tenants = [f"due{i}" for i in range(15)]
    for tenant in tenants:
        service.create_keys(tenant)  # created 400 days ago: both purposes are due
    assert len(store.due(datetime.now(UTC), limit=1000)) == 30

    deployment.worker("w1", concurrency=2)
    deployment.beat("beat1")
    deployment.beat("beat2")
    with deployment.client() as client:  # and two sweeps at the same moment, by hand
        first = client.send(jobs.ROTATION_SWEEP, {})
        second = client.send(jobs.ROTATION_SWEEP, {})
        client.wait(first, 30), client.wait(second, 30)
    wait_for(lambda: not store.due(datetime.now(UTC), limit=1), 60, "every due key rotated")
    last_key = f"{deployment.prefix}:sweep:last"
    from tenantkeys.keys.runtime import redis_client

    redis = redis_client(options)
    seen = {redis.get(last_key)}
    wait_for(lambda: seen.add(redis.get(last_key)) or len(seen) >= 4, 30, "more sweeps")
    # Let any duplicate rotate_key jobs those sweeps enqueued run before counting versions.
    wait_for(
        lambda: redis.llen(jobs.KEYS_QUEUE) == 0 and redis.hlen("unacked") == 0,
        30,
        "the keys queue to drain",
    )
    for tenant in tenants:
        for purpose in Purpose:
            versions = store.versions(tenant, purpose)
            assert [v.version for v in versions] == [1, 2], (tenant, purpose, versions)
            assert [v.status.value for v in versions] == ["retired", "active"]
    store.close()
    print("\nsweep results:", json.dumps(sorted(str(s) for s in seen if s))[:200])


def test_failed_jobs_end_in_celerys_failure_state_for_every_celery_tool(
    redis_deployment: Deployment,
) -> None:
    """A rejected job (batched sign, or a key job), a dead-lettered one and a refused message
    end in FAILURE with the error's class and ``[one line, detail]``: Celery's own API sees
    ``failed()``, the raw JSON names the code; a sign_batch keeps per-item outcomes."""
    deployment = redis_deployment
    deployment.worker("w1", concurrency=1)
    with deployment.client() as client:
        client.create_keys("acme", ["signing"], timeout=60)
        rejected_sign = client.send(jobs.SIGN, {"tenant_id": "bad tenant!", "payload": "AA=="})
        rejected_key = client.send(jobs.CREATE_KEYS, {"tenant_id": "bad tenant!"})
        unknown = client.send("tenantkeys.no_such_task", {"tenant_id": "acme"})
        mixed = client.send(
            jobs.SIGN_BATCH,
            {
                "items": [
                    {"tenant_id": "acme", "payload": jobs.encode_payload(b"a")},
                    {"tenant_id": "ghost", "payload": jobs.encode_payload(b"b")},
                ]
            },
        )
        expected = {
            rejected_sign: ("InvalidRequest", "TK-INVALID-TENANT", False),
            rejected_key: ("InvalidRequest", "TK-INVALID-TENANT", False),
            unknown: ("InvalidRequest", "TK-INVALID-ARGUMENT", True),
        }
        for job_id, (kind, code, dead_lettered) in expected.items():
            with pytest.raises(TenantKeysError) as raised:
                client.wait(job_id, 30)
            assert raised.value.code == code
            result = client.app.AsyncResult(job_id)
            assert result.state == "FAILURE" and result.failed(), job_id
            assert isinstance(result.result, InvalidRequest) and result.result.code == code
            raw = json.loads(client.app.backend.get(client.app.backend.get_key_for_task(job_id)))
            assert raw["status"] == "FAILURE" and raw["result"]["exc_type"] == kind
            one_line, detail = raw["result"]["exc_message"]
            assert one_line.startswith(f"{code}: ") and detail["code"] == code
            assert detail["doc"].endswith(f"#{code.lower()}")
            assert ("dead_letter" in detail) is dead_lettered
        batch = client.app.AsyncResult(mixed)
        items = client.wait(mixed, 30)["results"]
        assert batch.state == "SUCCESS"
        assert [item["ok"] for item in items] == [True, False]
        assert items[1]["error"]["code"] == "TK-KEY-NOT-FOUND"
