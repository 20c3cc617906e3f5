"""Redis behind Sentinel: the primary is SIGKILLed while a worker holds signing jobs.

A primary, a replica and three sentinels of our own (:mod:`tests.e2e.faults.redis_sentinel`)
serve the cache, invalidations, breaker, dead letters and results, through ``sentinel://``
URLs; the broker is the same Sentinel group, or the machine's RabbitMQ (a vhost of our own).
Keys are created, a dead letter is written, a burst of signing jobs is published, and once the
worker holds jobs it has not finished (published, without a result, not waiting in the queue:
a lower bound; the depth is read first), ``WAIT 1`` confirms that what is stored so far reached
the replica, the replication lag is read, and the primary is killed. A kill that caught no job
fails the run as void.

Then: the same client publishes a second burst (retrying while no primary is named, as a
caller would), every worker process resubscribes to invalidations on the new primary (``PUBSUB
NUMSUB``), a rotation made after the failover reaches the workers (they sign with the new key
although their L1 would keep the old one for an hour), the dead letter and every result
confirmed by ``WAIT`` before the kill are still there, and every job ends signed once.

What replication lag can cost: writes the primary acknowledged but had not yet sent to the
replica die with it. Here that is at most the ``master_repl_offset - slave_repl_offset`` bytes
read just before the kill (reported); anything ``WAIT 1`` confirmed is on the replica.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis

from tenantkeys import jobs
from tenantkeys.client import SigningClient
from tenantkeys.config.urls import is_sentinel
from tenantkeys.errors import TransientError
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.runtime import redis_from_url
from tenantkeys.queue.broker import BrokerProbe
from tests.conftest import port_open, service_missing
from tests.e2e.faults import redis_sentinel
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import fault_deployment
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.redis_sentinel import MASTER, SentinelGroup
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, distinctive_payload, results, wait_all
from tests.e2e.harness import Deployment, rabbitmq_vhost, wait_for

pytestmark = pytest.mark.e2e

TENANTS = ["rs1", "rs2", "rs3", "rs4"]
#: Jobs per burst: several times the worker's prefetch (16 x 2), so it holds some while the
#: rest wait in the queue.
BURST = 400
#: Jobs signed for the rotated tenant after the rotation.
AFTER_ROTATION = 20


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    if not redis_sentinel.available():
        service_missing("redis-server and redis-sentinel (scripts/install-test-servers)")
    made = SentinelGroup()
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def sentinel_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's readers (results, result tap, secret scan) open ``redis.Redis.from_url``;
    for a sentinel:// URL they get the service's own factory, asking the sentinels."""
    original = redis.Redis.from_url

    def from_url(url: str, **options: Any) -> redis.Redis:
        if is_sentinel(url):
            return redis_from_url(url, sentinel_master=MASTER, timeout=2.0)
        return original(url, **options)

    monkeypatch.setattr(redis.Redis, "from_url", from_url)


def _send(client: SigningClient, jobs_: list[Job]) -> int:
    """Publish each job, retrying one the broker refused (no primary yet); returns refusals."""
    refused = 0
    for job in jobs_:
        while True:
            try:
                client.send(job.task, job.kwargs, job_id=job.job_id)
                break
            except TransientError:
                refused += 1
                assert refused < 200, "the broker refused publishes for over 40 s"
                time.sleep(0.2)
    return refused


def _burst(tag: str, tenants: list[str], count: int) -> list[Job]:
    return [
        Job(f"{tag}-{i}-{time.time_ns()}", tenants[i % len(tenants)], distinctive_payload(tag))
        for i in range(count)
    ]


def _held(deployment: Deployment, probe: BrokerProbe, sent: list[Job]) -> int:
    """A lower bound of the jobs the worker holds unfinished right now."""
    try:
        waiting = probe.queue_depths()[jobs.SIGN_QUEUE]  # read first: it only shrinks meanwhile
    except Exception:  # a broker hiccup: look again
        return 0
    done = len(results(deployment, [job.job_id for job in sent]))
    return max(0, len(sent) - done - waiting) if done else 0


def _subscribers(server: redis_sentinel.Server, channel: str) -> int:
    client = server.client()
    try:
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])
    except redis.RedisError:
        return 0
    finally:
        client.close()


def _kid(jws: str) -> str:
    header = jws.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


