"""``tenantkeys demo``: a private stack signs payloads through the queue, rotates, verifies.

Everything it writes is private to the run (a temporary store, master key and Redis prefix)
and removed afterwards, so it never touches real data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tenantkeys.cli.stack import LocalStack, stop_on_signals
from tenantkeys.config import ENV_PREFIX, Settings, load_settings
from tenantkeys.errors import TenantKeysError

DEMO_TENANTS = ("acme", "globex", "initech")


def run_demo(base: Settings, payloads: int) -> dict[str, Any]:
    """Start the stack, sign ``payloads`` through the queue, rotate, verify; the summary."""
    workdir = Path(tempfile.mkdtemp(prefix="tenantkeys-demo-"))
    stack = LocalStack(workdir / "logs")
    demo: Settings | None = None
    with stop_on_signals():
        try:
            url = stack.ensure_redis(base)
            overrides = _demo_settings(workdir, url)
            stack.env.update({ENV_PREFIX + k.upper(): str(v) for k, v in overrides.items()})
            demo = load_settings(**overrides)
            stack.start("worker", "worker", "--loglevel=WARNING")
            stack.start("beat", "beat", "--loglevel=WARNING")
            return _run_demo(demo, payloads, stack)
        finally:
            stack.stop()
            if demo is not None:
                _forget_prefix(demo)
            shutil.rmtree(workdir, ignore_errors=True)


def _forget_prefix(demo: Settings) -> None:
    """Delete every Redis key the demo wrote (all under its private prefix)."""
    from tenantkeys.keys.runtime import redis_available, redis_client

    client = redis_client(demo)
    try:
        if redis_available(client):
            for key in client.scan_iter(match=f"{demo.redis_prefix}:*", count=1000):
                client.delete(key)
    finally:
        client.close()


def _demo_settings(workdir: Path, redis_url: str) -> dict[str, Any]:
    """A private store, master key and Redis prefix, so the demo never touches real data."""
    return {
        "environment": "development",
        "kms_provider": "local",
        "database_url": f"sqlite:///{workdir / 'keys.db'}",
        "local_master_key_file": workdir / "master.key",
        "dead_letter_key_file": workdir / "deadletter.key",
        "data_dir": workdir,
        "redis_url": redis_url,
        "broker_url": redis_url,
        "result_backend": redis_url,
        "redis_prefix": f"tkdemo-{uuid.uuid4().hex[:8]}",
    }


def _run_demo(demo: Settings, count: int, stack: LocalStack) -> dict[str, Any]:
    from tenantkeys.client import SigningClient
    from tenantkeys.keys.runtime import build_runtime

    with SigningClient.from_settings(demo) as client:
        # The first job also waits for the worker to start.
        for tenant in DEMO_TENANTS:
            client.create_keys(tenant, ["signing"], timeout=120)
        data = [
            (DEMO_TENANTS[i % 3], json.dumps({"invoice": i, "amount": i * 7}).encode())
            for i in range(count)
        ]
        started = time.perf_counter()
        pending = [client.submit(tenant, payload) for tenant, payload in data]
        signatures = [p.result(timeout=120) for p in pending]
        elapsed = time.perf_counter() - started
        rotation = client.rotate_key(DEMO_TENANTS[0], "signing")
        after = client.sign(DEMO_TENANTS[0], b"signed after the rotation", timeout=60)
    if stack.failed():
        raise TenantKeysError(f"a demo process exited early; see {stack.log_dir}")
    runtime = build_runtime(demo, migrate=False)
    try:
        for (tenant, payload), signature in zip(data, signatures, strict=True):
            runtime.service.verify(tenant, payload, signature.jws)
        runtime.service.verify(DEMO_TENANTS[0], b"signed after the rotation", after.jws)
    finally:
        runtime.close()
    old_kid = next(
        s.kid for (t, _), s in zip(data, signatures, strict=True) if t == DEMO_TENANTS[0]
    )
    if not rotation["rotated"] or old_kid == after.kid:
        raise TenantKeysError("the demo rotation did not produce a new key")
    digest = hashlib.sha256("".join(s.jws for s in signatures).encode()).hexdigest()[:16]
    return {
        "tenants": list(DEMO_TENANTS),
        "signed_through_queue": len(signatures),
        "seconds": round(elapsed, 2),
        "jobs_per_second": round(len(signatures) / elapsed, 1),
        "rotated": {"tenant": DEMO_TENANTS[0], "old_kid": old_kid, "new_kid": after.kid},
        "verified": len(signatures) + 1,
        "signatures_digest": digest,
        "result": "ok",
    }
