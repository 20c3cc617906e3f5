"""AWS KMS (moto) going away under real workers; and a permission error (moto IAM)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantkeys import jobs
from tenantkeys.errors import KmsPermissionError, TenantKeysError
from tenantkeys.signing import Signature
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.harness import Deployment, TcpProxy, wait_for

pytestmark = pytest.mark.e2e
moto_kms = pytest.importorskip("tenantkeys.testing.moto_kms")


@pytest.fixture
def kms(tmp_path: Path) -> Iterator[object]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    with moto_kms.moto_kms_server(str(tmp_path / "moto.log")) as server:
        yield server


def aws_deployment(tmp: Path, server: object, endpoint: str, **overrides: object) -> Deployment:
    return Deployment(
        tmp,
        kms_provider="aws",
        aws_kms_key_id=server.key_id,  # type: ignore[attr-defined]
        aws_region=moto_kms.REGION,
        aws_endpoint_url=endpoint,
        **overrides,
    )


AWS_ROOT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def test_kms_outage_cached_tenants_sign_the_rest_dead_letter_then_replay(
    kms: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in AWS_ROOT.items():
        monkeypatch.setenv(name, value)
    proxy = TcpProxy(kms.port)  # type: ignore[attr-defined]
    proxy.start()
    deployment = aws_deployment(
        tmp_path, kms, proxy.url, breaker_fail_max=3, breaker_reset_timeout_seconds=6
    )
    try:
        # Signing on one process (its L1 is the cache under test); key jobs on another.
        deployment.worker("signer", queues=jobs.SIGN_QUEUE, concurrency=1, extra_env=AWS_ROOT)
        deployment.worker("keys", queues=jobs.KEYS_QUEUE, concurrency=1, extra_env=AWS_ROOT)
        cached, uncached = ["c1", "c2"], ["u1", "u2", "u3"]
        with deployment.client() as client:
            for tenant in cached + uncached:
                client.create_keys(tenant, ["signing"], timeout=60)
            for tenant in cached:  # warm the signer's L1
                client.sign(tenant, b"warm-up", timeout=60)

            proxy.stop()  # the KMS is gone
            pending = {
                tenant: [client.submit(tenant, b"%s-%d" % (tenant.encode(), i)) for i in range(10)]
                for tenant in cached + uncached
            }
            for tenant in cached:  # zero errors for cached tenants
                for job in pending[tenant]:
                    job.result(timeout=60)
            for tenant in uncached:  # retried, then dead-lettered: the result says so
                for job in pending[tenant]:
                    with pytest.raises(TenantKeysError, match="dead-lettered"):
                        job.result(timeout=60)
            assert deployment.breaker_state("aws") == "open"

            # The other worker process never called the KMS, yet it sees the breaker open.
            blocked = client.send(jobs.CREATE_KEYS, {"tenant_id": "n1"})
            with pytest.raises(TenantKeysError, match="dead-lettered"):
                client.wait(blocked, 60)
        store = deployment.deadletters()
        entries = store.entries()
        assert {e.tenant_id for e in entries} == {*uncached, "n1"}
        assert len([e for e in entries if e.task == jobs.SIGN]) == 30
        assert all(e.attempts == 4 for e in entries)  # 1 + TENANTKEYS_RETRY_MAX (3)
        n1 = next(e for e in entries if e.tenant_id == "n1")
        assert n1.code == "TK-KMS-CIRCUIT-OPEN" and n1.worker.startswith("keys@")

        proxy.start()  # the KMS is back; the breaker half-opens after its reset timeout
        wait_for(
            lambda: deployment.breaker_state("aws") != "open" or _reset_elapsed(deployment),
            30,
            "the breaker's reset timeout",
        )
        replay = subprocess.run(  # noqa: PLW1510
            [
                sys.executable,
                "-c",
                "import sys; from tenantkeys.cli import main; sys.exit(main())",
                "dlq",
                "replay",
                "--all",
            ],
            env=deployment.env(AWS_ROOT),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert replay.returncode == 0, replay.stderr + replay.stdout
        with deployment.client() as client:  # same job ids: the old results are replaced
            signatures = {
                (tenant, i): job.result(timeout=60)
                for tenant in uncached
                for i, job in enumerate(pending[tenant])
            }
        assert store.depth() == 0
        runtime = deployment.runtime()
        for (tenant, i), signature in signatures.items():
            runtime.service.verify(tenant, b"%s-%d" % (tenant.encode(), i), signature.jws)
        runtime.close()
    finally:
        proxy.stop()
        deployment.stop()


def _reset_elapsed(deployment: Deployment) -> bool:
    import time

    from tenantkeys.keys.runtime import redis_client

    opened = redis_client(deployment.settings).get(
        f"{deployment.prefix}:breaker:aws:pybreaker:opened_at"
    )
    reset = deployment.settings.breaker_reset_timeout_seconds
    return opened is not None and time.time() > int(opened) + reset + 1


def test_permission_error_goes_straight_to_the_dead_letter_store(
    kms: object, tmp_path: Path
) -> None:
    limited = kms.limited  # type: ignore[attr-defined]
    creds = {
        "AWS_ACCESS_KEY_ID": limited.access_key_id,
        "AWS_SECRET_ACCESS_KEY": limited.secret_access_key,
    }
    deployment = aws_deployment(tmp_path, kms, kms.endpoint)  # type: ignore[attr-defined]
    try:
        with kms.enforce_iam():  # type: ignore[attr-defined]
            deployment.worker("w1", queues=jobs.KEYS_QUEUE, concurrency=1, extra_env=creds)
            with deployment.client() as client:
                job = client.send(jobs.CREATE_KEYS, {"tenant_id": "acme"})
                with pytest.raises(KmsPermissionError) as denied:
                    client.wait(job, 60)
        assert denied.value.code == "TK-KMS-ACCESS-DENIED"
        (entry,) = deployment.deadletters().entries()
        assert entry.attempts == 1 and entry.code == "TK-KMS-ACCESS-DENIED"
        assert "kms:GenerateDataKey" in entry.message and "AWS_KMS_SETUP.md" in entry.message
        assert entry.doc and entry.doc.endswith("#tk-kms-access-denied")
        assert "Retry in" not in deployment.log("w1")
        assert deployment.breaker_state("aws") == "closed"
    finally:
        deployment.stop()


def test_a_dead_letter_replayed_through_the_api_answers_its_job_id_with_a_new_signature(
    kms: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's replay forgets the dead-letter result, so the job id answers anew."""
    from fastapi.testclient import TestClient

    from tenantkeys.api import create_app
    from tests.integration.test_api_support import ADMIN, ADMIN_TOKEN, sha256_hex

    admin, limited = kms.admin, kms.limited  # type: ignore[attr-defined]
    for name, value in AWS_ROOT.items():
        monkeypatch.setenv(name, value)
    deployment = aws_deployment(
        tmp_path,
        kms,
        kms.endpoint,  # type: ignore[attr-defined]
        admin_token_sha256=sha256_hex(ADMIN_TOKEN),
    )
    signer_creds = {
        "AWS_ACCESS_KEY_ID": limited.access_key_id,  # kms:DescribeKey only, under IAM
        "AWS_SECRET_ACCESS_KEY": limited.secret_access_key,
    }
    keys_creds = {
        "AWS_ACCESS_KEY_ID": admin.access_key_id,
        "AWS_SECRET_ACCESS_KEY": admin.secret_access_key,
    }
    try:
        deployment.worker("signer", queues=jobs.SIGN_QUEUE, concurrency=1, extra_env=signer_creds)
        deployment.worker("keys", queues=jobs.KEYS_QUEUE, concurrency=1, extra_env=keys_creds)
        with deployment.client() as client:
            client.create_keys("acme", ["signing"], timeout=60)
            with kms.enforce_iam():  # type: ignore[attr-defined]
                pending = client.submit("acme", b"evidence 1", job_id="evidence-1")
                with pytest.raises(KmsPermissionError, match="dead-lettered"):
                    pending.result(timeout=60)
            (entry,) = deployment.deadletters().entries()
            assert entry.job_id == "evidence-1" and entry.code == "TK-KMS-ACCESS-DENIED"

            # IAM is off again (the permission was granted): replay through the ops API.
            with TestClient(create_app(deployment.settings)) as api:
                replayed = api.post("/api/admin/dlq/replay", json={"all": True}, headers=ADMIN)
            assert replayed.status_code == 200, replayed.text
            assert replayed.json() == {"replayed": [entry.id], "failed": []}

            # The same job id now answers with a signature, not the old dead-letter error
            # (waiting only: nothing is sent again from here).
            signature = Signature.from_dict(client.wait("evidence-1", 60))
        assert signature.tenant_id == "acme"
        assert deployment.deadletters().depth() == 0
        runtime = deployment.runtime()
        runtime.service.verify("acme", b"evidence 1", signature.jws)
        runtime.close()
    finally:
        deployment.stop()
