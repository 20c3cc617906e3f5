"""RabbitMQ restarted under a worker (durable queues, persistent messages): every job signed.

Found by this suite: after the reconnect, single signing jobs stalled, because celery-batches
armed its flush timer once and the consumer's restart cleared it; fewer waiting jobs than a
full batch sat unflushed. ``SignBatches.Strategy`` re-arms the timer on every consumer start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_missing
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import fault_deployment
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.outages import PrivateRabbitMQ
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import burst, results, send_sign_jobs, wait_all
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def rabbitmq(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    if not PrivateRabbitMQ.available():
        service_missing("rabbitmq-server (for a private node)")
    node = PrivateRabbitMQ(tmp_path)
    node.start()
    yield node
    node.stop()


def test_rabbitmq_restarted_with_durable_queues(
    tmp_path: Path, rabbitmq: PrivateRabbitMQ, record: FaultRecord, secret_scan: SecretScan
) -> None:
    """Jobs queued (durable queues, persistent messages) and in flight when the node stops
    are all signed after it is back; the worker reconnects on its own."""
    record.fault, record.broker = "RabbitMQ restarted", "rabbitmq"
    deployment = fault_deployment(tmp_path, broker_url=rabbitmq.url)
    try:
        with ResultTap(deployment.redis_db.url) as tap:
            tenants = ["q1", "q2", "q3"]
            runtime = deployment.runtime()
            for tenant in tenants:
                runtime.service.create_keys(tenant, ["signing"])
            runtime.close()
            # Queued before the worker starts: a worker that keeps up with a producer sending
            # one job at a time would have finished them all before the node stopped.
            with deployment.client() as client:
                sent = burst(client, tenants, 2_000, "amqp")
            ids = [job.job_id for job in sent]
            worker = deployment.worker("w1", concurrency=2)
            wait_for(lambda: len(results(deployment, ids)) >= 20, 60, "the first results")
            rabbitmq.stop()
            # Read after the stop: a job without a result now had none when the node went away.
            done_before = len(results(deployment, ids))
            outage_started = time.monotonic()
            time.sleep(2)
            rabbitmq.start()
            record.fault_seconds = time.monotonic() - outage_started
            recovery_started = time.monotonic()
            with EventCapture(deployment) as events:
                found = settle(deployment, sent, record, timeout=30)
                record.recover_seconds = time.monotonic() - recovery_started
                with deployment.client() as client:  # and new jobs go through
                    more = send_sign_jobs(client, tenants, 30, "amqp-after")
                sent += more
                found.update(wait_all(deployment, more, 60))
            record.notes.append(
                f"{len(ids) - done_before} of {len(ids)} jobs unfinished when the node stopped"
            )
            assert worker.poll() is None, "the worker exited with the broker"
            account(deployment, sent, found, record, tap=tap, events=events)
            scan_run(
                secret_scan,
                deployment,
                [(job.job_id, job.payload) for job in sent],
                results=tap.raw,
                events=events.events,
            )
    finally:
        deployment.stop()
    # The restart must have met jobs still queued or in flight, or this run proves nothing.
    assert done_before < len(ids), "void run: every job was done before the node stopped"
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.signed == len(sent), record
