"""Two Beat processes at once, and many concurrent rotations of one key while it signs."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tenantkeys import jobs
from tenantkeys.keys.cache import LocalKeyCache
from tenantkeys.keys.kms import ProviderSet
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.runtime import redis_client
from tenantkeys.keys.service import KeyService
from tenantkeys.keys.store import KeyStore
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import fault_deployment
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, results, send_sign_jobs
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e


def test_two_beats_rotate_each_due_key_once(tmp_path: Path, record: FaultRecord) -> None:
    record.fault = "two Beat processes"
    deployment = fault_deployment(
        tmp_path, rotation_sweep_interval_seconds=0.5, rotation_sweep_page_size=5
    )
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
    tenants = [f"due{i}" for i in range(12)]
    for tenant in tenants:
        service.create_keys(tenant)
    try:
        deployment.worker("w1", concurrency=2)
        started = time.monotonic()
        deployment.beat("beat1")
        deployment.beat("beat2")
        wait_for(lambda: not store.due(datetime.now(UTC), limit=1), 60, "every due key rotated")
        record.recover_seconds = time.monotonic() - started
        redis = redis_client(options)
        sweeps = set()
        last = f"{deployment.prefix}:sweep:last"
        wait_for(lambda: sweeps.add(redis.get(last)) or len(sweeps) >= 4, 30, "more sweeps")
        wait_for(
            lambda: redis.llen(jobs.KEYS_QUEUE) == 0 and redis.hlen("unacked") == 0,
            30,
            "the keys queue to drain",
        )
        record.fault_seconds = time.monotonic() - started
        rotations = 0
        for tenant in tenants:
            for purpose in Purpose:
                versions = store.versions(tenant, purpose)
                assert [v.version for v in versions] == [1, 2], (tenant, purpose, versions)
                assert [v.status.value for v in versions] == ["retired", "active"]
                rotations += len(versions) - 1
        beat_logs = deployment.log("beat1") + deployment.log("beat2")
        sent = beat_logs.count("Sending due task")
        record.jobs_sent = sent  # sweeps Beat sent (two Beats, each on its own schedule)
        record.signed = rotations  # rotations made (one per due key)
        record.duplicated = rotations - len(tenants) * len(Purpose)
        record.notes.append(
            f"{sent} sweeps sent by two Beats; {len(tenants) * 2} due keys, {rotations} "
            "rotations (jobs = sweeps, signed column = rotations made)"
        )
        redis.close()
    finally:
        store.close()
        deployment.stop()
    assert record.duplicated == 0


CONDITIONAL, UNCONDITIONAL = 30, 10


def test_concurrent_rotations_of_one_key_while_it_signs(
    tmp_path: Path, record: FaultRecord, secret_scan: SecretScan
) -> None:
    """Two workers (4 processes) take 30 rotations conditional on version 1, 10 unconditional
    ones and 200 signing jobs at once: exactly one conditional rotation wins, each
    unconditional one makes at most one version (or reports the race it lost), versions stay
    contiguous with one active, and every signature verifies under the version that made it."""
    record.fault = "concurrent rotations of one key"
    deployment = fault_deployment(tmp_path)
    try:
        with ResultTap(deployment.settings.effective_result_backend) as tap:
            deployment.worker("w1", concurrency=2)
            deployment.worker("w2", concurrency=2)
            with EventCapture(deployment) as events, deployment.client() as client:
                client.create_keys("rot", ["signing"], timeout=60)
                started = time.monotonic()
                rotations = [
                    client.send(
                        jobs.ROTATE_KEY,
                        {"tenant_id": "rot", "purpose": "signing", "expected_version": 1},
                        job_id=str(uuid.uuid4()),
                    )
                    for _ in range(CONDITIONAL)
                ]
                sent: list[Job] = []
                for i in range(UNCONDITIONAL):
                    sent += send_sign_jobs(client, ["rot"], 20, f"rot{i}")
                    rotations.append(
                        client.send(
                            jobs.ROTATE_KEY,
                            {"tenant_id": "rot", "purpose": "signing", "expected_version": None},
                        )
                    )
                wait_for(
                    lambda: len(results(deployment, rotations)) == len(rotations),
                    60,
                    "every rotation job",
                )
                found = settle(deployment, sent, record, timeout=60)
                record.recover_seconds = time.monotonic() - started
            done = results(deployment, rotations)
            assert all(e["ok"] for e in done.values()), done
            won = [done[r]["result"]["rotated"] for r in rotations[:CONDITIONAL]]
            unconditional = [done[r]["result"]["rotated"] for r in rotations[CONDITIONAL:]]
            lost_races = {
                done[r]["result"]["reason"]
                for r in rotations[CONDITIONAL:]
                if not done[r]["result"]["rotated"]
            }
            account(deployment, sent, found, record, tap=tap, events=events)
            runtime = deployment.runtime()
            versions = runtime.service.store.versions("rot", Purpose.SIGNING)
            runtime.close()
            record.notes.append(
                f"{sum(won)} of {CONDITIONAL} conditional rotations won; "
                f"{sum(unconditional)} of {UNCONDITIONAL} unconditional ones rotated; "
                f"{len(versions)} versions"
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
    assert sum(won) == 1, won
    # An unconditional rotation that loses the race to a concurrent one reports it (the key
    # it asked to replace was replaced meanwhile); none makes two versions.
    assert lost_races <= {"rotated concurrently"}, lost_races
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    assert len(versions) == 1 + sum(won) + sum(unconditional)
    assert [v.status.value for v in versions].count("active") == 1
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.signed == len(sent), record
