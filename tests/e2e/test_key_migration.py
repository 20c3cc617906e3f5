"""An upgrade from the prefixed Celery keys, end to end: jobs the old version queued (and held,
in a worker killed mid-run) are signed by a worker of this version, none lost or re-sent; a
result stored by the old version is still found by ``job show``; a dry run moves nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tenantkeys import jobs
from tenantkeys.queue.migrate import PRIORITY_SEP
from tests.e2e.harness import Deployment, redis_deployment, run_cli
from tests.integration.old_keys import old_client, take_and_die

pytestmark = pytest.mark.e2e

TENANTS = ("m1", "m2", "m3")


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with redis_deployment(tmp_path) as made:
        yield made


tenantkeys = run_cli


def test_jobs_under_the_old_keys_are_drained_not_lost(deployment: Deployment) -> None:
    settings = deployment.settings
    old = deployment.prefix
    runtime = deployment.runtime()
    for tenant in TENANTS:
        runtime.service.create_keys(tenant, ["signing"])
    payloads = {f"old-{i:03d}": f"payload {i}".encode() for i in range(30)}
    sent = {job_id: (TENANTS[i % 3], data) for i, (job_id, data) in enumerate(payloads.items())}
    with old_client(settings) as client:  # the old version's producer
        client.submit_many(list(sent.values()), job_ids=list(sent))
        client.app.send_task(
            jobs.SIGN,
            kwargs={"tenant_id": "m1", "payload": jobs.encode_payload(b"priority")},
            task_id="old-priority",
            queue=jobs.SIGN_QUEUE,
            priority=6,
        )
        sent["old-priority"] = ("m1", b"priority")
        done = {"ok": True, "result": {"signed": "before the upgrade"}}  # a job's envelope
        client.app.backend.store_result("old-done", done, "SUCCESS")
    take_and_die(settings, jobs.SIGN_QUEUE, 4)  # an old worker killed holding 4 jobs
    raw = redis.Redis.from_url(deployment.redis_db.url)
    assert raw.llen(f"{old}:{jobs.SIGN_QUEUE}") == 26
    assert raw.llen(f"{old}:{jobs.SIGN_QUEUE}{PRIORITY_SEP}6") == 1
    assert raw.hlen(f"{old}:unacked") == 4

    dry = tenantkeys(deployment, "queue", "migrate-keys", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    counted = json.loads(dry.stdout)
    assert (counted["queued"][jobs.SIGN_QUEUE], counted["unacked"], counted["results"]) == (
        27,
        4,
        1,
    )
    assert raw.llen(f"{old}:{jobs.SIGN_QUEUE}") == 26 and raw.hlen(f"{old}:unacked") == 4
    assert raw.llen(jobs.SIGN_QUEUE) == 0 and not raw.exists("unacked")

    deployment.worker("w1", concurrency=2)
    assert "moved 27 queued job(s), 4 unacked record(s), 1 result(s)" in deployment.log("w1")
    assert not list(raw.scan_iter(f"{old}:{jobs.SIGN_QUEUE}*"))
    assert not raw.exists(f"{old}:unacked", f"{old}:celery-task-meta-old-done")
    with deployment.client() as client:
        # No re-sends: each job is signed from the message the old version queued. The four a
        # dead worker held come back after the visibility timeout (10 s here), as before.
        for job_id, (tenant, data) in sent.items():
            signature = client.wait(job_id, timeout=90)
            runtime.service.verify(tenant, data, signature["jws"])
    runtime.close()

    shown = tenantkeys(deployment, "job", "show", "old-done")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"] == {"signed": "before the upgrade"}
    again = tenantkeys(deployment, "queue", "migrate-keys", "--json")
    assert json.loads(again.stdout)["total"] == 0
    raw.close()
