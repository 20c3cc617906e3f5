"""``tenantkeys demo``: a private stack signs payloads through the queue, rotates, verifies.

Everything it writes is private to the run (a temporary store, master key, and a Redis
database that was empty, claimed for the run) and removed afterwards, so it never touches real
data: Celery's queue keys carry no prefix, so sharing a database with a deployment would share
its queues.
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
from tenantkeys.config.urls import masked_url
from tenantkeys.errors import ErrorCode, TenantKeysError

DEMO_TENANTS = ("acme", "globex", "initech")


def run_demo(base: Settings, payloads: int) -> dict[str, Any]:
    """Start the stack, sign ``payloads`` through the queue, rotate, verify; the summary."""
    workdir = Path(tempfile.mkdtemp(prefix="tenantkeys-demo-"))
    stack = LocalStack(workdir / "logs")
    demo: Settings | None = None
    with stop_on_signals():
        try:
            url = stack.ensure_redis(base)
            url = _claim_empty_database(url, base)
            overrides = _demo_settings(workdir, url)
            stack.env.update({ENV_PREFIX + k.upper(): str(v) for k, v in overrides.items()})
            demo = load_settings(**overrides)
            stack.start("worker", "worker", "--loglevel=WARNING")
            stack.start("beat", "beat", "--loglevel=WARNING")
            return _run_demo(demo, payloads, stack)
        finally:
            stack.stop()
            if demo is not None:
                _forget_database(demo)
            shutil.rmtree(workdir, ignore_errors=True)


#: Claims a database for the demo only if it is empty, in one atomic step.
_CLAIM = """
if redis.call('DBSIZE') ~= 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
_CLAIM_SECONDS = 3600


def _claim_empty_database(url: str, base: Settings) -> str:
    """The URL of an empty database on the Redis of ``url``, claimed for this run: the URL's
    own database if empty, else the highest-numbered empty one. ``TK-CONFIG-INVALID`` when
    none is empty (the demo would share a deployment's queues)."""
    from urllib.parse import urlsplit, urlunsplit

    import redis

    from tenantkeys.keys.runtime import redis_from_url

    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise TenantKeysError(
            "the demo needs a redis:// URL (it claims an empty database of its own)",
            code=ErrorCode.CONFIG_INVALID,
        )
    own = int(parts.path.strip("/") or 0)
    marker = f"tkdemo:claim:{uuid.uuid4().hex[:8]}"
    for number in (own, *range(15, -1, -1)):
        candidate = urlunsplit(parts._replace(path=f"/{number}"))
        client = redis_from_url(candidate, sentinel_master=base.redis_sentinel_master, timeout=5)
        try:
            if client.eval(_CLAIM, 1, marker, "demo", _CLAIM_SECONDS):
                return candidate
        except redis.ResponseError as exc:  # a server with fewer databases
            if "out of range" not in str(exc):
                raise
        finally:
            client.close()
    raise TenantKeysError(
        f"no empty Redis database at {masked_url(url)} for the demo: it would share a "
        "deployment's queues; point TENANTKEYS_REDIS_URL at a Redis with an empty database",
        code=ErrorCode.CONFIG_INVALID,
    )


def _forget_database(demo: Settings) -> None:
    """Flush the database the demo claimed: it was empty, and only the demo wrote to it."""
    from tenantkeys.keys.runtime import redis_available, redis_client

    client = redis_client(demo)
    try:
        if redis_available(client):
            client.flushdb()
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
