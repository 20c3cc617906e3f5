"""Must-show 2: a real Celery worker signs continuously while ``keys rewrap`` moves its keys.

From ``local`` to ``vault`` (OpenBao) and from ``aws`` (moto) to ``gcp`` (the gRPC stand-in,
reached by the worker through ``TENANTKEYS_GCP_ENDPOINT=insecure://127.0.0.1:PORT``). The
workers run with the new provider current and the old one as previous, as the runbook says.
The rewrap runs in stages (``--limit``) and then to the end, each stage while jobs keep
flowing, so workers sign against a store where some keys moved and others did not. Then the
old provider is taken away, a worker without it signs for every tenant, and every signature
made before, during and after the move verifies.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from tenantkeys.client import SigningClient
from tenantkeys.config import load_settings
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.runtime import build_runtime
from tenantkeys.signing import Signature
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.harness import Deployment, wait_for
from tests.servers.fixtures import ProviderFactory

pytestmark = pytest.mark.e2e
TENANTS = [f"shop-{i:02d}" for i in range(20)]
STAGE_ROWS = 10
JOBS_PER_STAGE = 40


class ContinuousSigner:
    """Keeps a window of signing jobs in flight from a thread; records every outcome."""

    def __init__(self, client: SigningClient, window: int = 16) -> None:
        self.client = client
        self.window = window
        self.signed: list[tuple[str, bytes, Signature]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="signer", daemon=True)

    def __enter__(self) -> ContinuousSigner:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the signer did not stop"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.signed) + len(self.errors)

    def wait_for_more(self, jobs: int) -> None:
        """Return once ``jobs`` more jobs have finished (bounded)."""
        target = self.count + jobs
        wait_for(lambda: self.count >= target or self.errors, 120, f"{jobs} more signatures")

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            batch = []
            for _ in range(self.window):
                tenant = TENANTS[number % len(TENANTS)]
                payload = json.dumps({"tenant": tenant, "job": number}).encode()
                batch.append((tenant, payload, self.client.submit(tenant, payload)))
                number += 1
            for tenant, payload, pending in batch:
                try:
                    signature = pending.result(timeout=60)
                except Exception as exc:  # every failure is a finding, whatever its kind
                    with self._lock:
                        self.errors.append(f"{tenant}: {type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.signed.append((tenant, payload, signature))


def provider_settings(factory: ProviderFactory, name: str, tmp: Path) -> dict[str, Any]:
    """Settings (field names) that reach provider ``name``'s loopback server from any process."""
    if name == "local":
        return {"local_master_key_file": str(tmp / "master.key")}
    factory(name)  # puts the server's credentials (VAULT_TOKEN, AWS_*) in the environment
    server = factory.server(name)
    if name == "vault":
        return {"vault_addr": server.addr, "vault_key_name": server.key_name}
    if name == "aws":
        return {
            "aws_kms_key_id": server.key_id,
            "aws_region": "us-east-1",
            "aws_endpoint_url": server.endpoint,
        }
    assert name == "gcp"
    return {"gcp_key_name": server.key_name, "gcp_endpoint": f"insecure://{server.target}"}


@pytest.fixture
def redis_available() -> None:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")


def rewrap(deployment: Deployment, target: str, *args: str) -> dict[str, Any]:
    """``tenantkeys keys rewrap`` in its own process, with the workers' settings."""
    done = subprocess.run(
        [sys.executable, "-m", "tenantkeys", "keys", "rewrap", "--to", target, *args],
        env=deployment.env(),
        cwd=deployment.tmp,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


@pytest.mark.parametrize(("source", "target"), [("local", "vault"), ("aws", "gcp")])
def test_workers_keep_signing_while_keys_move(
    source: str,
    target: str,
    provider_factory: ProviderFactory,
    redis_available: None,
    tmp_path: Path,
) -> None:
    deployment = Deployment(
        tmp_path,
        kms_provider=target,
        previous_kms_provider=source,
        **provider_settings(provider_factory, source, tmp_path),
        **provider_settings(provider_factory, target, tmp_path),
    )
    try:
        _migrate_under_load(deployment, source, target, provider_factory)
    finally:
        deployment.stop()


def _migrate_under_load(
    deployment: Deployment, source: str, target: str, factory: ProviderFactory
) -> None:
    # Before: every key wrapped by the old provider, as the old deployment left them.
    before = build_runtime(
        load_settings(**{**deployment.values, "kms_provider": source, "previous_kms_provider": ""})
    )
    old: list[tuple[str, bytes, str]] = []
    secrets: list[tuple[str, bytes]] = []
    for tenant in TENANTS:
        before.service.create_keys(tenant)
        old.append((tenant, b"signed before", before.service.sign(tenant, b"signed before").jws))
        secrets.append((tenant, before.service.encrypt(tenant, tenant.encode())))
    before.close()
    rows = 2 * len(TENANTS)

    first_worker = deployment.worker("w1", concurrency=2)
    with deployment.client() as client, ContinuousSigner(client) as signer:
        signer.wait_for_more(JOBS_PER_STAGE)  # warm: L1 and L2 hold the old wrapped keys
        moved = 0
        while moved < rows:  # staged, each stage while jobs flow, then resumed
            stage = rewrap(deployment, target, "--limit", str(STAGE_ROWS), "--batch-size", "4")
            assert stage["failed"] == 0 and stage["rewrapped"] == STAGE_ROWS, stage
            moved += stage["rewrapped"]
            signer.wait_for_more(JOBS_PER_STAGE)
        final = rewrap(deployment, target)  # nothing left: the resumed run finds it all done
        signer.wait_for_more(JOBS_PER_STAGE)
    assert signer.errors == []
    assert (final["rewrapped"], final["already_done"], final["complete"]) == (0, rows, True)
    assert deployment.deadletters().depth() == 0
    assert not re.search(r"\] retry: ", deployment.log("w1"))  # not even a retried job

    # The old provider goes away; a worker configured without it signs for every tenant.
    Deployment.kill(first_worker)
    gone: AbstractContextManager[None] = nullcontext()
    if source == "local":
        (deployment.tmp / "master.key").rename(deployment.tmp / "master.key.retired")
    else:
        gone = factory.outage(source)
    with gone:
        deployment.worker("w2", concurrency=1, extra_env={"TENANTKEYS_PREVIOUS_KMS_PROVIDER": ""})
        after = build_runtime(load_settings(**{**deployment.values, "previous_kms_provider": ""}))
        with deployment.client() as client:
            late = [(t, b"after", client.sign(t, b"after", timeout=60)) for t in TENANTS]
        for tenant in TENANTS:
            for purpose in Purpose:
                row = after.service.store.active(tenant, purpose)
                assert row is not None and row.provider == target
        for tenant, blob in secrets:
            assert after.service.decrypt(tenant, blob) == tenant.encode()
        for tenant, payload, jws in old:
            after.service.verify(tenant, payload, jws)
        for tenant, payload, signature in [*signer.signed, *late]:
            after.service.verify(tenant, payload, signature.jws)
        after.close()
    assert len(signer.signed) >= JOBS_PER_STAGE * (rows // STAGE_ROWS + 2)


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The workers get their settings from the deployment only, never from this shell."""
    for name in list(os.environ):
        if name.startswith("TENANTKEYS_"):
            monkeypatch.delenv(name)
    yield
