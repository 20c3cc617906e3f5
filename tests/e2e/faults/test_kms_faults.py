"""The KMS (moto's AWS KMS behind a loopback proxy) stopped for a while, then answering slowly.

"Stopped" is the proxy refusing connections and cutting the open ones: to the workers that is
a KMS process gone from its port. moto itself keeps running behind it because it holds its keys
in memory only (a real restart would lose the master key the stored keys are wrapped under).
``KMS_OUTAGE_SECONDS`` is the full 60 s the reliability issue asks for; set
``TK_FAULT_KMS_OUTAGE_SECONDS`` lower for a quick local run (the assertions do not change).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkeys import jobs
from tests.e2e.faults.accounting import EventCapture, ResultTap, account, settle
from tests.e2e.faults.deployment import fault_deployment, replay_all
from tests.e2e.faults.hygiene import SecretScan, scan_run
from tests.e2e.faults.outages import SlowProxy
from tests.e2e.faults.report import FaultRecord
from tests.e2e.faults.sending import Job, results, send_sign_jobs, wait_all
from tests.e2e.harness import Deployment, TcpProxy, wait_for

pytestmark = pytest.mark.e2e
moto_kms = pytest.importorskip("tenantkeys.testing.moto_kms")

KMS_OUTAGE_SECONDS = float(os.environ.get("TK_FAULT_KMS_OUTAGE_SECONDS", "60"))
AWS_ROOT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
CACHED, UNCACHED = ["c1", "c2"], ["u1", "u2", "u3"]


@pytest.fixture
def kms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name, value in AWS_ROOT.items():
        monkeypatch.setenv(name, value)
    with moto_kms.moto_kms_server(str(tmp_path / "moto.log")) as server:
        yield server


def aws_deployment(tmp: Path, server: object, endpoint: str, **overrides: object) -> Deployment:
    return fault_deployment(
        tmp,
        kms_provider="aws",
        aws_kms_key_id=server.key_id,  # type: ignore[attr-defined]
        aws_region=moto_kms.REGION,
        aws_endpoint_url=endpoint,
        **overrides,
    )


def _dead_letters_of(deployment: Deployment, sent: list[Job]) -> int:
    ids = {job.job_id for job in sent}
    return sum(1 for entry in deployment.deadletters().entries() if entry.job_id in ids)


def test_kms_stopped_then_restarted(
    kms: object, tmp_path: Path, record: FaultRecord, secret_scan: SecretScan
) -> None:
    record.fault, record.provider = f"KMS stopped {KMS_OUTAGE_SECONDS:g} s, restarted", "aws"
    proxy = TcpProxy(kms.port)  # type: ignore[attr-defined]
    proxy.start()
    deployment = aws_deployment(
        tmp_path, kms, proxy.url, breaker_fail_max=3, breaker_reset_timeout_seconds=3
    )
    try:
        with ResultTap(deployment.settings.effective_result_backend) as tap:
            deployment.worker("signer", queues=jobs.SIGN_QUEUE, concurrency=1, extra_env=AWS_ROOT)
            deployment.worker("keys", queues=jobs.KEYS_QUEUE, concurrency=1, extra_env=AWS_ROOT)
            with EventCapture(deployment) as events, deployment.client() as client:
                for tenant in CACHED + UNCACHED:
                    client.create_keys(tenant, ["signing"], timeout=60)
                for tenant in CACHED:  # warm the signer's L1
                    client.sign(tenant, b"warm-up", timeout=60)

                proxy.stop()
                outage_started = time.monotonic()
                cached_jobs: list[Job] = []
                uncached_jobs: list[Job] = []
                wave = 0
                while time.monotonic() - outage_started < KMS_OUTAGE_SECONDS:
                    cached_jobs += send_sign_jobs(client, CACHED, 4, f"outage-c{wave}")
                    uncached_jobs += send_sign_jobs(client, UNCACHED, 3, f"outage-u{wave}")
                    wave += 1
                    time.sleep(1.0)
                # Cached tenants signed throughout the outage (wait bounded by the outage).
                during = wait_all(deployment, cached_jobs, 30)
                assert all(during.get(j.job_id, {}).get("ok") for j in cached_jobs), (
                    "a cached tenant's job did not sign during the outage"
                )
                wait_all(deployment, uncached_jobs, 60)
                dead = _dead_letters_of(deployment, uncached_jobs)
                assert deployment.breaker_state("aws") == "open"
                record.fault_seconds = time.monotonic() - outage_started

                proxy.start()
                recovery_started = time.monotonic()

                def fresh_signature() -> bool:
                    probe = send_sign_jobs(client, UNCACHED[:1], 1, "probe")
                    probes.extend(probe)
                    found = wait_all(deployment, probe, 10)
                    return bool(found.get(probe[0].job_id, {}).get("ok"))

                probes: list[Job] = []
                wait_for(fresh_signature, 60, "an uncached tenant to sign after the restart", 0.5)
                record.notes.append(
                    f"first uncached signature {time.monotonic() - recovery_started:.1f} s "
                    "after the restart (breaker reset timeout 3 s)"
                )
                record.notes.append(f"{len(probes)} probe job(s) sent after the restart")
                replay_all(deployment, AWS_ROOT)
                sent = cached_jobs + uncached_jobs + probes
                found = settle(deployment, sent, record, timeout=60)
                record.recover_seconds = time.monotonic() - recovery_started
            account(deployment, sent, found, record, tap=tap, events=events)
            record.dead_lettered = dead + _dead_letters_of(deployment, probes)
            record.replayed = dead
            scan_run(
                secret_scan,
                deployment,
                [(job.job_id, job.payload) for job in sent],
                results=tap.raw,
                events=events.events,
            )
    finally:
        proxy.stop()
        deployment.stop()
    assert dead > 0, "uncached tenants should have been dead-lettered during the outage"
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.signed == len(sent), record


SLOW_SECONDS = 5.0
#: How long the KMS stays slow in the fault suite.
SLOW_PERIOD_SECONDS = 12.0


def slow_deployment(tmp: Path, server: object, proxy: SlowProxy) -> Deployment:
    # SDK timeout above the latency, so the task's own time limits are what trips.
    return aws_deployment(
        tmp,
        server,
        proxy.url,
        kms_timeout_seconds=20,
        task_soft_time_limit_seconds=2,
        task_time_limit_seconds=4,
        breaker_fail_max=1000,
        retry_max=2,
    )


def test_slow_kms_trips_time_limits_then_recovers(
    kms: object, tmp_path: Path, record: FaultRecord, secret_scan: SecretScan
) -> None:
    """Every KMS answer held 5 s (SDK timeout 20 s; time limits 2 s soft, 4 s hard) for a
    while, then fast again: jobs are interrupted and handed back (dead-lettered after
    ``retry_max`` lost attempts, then replayed), none is lost or doubled."""
    record.fault, record.provider = f"slow KMS (+{SLOW_SECONDS:g} s per call)", "aws"
    proxy = SlowProxy(kms.port)  # type: ignore[attr-defined]
    proxy.start()
    deployment = slow_deployment(tmp_path, kms, proxy)
    try:
        with ResultTap(deployment.settings.effective_result_backend) as tap:
            deployment.worker("w1", concurrency=2, extra_env=AWS_ROOT)
            with EventCapture(deployment) as events, deployment.client() as client:
                tenants = ["s1", "s2", "s3"]
                for tenant in tenants:
                    client.create_keys(tenant, ["signing"], timeout=60)
                proxy.delay = SLOW_SECONDS
                slow_started = time.monotonic()
                sent = send_sign_jobs(client, tenants, 30, "slow")
                time.sleep(SLOW_PERIOD_SECONDS)
                during = len(results(deployment, [j.job_id for j in sent]))
                proxy.delay = 0.0
                record.fault_seconds = time.monotonic() - slow_started
                recovery_started = time.monotonic()
                found = settle(deployment, sent, record, timeout=60)
                # A burst lands in one signing batch, and while the KMS is slow that batch dies
                # at the hard limit on every attempt: its jobs end as dead letters after
                # retry_max, and the operator's replay signs them once the KMS is fast again.
                dead = _dead_letters_of(deployment, sent)
                if dead:
                    replay_all(deployment, AWS_ROOT)
                    found = settle(deployment, sent, record, timeout=60)
                record.recover_seconds = time.monotonic() - recovery_started
            log = deployment.log("w1")
            interrupted = log.count("was lost")
            record.notes.append(
                f"{during} of {len(sent)} jobs ended while the KMS was slow; {interrupted} "
                "signing batch(es) hit the hard time limit and were requeued"
            )
            account(deployment, sent, found, record, tap=tap, events=events)
            record.dead_lettered = record.replayed = dead
            scan_run(
                secret_scan,
                deployment,
                [(job.job_id, job.payload) for job in sent],
                results=tap.raw,
                events=events.events,
            )
    finally:
        proxy.stop()
        deployment.stop()
    assert interrupted > 0, "the slow KMS should have tripped the time limit"
    assert record.lost == 0 and record.duplicated == 0, record
    assert record.signed == len(sent), record
