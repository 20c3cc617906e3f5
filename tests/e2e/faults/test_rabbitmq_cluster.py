"""Quorum queues on a real three-node RabbitMQ cluster: the node leading the queues is killed.

The cluster (:mod:`tests.e2e.faults.rabbitmq_cluster`) is started once for the module. Producer
and worker get kombu's failover URL over the three nodes and connect to node 1 first; the job
queues, declared from there, have their leader on node 1. A backlog of single and batched
signing jobs is published while no worker consumes; one worker is started and the node leading
``tenantkeys.sign`` is SIGKILLed as soon as that worker holds jobs it has not finished
(published, without a result, not waiting in the queue: a lower bound, the depth being read
first). A kill that caught no job fails the run as void. The same client then publishes a second
burst: producer and worker must reach a surviving node on their own, the queue's new leader
must hold every job, and every job must end signed once, with no client re-send.

Also here, on the machine's RabbitMQ (a vhost of our own, no cluster needed): a retry's delay
waiting in RabbitMQ (native delayed delivery, the only delay quorum queues allow), and queues
that exist with another type refused with ``TK-BROKER-QUEUE-TYPE``, not a traceback.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tenantkeys import jobs
from tenantkeys.client import SigningClient
from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.queue.broker import BrokerProbe
from tenantkeys.queue.producer import Job as ProducerJob
from tenantkeys.queue.producer import Producer
from tests.conftest import port_open, service_missing
from tests.e2e.faults import rabbitmq_cluster
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import fault_deployment
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.rabbitmq_cluster import RabbitMQCluster
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, distinctive_payload, results, wait_all
from tests.e2e.harness import Deployment, rabbitmq_vhost, wait_for

pytestmark = pytest.mark.e2e

TENANTS = ["qq1", "qq2", "qq3", "qq4"]
#: Single jobs per burst: several times the worker's prefetch (16 x 2), so it holds some
#: while the rest wait in the queue.
SINGLES = 300
#: sign_batch jobs per burst, of BATCH_ITEMS payloads each.
BATCHES = 20
BATCH_ITEMS = 10


@dataclass
class BatchJob(Job):
    """A ``sign_batch`` job: BATCH_ITEMS payloads of one tenant (``payload`` is the first)."""

    payloads: list[bytes] = field(default_factory=list)
    task: str = jobs.SIGN_BATCH

    @property
    def kwargs(self) -> dict[str, Any]:
        return {
            "items": [
                {"tenant_id": self.tenant, "payload": jobs.encode_payload(p)} for p in self.payloads
            ]
        }


def _burst(client: SigningClient, tag: str) -> tuple[list[Job], list[BatchJob]]:
    """Half the BATCHES sign_batch jobs, SINGLES single jobs (pipelined), the other half: the
    head of the queue (what a worker prefetches first) holds both kinds."""
    batches = []
    for b in range(BATCHES):
        payloads = [distinctive_payload(f"{tag}-b{b}-{i}") for i in range(BATCH_ITEMS)]
        tenant = TENANTS[b % len(TENANTS)]
        batches.append(BatchJob(str(uuid.uuid4()), tenant, payloads[0], payloads=payloads))
    singles = [
        Job(str(uuid.uuid4()), TENANTS[i % len(TENANTS)], distinctive_payload(f"{tag}-{i}"))
        for i in range(SINGLES)
    ]
    for job in batches[: BATCHES // 2]:
        client.send(job.task, job.kwargs, job_id=job.job_id)
    client.submit_many(
        [(j.tenant, j.payload) for j in singles], job_ids=[j.job_id for j in singles]
    )
    for job in batches[BATCHES // 2 :]:
        client.send(job.task, job.kwargs, job_id=job.job_id)
    return singles, batches


def _held(deployment: Deployment, probe: BrokerProbe, sent: list[Job]) -> int:
    """A lower bound of the jobs the running worker holds unfinished right now."""
    try:
        waiting = probe.queue_depths()[jobs.SIGN_QUEUE]  # read first: it only shrinks meanwhile
    except Exception:  # a broker hiccup: look again
        return 0
    done = len(results(deployment, [job.job_id for job in sent]))
    return max(0, len(sent) - done - waiting)


def account_batches(
    deployment: Deployment,
    batches: list[BatchJob],
    found: Mapping[str, Any],
    record: FaultRecord,
    tap: ResultTap,
) -> None:
    """Each sign_batch job is one job of the record: signed when every item's JWS verifies
    for its tenant and payload; duplicated when two result writes disagree on any item."""
    runtime = deployment.runtime()
    try:
        record.jobs_sent += len(batches)
        for job in batches:
            envelope = found.get(job.job_id)
            if envelope is None:
                record.lost += 1
                continue
            assert envelope.get("ok"), (job.job_id, envelope)
            items = envelope["result"]["results"]
            assert len(items) == len(job.payloads), job.job_id
            for item, payload in zip(items, job.payloads, strict=True):
                assert item["ok"] and item["result"]["tenant_id"] == job.tenant, item
                runtime.service.verify(job.tenant, payload, item["result"]["jws"])
            record.signed += 1
            written = {
                tuple(i["result"]["jws"] for i in meta["result"]["result"]["results"])
                for meta in tap.writes.get(job.job_id, [])
                if isinstance(meta.get("result"), Mapping) and meta["result"].get("ok")
            }
            final = tuple(item["result"]["jws"] for item in items)
            record.duplicated += max(0, len(written | {final}) - 1)
    finally:
        runtime.close()


def _leader(cluster: RabbitMQCluster, queue: str, not_this: str) -> str | None:
    """The queue's leader when it is known and not ``not_this`` (None while electing)."""
    try:
        leader = cluster.queues().get(queue, {}).get("leader")
    except AssertionError:  # rabbitmqctl failed: the cluster is busy electing
        return None
    return str(leader) if leader and leader != not_this else None


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitMQCluster]:
    if not rabbitmq_cluster.available():
        service_missing("rabbitmq-server (for a three-node cluster)")
    made = RabbitMQCluster()
    try:
        made.start()
        yield made
    finally:
        made.stop()


