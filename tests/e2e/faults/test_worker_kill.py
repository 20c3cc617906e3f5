"""Workers SIGKILLed in the middle of signing batches, three times in a row."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import port_open, service_missing
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import cleanup_prefix, fault_deployment
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, results, send_sign_jobs
from tests.e2e.harness import Deployment, rabbitmq_vhost

pytestmark = pytest.mark.e2e

KILLS = 3
JOBS = 900
#: The sender spreads the jobs over about this many seconds; a kill every KILL_EVERY_SECONDS.
SEND_SECONDS, KILL_EVERY_SECONDS = 9.0, 2.0
TENANTS = ["k1", "k2", "k3", "k4"]


def _send_steadily(deployment: Deployment, sent: list[Job]) -> None:
    with deployment.client() as client:
        for i in range(JOBS // 10):
            sent += send_sign_jobs(client, TENANTS, 10, f"kill-{i}")
            time.sleep(SEND_SECONDS / (JOBS // 10))


@pytest.fixture(params=["redis", "rabbitmq"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    if request.param == "redis":
        made = fault_deployment(tmp_path)
        yield made
        made.stop()
        return
    if not port_open("127.0.0.1", 5672):
        service_missing("RabbitMQ at 127.0.0.1:5672")
    with rabbitmq_vhost() as url:
        made = fault_deployment(tmp_path, broker_url=url)
        yield made
        made.stop()
        cleanup_prefix(made.settings.redis_url, made.prefix)


def test_workers_sigkilled_during_batches_lose_nothing(
    deployment: Deployment, record: FaultRecord, secret_scan: SecretScan
) -> None:
    record.fault = f"worker SIGKILL x{KILLS} during batches"
    record.broker = (
        "redis" if deployment.settings.effective_broker_url.startswith("redis") else "rabbitmq"
    )
    settings = deployment.settings
    with ResultTap(settings.effective_result_backend, deployment.prefix) as tap:
        workers = [deployment.worker("w0"), deployment.worker("w1")]
        with EventCapture(deployment) as events, deployment.client() as client:
            for tenant in TENANTS:
                client.create_keys(tenant, ["signing"], timeout=60)
            sent: list[Job] = []
            # One thread sends jobs at a steady pace while this one kills workers: every kill
            # lands while jobs are queued, prefetched and inside signing batches.
            sender = threading.Thread(target=_send_steadily, args=(deployment, sent))
            fault_started = time.monotonic()
            sender.start()
            for kill in range(KILLS):
                time.sleep(KILL_EVERY_SECONDS)
                ids = [job.job_id for job in list(sent)]
                pending = len(ids) - len(results(deployment, ids))
                record.notes.append(
                    f"kill {kill + 1}: {pending} of {len(ids)} jobs sent unfinished"
                )
                victim = workers.pop(0)
                deployment.kill(victim)  # SIGKILL to the whole group: parent and pool
                workers.append(deployment.worker(f"w{kill + 2}"))
            sender.join(60)
            record.fault_seconds = time.monotonic() - fault_started
            recovery_started = time.monotonic()
            # Redis re-delivers a dead worker's unacked jobs after the visibility timeout.
            found = settle(
                deployment, sent, record, timeout=settings.broker_visibility_timeout_seconds * 4
            )
            record.recover_seconds = time.monotonic() - recovery_started
        account(deployment, sent, found, record, tap=tap, events=events)
        scan_run(
            secret_scan,
            deployment,
            [(job.job_id, job.payload) for job in sent],
            results=tap.raw,
            events=events.events,
        )
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.signed == len(sent), record
    for worker in workers:
        assert worker.poll() is None, "a surviving worker exited"
