"""A worker SIGKILLed in the middle of signing batches, three times in a row.

Each kill is triggered by observed work, not by a timer: a burst of jobs is published while no
worker consumes, one worker is started against that backlog, and it is killed as soon as it holds
jobs it has not finished (published, without a result, and not waiting in the queue: prefetched or
inside a batch). Publishing first matters: a worker that keeps up with the publisher can finish a
burst before anyone looks, and a kill after that catches nothing (seen in CI on RabbitMQ).
The count is a lower bound (the queue depth is read before the results), and a kill that
caught no job fails the run as void: a fault that touched nothing proves nothing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkeys import jobs
from tenantkeys.queue.broker import BrokerProbe
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import on_broker
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, burst, results
from tests.e2e.harness import Deployment, wait_for

pytestmark = pytest.mark.e2e

KILLS = 3
#: Jobs published before each kill: several times the worker's prefetch (64 x 2), so the
#: worker holds some while the rest still wait.
BURST = 600
TENANTS = ["k1", "k2", "k3", "k4"]


def _held_by_the_worker(deployment: Deployment, probe: BrokerProbe, sent: list[Job]) -> int:
    """A lower bound of the jobs the one running worker holds unfinished right now."""
    waiting = probe.queue_depths()[jobs.SIGN_QUEUE]  # read first: it only shrinks meanwhile
    done = len(results(deployment, [job.job_id for job in sent]))
    return max(0, len(sent) - done - waiting)


@pytest.fixture(params=["redis", "rabbitmq"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    yield from on_broker(request.param, tmp_path)


def test_workers_sigkilled_during_batches_lose_nothing(
    deployment: Deployment, record: FaultRecord, secret_scan: SecretScan
) -> None:
    record.fault = f"worker SIGKILL x{KILLS} during batches"
    record.broker = (
        "redis" if deployment.settings.effective_broker_url.startswith("redis") else "rabbitmq"
    )
    settings = deployment.settings
    probe = BrokerProbe.from_settings(settings)
    with ResultTap(settings.effective_result_backend) as tap:
        with EventCapture(deployment) as events, deployment.client() as client:
            setup = deployment.worker("setup")
            for tenant in TENANTS:
                client.create_keys(tenant, ["signing"], timeout=60)
            deployment.kill(setup, signal.SIGTERM)  # warm shutdown: it held no signing job
            sent: list[Job] = []
            caught: list[int] = []
            fault_started = time.monotonic()
            for kill in range(KILLS):
                sent.extend(
                    burst(client, TENANTS, BURST, f"kill-{kill}")
                )  # a backlog: no worker consumes
                worker = deployment.worker(f"w{kill}", wait_ready=False)
                # Kill as soon as the worker holds jobs it has not finished, never on a timer.
                held = wait_for(
                    lambda jobs_sent=sent: _held_by_the_worker(deployment, probe, jobs_sent),
                    60,
                    "the worker to hold unfinished jobs",
                    0.005,
                )
                deployment.kill(worker)  # SIGKILL to the whole group: parent and pool
                caught.append(held)
                record.notes.append(
                    f"kill {kill + 1}: the worker held at least {held} unfinished job(s) of "
                    f"{len(sent)} sent"
                )
            worker = deployment.worker("drain")
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
    probe.close()
    assert all(held > 0 for held in caught), f"void run: a kill caught no job ({caught})"
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.resent == 0, record  # every job came back through the broker, none re-sent
    assert record.signed == len(sent), record
    assert worker.poll() is None, "the last worker exited"