def test_queue_leader_killed_during_single_and_batched_jobs(
    tmp_path: Path, cluster: RabbitMQCluster, record: FaultRecord, secret_scan: SecretScan
) -> None:
    record.fault = "RabbitMQ quorum-queue leader SIGKILL (3-node cluster)"
    record.broker = "rabbitmq-quorum"
    deployment = fault_deployment(
        tmp_path,
        broker_url=cluster.url,
        broker_queue_type="quorum",
        worker_prefetch_multiplier=16,
    )
    probe = BrokerProbe.from_settings(deployment.settings)
    try:
        with (
            ResultTap(deployment.settings.effective_result_backend) as tap,
            EventCapture(deployment) as events,
            deployment.client() as client,
        ):
            setup = deployment.worker("setup")
            for tenant in TENANTS:
                client.create_keys(tenant, ["signing"], timeout=60)
            deployment.kill(setup, signal.SIGTERM)  # warm shutdown: it held no signing job
            queues = cluster.queues()
            assert {queues[q]["type"] for q in jobs.QUEUES} == {"quorum"}, queues
            leader = cluster.node(queues[jobs.SIGN_QUEUE]["leader"])
            assert len(queues[jobs.SIGN_QUEUE]["members"]) == 3, queues[jobs.SIGN_QUEUE]
            # Declared through node 1, the first of the URL: the kill also cuts the worker's
            # and the producer's connections, which must move to another node.
            assert leader is cluster.nodes[0], (leader.name, queues[jobs.SIGN_QUEUE])

            singles, batches = _burst(client, "before")  # a backlog: no worker consumes
            sent: list[Job] = [*singles, *batches]
            worker = deployment.worker("w1", wait_ready=False)
            held = wait_for(
                lambda: _held(deployment, probe, sent),
                60,
                "the worker to hold unfinished jobs",
                0.005,
            )
            killed_at = time.monotonic()
            cluster.kill(leader)
            done = results(deployment, [job.job_id for job in sent])
            done_at_kill = len(done)
            # The first BATCHES // 2 messages were sign_batch jobs, taken first by the worker.
            head = [job for job in batches[: BATCHES // 2] if job.job_id not in done]
            record.notes.append(
                f"killed {leader.name.split('@')[0]}, leader of "
                + ", ".join(q for q in jobs.QUEUES if queues[q]["leader"] == leader.name)
                + f", while the worker held at least {held} unfinished job(s) "
                f"({done_at_kill} of {len(sent)} done; {len(head)} of the {BATCHES // 2} "
                "sign_batch jobs at the head of the queue unfinished)"
            )

            # The same client publishes again: it must reach a surviving node on its own.
            more_singles, more_batches = _burst(client, "after")
            published = time.monotonic() - killed_at
            singles += more_singles
            batches += more_batches
            after = [*more_singles, *more_batches]
            sent += after
            wait_for(
                lambda: results(deployment, [job.job_id for job in after]),
                90,
                "the first job published after the kill to be signed",
                0.05,
            )
            first_after = time.monotonic() - killed_at
            new_leader = wait_for(
                lambda: _leader(cluster, jobs.SIGN_QUEUE, leader.name),
                60,
                "a new leader of the signing queue",
                0.2,
            )
            found = settle(deployment, sent, record, timeout=90)
            record.recover_seconds = time.monotonic() - killed_at
            record.notes.append(
                f"the node stays down; after the kill the second burst was published in "
                f"{published:.1f} s (producer failover), its first job signed at "
                f"{first_after:.1f} s, every job done at {record.recover_seconds:.1f} s; "
                f"new leader {new_leader.split('@')[0]}"
            )
            assert worker.poll() is None, "the worker exited with the node"
            account(deployment, singles, found, record, tap=tap, events=events)
            account_batches(deployment, batches, found, record, tap)
            record.notes.append(
                f"{len(singles)} single jobs and {len(batches)} sign_batch jobs of "
                f"{BATCH_ITEMS} items"
            )
        scan_run(
            secret_scan,
            deployment,
            [(job.job_id, job.payload) for job in singles]
            + [(job.job_id, p) for job in batches for p in job.payloads],
            results=tap.raw,
            events=events.events,
        )
    finally:
        probe.close()
        deployment.stop()
    assert held > 0, "void run: the kill caught no job in flight"
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.resent == 0, record  # every job came through the cluster, none re-sent
    assert record.signed == len(sent), record


# -- on the machine's RabbitMQ: delayed retries, and queues of another type ------------------


@pytest.fixture
def vhost() -> Iterator[str]:
    if not port_open("127.0.0.1", 5672):
        service_missing("RabbitMQ at 127.0.0.1:5672")
    with rabbitmq_vhost() as url:
        yield url


def _ready(url: str, names: list[str]) -> dict[str, int]:
    """Messages ready in each queue, by passive declare (exact, unlike the 5 s statistics)."""
    from kombu import Connection

    counts = {}
    with Connection(url) as conn:
        channel = conn.channel()
        for name in names:
            counts[name] = int(channel.queue_declare(queue=name, passive=True)[1])
    return counts


def test_a_delayed_job_waits_in_rabbitmq_on_quorum_queues(tmp_path: Path, vhost: str) -> None:
    """A countdown on quorum queues waits in RabbitMQ's delay queues, not in a worker (the
    worker's retries take this path: ``workers.outcomes.requeue``), then is signed."""
    deployment = fault_deployment(tmp_path, broker_url=vhost, broker_queue_type="quorum")
    delay_queues = [f"celery_delayed_{level}" for level in range(28)]
    try:
        # The worker declares the delay exchanges and queues and binds ours to them.
        setup = deployment.worker("setup")
        with deployment.client() as client:
            client.create_keys("qd1", ["signing"], timeout=60)
            deployment.kill(setup, signal.SIGTERM)
            job = Job(str(uuid.uuid4()), "qd1", distinctive_payload("delayed"))
            client.app.send_task(job.task, kwargs=job.kwargs, task_id=job.job_id, countdown=4)
            waiting = _ready(vhost, [jobs.SIGN_QUEUE, *delay_queues])
            assert waiting[jobs.SIGN_QUEUE] == 0, waiting  # not in the job queue yet...
            assert sum(waiting[q] for q in delay_queues) == 1, waiting  # ...but in a delay queue
            # ...and in the job queue once the delay is over, with no worker involved.
            wait_for(
                lambda: _ready(vhost, [jobs.SIGN_QUEUE])[jobs.SIGN_QUEUE] == 1,
                30,
                "the delayed job to reach its queue",
                0.2,
            )
            deployment.worker("w1")
            found = wait_all(deployment, [job], 30)
        assert found.get(job.job_id, {}).get("ok"), found
        log = deployment.log("w1")
        assert "Global QoS is disabled" in log, log[-2000:]
        assert "delay queues not set up" not in log, log[-2000:]
    finally:
        deployment.stop()


def test_queues_of_another_type_are_refused_with_a_code(tmp_path: Path, vhost: str) -> None:
    """Classic queues exist; a quorum producer and a quorum worker each say so in one coded
    line (the worker exits with EX_CONFIG), with no traceback."""
    classic = fault_deployment(tmp_path, broker_url=vhost)
    producer = Producer.from_settings(classic.settings)
    try:
        producer.publish(ProducerJob(jobs.ROTATION_SWEEP, {}, str(uuid.uuid4())))
    finally:
        producer.close()
    quorum = fault_deployment(tmp_path, broker_url=vhost, broker_queue_type="quorum")
    producer = Producer.from_settings(quorum.settings)
    try:
        with pytest.raises(ConfigurationError) as refused:
            producer.publish(ProducerJob(jobs.SIGN, {}, str(uuid.uuid4())))
    finally:
        producer.close()
    assert refused.value.code == ErrorCode.BROKER_QUEUE_TYPE
    assert "new vhost" in str(refused.value)
    try:
        worker = quorum.worker("wq", wait_ready=False)
        assert worker.wait(60) == 78, quorum.log("wq")[-3000:]
        log = quorum.log("wq")
        assert "TK-BROKER-QUEUE-TYPE" in log, log[-3000:]
        assert "Traceback" not in log and "Unrecoverable error" not in log, log[-3000:]
    finally:
        quorum.stop()
        classic.stop()