@pytest.mark.parametrize("broker", ["redis-sentinel", "rabbitmq"])
def test_primary_killed_while_signing(
    tmp_path: Path,
    group: SentinelGroup,
    broker: str,
    record: FaultRecord,
    secret_scan: SecretScan,
    sentinel_reads: None,
) -> None:
    record.fault = "Redis Sentinel primary SIGKILL (1 replica, 3 sentinels)"
    record.broker = broker
    with ExitStack() as stack:
        if broker == "rabbitmq":
            if not port_open("127.0.0.1", 5672):
                service_missing("RabbitMQ at 127.0.0.1:5672")
            broker_url = stack.enter_context(rabbitmq_vhost())
        else:
            broker_url = group.url
        deployment = fault_deployment(
            tmp_path,
            broker_url=broker_url,
            redis_url=group.url,
            result_backend=group.url,
            redis_sentinel_master=MASTER,
            # Only an invalidation can move a worker off a cached key within the test.
            cache_ttl_seconds=3600,
            key_confirm_seconds=3600,
        )
        stack.callback(deployment.stop)
        probe = BrokerProbe.from_settings(deployment.settings)
        stack.callback(probe.close)
        tap = stack.enter_context(ResultTap(deployment.settings.effective_result_backend))
        events = stack.enter_context(EventCapture(deployment))
        client = stack.enter_context(deployment.client())

        worker = deployment.worker("w1")
        for tenant in TENANTS:
            client.create_keys(tenant, ["signing"], timeout=60)
        deadletters = deployment.deadletters()
        letter = deadletters.add(
            task=jobs.SIGN,
            job_id="rs-dead-letter",
            kwargs={"tenant_id": TENANTS[0]},
            arguments={"tenant_id": TENANTS[0]},
            error=TransientError("written before the primary was killed"),
            attempts=1,
            worker="test",
        )
        old_primary = group.primary()
        channel = f"{deployment.prefix}:invalidate"

        sent = _burst("before", TENANTS, BURST)
        # Sent while the worker is frozen, so it cannot finish the burst before anyone looks
        # (a worker that keeps up with the publisher holds nothing; seen on RabbitMQ).
        os.killpg(worker.pid, signal.SIGSTOP)
        try:
            _send(client, sent)
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        held = wait_for(
            lambda: _held(deployment, probe, sent), 60, "the worker to hold unfinished jobs", 0.005
        )
        # Everything stored so far is on the replica once WAIT says so: the bound's proof.
        done_before = set(results(deployment, [job.job_id for job in sent]))
        primary_client = old_primary.client()
        try:
            confirmed = int(primary_client.execute_command("WAIT", 1, 2000))
        finally:
            primary_client.close()
        subscribed = _subscribers(old_primary, channel)
        ahead, behind = group.offsets(old_primary, group.replica())
        killed_at = time.monotonic()
        group.kill(old_primary)
        new_port = wait_for(
            lambda: (port := group.primary_port()) != old_primary.port and port,
            30,
            "the sentinels to name a new primary",
            0.05,
        )
        record.fault_seconds = time.monotonic() - killed_at
        new_primary = group.primary()
        record.notes.append(
            f"killed the primary while the worker held at least {held} unfinished job(s) "
            f"({len(done_before)} of {len(sent)} done); WAIT 1 confirmed {confirmed} replica; "
            f"replication lag at the kill {ahead - behind} byte(s) "
            f"(offsets {ahead} and {behind}); new primary named after "
            f"{record.fault_seconds:.1f} s"
        )

        # The same client publishes again: it must reach the new primary on its own.
        after = _burst("after", TENANTS, BURST // 2)
        refused = _send(client, after)
        published = time.monotonic() - killed_at
        sent += after
        wait_for(
            lambda: results(deployment, [job.job_id for job in after]),
            90,
            "the first job published after the kill to be signed",
            0.05,
        )
        first_after = time.monotonic() - killed_at

        # Every worker process listens on the new primary again; a rotation reaches them.
        wait_for(
            lambda: _subscribers(new_primary, channel) >= subscribed,
            30,
            "the workers to resubscribe to invalidations on the new primary",
            0.1,
        )
        runtime = deployment.runtime()
        try:
            rotation = runtime.service.rotate(TENANTS[0], "signing")
            active = runtime.service.store.active(TENANTS[0], Purpose.SIGNING)
        finally:
            runtime.close()
        assert rotation.rotated and active is not None, rotation
        rotated = _burst("rotated", [TENANTS[0]], AFTER_ROTATION)
        _send(client, rotated)
        signed_after_rotation = wait_all(deployment, rotated, 60)
        sent += rotated

        # Jobs still without a result after the bounded wait are re-sent once (settle).
        waited = wait_all(deployment, sent, 90)
        unfinished = {job.job_id for job in sent if job.job_id not in waited}
        found = settle(deployment, sent, record, timeout=1)
        record.recover_seconds = time.monotonic() - killed_at
        assert worker.poll() is None, "the worker exited with the primary"
        account(deployment, sent, found, record, tap=tap, events=events)

        survivors = set(results(deployment, sorted(done_before)))
        kept_letter = deadletters.get(letter.id)
        record.notes.append(
            f"{refused} publish(es) refused and retried, the second burst published "
            f"{published:.1f} s after the kill, its first job signed at {first_after:.1f} s; "
            f"{subscribed} invalidation subscriber(s) back on the new primary; a rotation "
            f"after the failover reached the workers; {len(survivors)} of "
            f"{len(done_before)} results stored before the kill and the dead letter kept"
        )
        log = deployment.log("w1")
        scan_run(
            secret_scan,
            deployment,
            [(job.job_id, job.payload) for job in sent],
            results=tap.raw,
            events=events.events,
            redis_urls=[f"redis://127.0.0.1:{new_port}/0"],
        )

    assert held > 0, "void run: the kill caught no job in flight"
    assert confirmed == 1, "WAIT: the replica did not confirm the writes before the kill"
    assert survivors == done_before, sorted(done_before - survivors)[:5]
    assert kept_letter.job_id == "rs-dead-letter"
    assert subscribed >= 2, subscribed  # one listener per pool process
    assert "invalidation listener lost Redis" in log, log[-3000:]
    kids = {job.job_id: _kid(signed_after_rotation[job.job_id]["result"]["jws"]) for job in rotated}
    assert set(kids.values()) == {active.kid}, kids
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.signed == len(sent), record
    if broker == "redis-sentinel":
        # kombu's stock transport pops a job and records it as unacked in two round trips (or
        # loses BRPOP's reply with the connection): a job taken at the kill can vanish, and
        # only a caller's re-send brings it back. Only jobs in flight at the kill may.
        in_flight = {job.job_id for job in sent[:BURST]} - done_before
        assert unfinished <= in_flight, sorted(unfinished - in_flight)
    else:
        assert record.resent == 0, record  # every job came through the failover, none re-sent
