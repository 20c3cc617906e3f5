"""Redis (cache) unavailable with RabbitMQ as the broker; PostgreSQL stopped.

Each test runs a server of its own on a free port (a private Redis, a private PostgreSQL
cluster) and stops that one, never the machine's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkeys import jobs
from tenantkeys.errors import TenantKeysError
from tests.conftest import port_open, service_missing
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import fault_deployment, replay_all
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.outages import PrivatePostgres, PrivateRedis
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, send_sign_jobs, wait_all
from tests.e2e.harness import rabbitmq_vhost, wait_for

pytestmark = pytest.mark.e2e
#: Waves of signing jobs, one a second, while the cache Redis is down.
REDIS_DOWN_WAVES = 8


@pytest.fixture
def amqp_vhost() -> Iterator[str]:
    if not port_open("127.0.0.1", 5672):
        service_missing("RabbitMQ at 127.0.0.1:5672")
    with rabbitmq_vhost() as url:
        yield url


def test_redis_cache_unavailable_with_a_rabbitmq_broker(
    tmp_path: Path, amqp_vhost: str, record: FaultRecord, secret_scan: SecretScan
) -> None:
    """TENANTKEYS_REDIS_URL (L2, locks, breaker, dead letters) on a Redis we stop; broker on
    RabbitMQ and results on the shared Redis: signing goes on from L1 and the key store."""
    record.fault, record.broker = "Redis (cache) unavailable", "rabbitmq"
    cache = PrivateRedis(tmp_path)
    cache.start()
    deployment = fault_deployment(
        tmp_path, broker_url=amqp_vhost, redis_url=cache.url, result_backend="{leased}"
    )
    try:
        with ResultTap(deployment.redis_db.url) as tap:
            deployment.worker("w1", concurrency=2)
            with EventCapture(deployment) as events, deployment.client() as client:
                cached, stored = ["r1", "r2"], ["r3", "r4"]
                for tenant in cached + stored:
                    client.create_keys(tenant, ["signing"], timeout=60)
                for tenant in cached:  # warm both pool processes' L1 (several jobs each)
                    for _ in range(4):
                        client.sign(tenant, b"warm-up", timeout=30)
                sent: list[Job] = []
                cache.stop()
                outage_started = time.monotonic()
                for wave in range(REDIS_DOWN_WAVES):  # over a few seconds: past L2's back-off
                    sent += send_sign_jobs(client, cached + stored, 20, f"redis-down{wave}")
                    time.sleep(1.0)
                during = wait_all(deployment, sent, 60)
                assert all(e.get("ok") for e in during.values()) and len(during) == len(sent), (
                    "signing stopped while the cache Redis was down"
                )
                record.fault_seconds = time.monotonic() - outage_started
                cache.start()  # same port, empty: L2, breaker and generations start afresh
                recovery_started = time.monotonic()
                # Invalidation works again without a restart: a rotation is seen by the signer.
                old_kid = during[sent[0].job_id]["result"]["kid"]
                rotated = client.rotate_key(sent[0].tenant, "signing", timeout=60)
                assert rotated["rotated"], rotated

                def new_kid_used() -> bool:
                    probe = send_sign_jobs(client, [sent[0].tenant], 2, "after")
                    sent.extend(probe)
                    found = wait_all(deployment, probe, 20)
                    return all(
                        found.get(j.job_id, {}).get("result", {}).get("kid") not in (None, old_kid)
                        for j in probe
                    )

                wait_for(new_kid_used, 60, "both pool processes to sign with the new key", 1.0)
                record.recover_seconds = time.monotonic() - recovery_started
                record.notes.append(
                    "recovery = Redis back until a rotation is honoured by every pool process "
                    "(invalidation listener reconnected; TTL-less)"
                )
                found = settle(deployment, sent, record, timeout=30)
            account(deployment, sent, found, record, tap=tap, events=events)
            scan_run(
                secret_scan,
                deployment,
                [(job.job_id, job.payload) for job in sent],
                results=tap.raw,
                events=events.events,
                redis_urls=[deployment.redis_db.url],
            )
    finally:
        deployment.stop()
        cache.stop()
    assert record.lost == 0 and record.duplicated == 0 and record.dead_lettered == 0, record
    assert record.signed == len(sent), record


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    if not PrivatePostgres.available():
        service_missing("PostgreSQL server binaries (initdb, pg_ctl)")
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


def _cli(deployment: object, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tenantkeys.cli import main; sys.exit(main())",
            *list(args),
        ],
        env=deployment.env(),  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_postgres_stopped_cached_tenants_sign_and_creation_fails_clearly(
    tmp_path: Path, postgres: PrivatePostgres, record: FaultRecord, secret_scan: SecretScan
) -> None:
    record.fault = "PostgreSQL stopped"
    deployment = fault_deployment(tmp_path, database_url=postgres.url)
    try:
        with ResultTap(deployment.redis_db.url) as tap:
            deployment.worker("w1", concurrency=1)
            with EventCapture(deployment) as events, deployment.client() as client:
                cached, uncached = ["p1", "p2"], ["p3"]
                for tenant in cached + uncached:
                    client.create_keys(tenant, ["signing"], timeout=60)
                for tenant in cached:
                    client.sign(tenant, b"warm-up", timeout=30)
                postgres.stop()
                outage_started = time.monotonic()
                sent = send_sign_jobs(client, cached, 60, "pg-down")
                during = wait_all(deployment, sent, 60)
                assert all(during.get(j.job_id, {}).get("ok") for j in sent), (
                    "a cached tenant stopped signing while PostgreSQL was down"
                )
                # An uncached tenant and a key creation need the store: retried, then a clear
                # error (TK-STORE-UNAVAILABLE) in the result and the dead-letter store.
                waiting = send_sign_jobs(client, uncached, 5, "pg-down-uncached")
                sent += waiting
                create = client.send(jobs.CREATE_KEYS, {"tenant_id": "p4"})
                with pytest.raises(TenantKeysError) as failed:
                    client.wait(create, 60)
                assert failed.value.code == "TK-STORE-UNAVAILABLE", failed.value
                assert "dead-lettered" in str(failed.value)
                cli = _cli(deployment, "keys", "create", "--tenant", "p5")
                assert cli.returncode != 0 and cli.stderr.startswith("TK-STORE-UNAVAILABLE"), (
                    cli.stderr
                )
                assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
                wait_all(deployment, waiting, 60)
                dead = sum(
                    1
                    for e in deployment.deadletters().entries()
                    if e.code == "TK-STORE-UNAVAILABLE"
                )
                record.fault_seconds = time.monotonic() - outage_started

                postgres.start()  # the same worker, never restarted
                recovery_started = time.monotonic()
                created = client.create_keys("p4", ["signing"], timeout=60)
                assert created[0]["tenant_id"] == "p4"
                replay_all(deployment)
                sent += send_sign_jobs(client, ["p4", *uncached], 6, "pg-back")
                found = settle(deployment, sent, record, timeout=60)
                record.recover_seconds = time.monotonic() - recovery_started
            account(deployment, sent, found, record, tap=tap, events=events)
            record.dead_lettered, record.replayed = dead, dead
            record.notes.append(
                "key creation during the outage: TK-STORE-UNAVAILABLE after retries "
                "(queue) and at once (CLI); both succeed after the restart, no worker restart"
            )
            scan_run(
                secret_scan,
                deployment,
                [(job.job_id, job.payload) for job in sent],
                results=tap.raw,
                events=events.events,
            )
    finally:
        deployment.stop()
    assert dead >= len(waiting) + 1, dead
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.signed == len(sent), record
