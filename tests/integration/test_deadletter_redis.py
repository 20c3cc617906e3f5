"""The dead-letter store and the shared breaker against a real Redis (database 12)."""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from tenantkeys import jobs
from tenantkeys.errors import CircuitOpenError, TransientKmsError
from tenantkeys.jobs.deadletters import ArgumentSealer, DeadLetterStore, SealedJob
from tenantkeys.resilience import Resilience
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing

pytestmark = pytest.mark.integration
DB = 12


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    prefix = f"tkdl-{uuid.uuid4().hex[:10]}"
    conn = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=DB)
    conn.tk_prefix = prefix  # type: ignore[attr-defined]
    yield conn
    for key in conn.scan_iter(match=f"{prefix}:*", count=1000):
        conn.delete(key)
    conn.close()


def test_concurrent_replays_publish_each_entry_exactly_once(client: redis.Redis) -> None:
    prefix = client.tk_prefix  # type: ignore[attr-defined]
    sealer = ArgumentSealer(os.urandom(32))
    store = DeadLetterStore(client, prefix, sealer)
    ids = []
    for i in range(200):
        kwargs = {"tenant_id": f"t{i % 7}", "payload": jobs.encode_payload(b"p%d" % i)}
        entry = store.add(
            task=jobs.SIGN,
            job_id=f"job-{i}",
            kwargs=kwargs,
            arguments=jobs.redact(kwargs),
            error=TransientKmsError("down"),
            attempts=6,
            worker="w",
        )
        ids.append(entry.id)
    published: Counter[str] = Counter()
    lock = threading.Lock()

    def publish(job: SealedJob) -> None:
        with lock:
            published[job.entry.job_id] += 1

    def replayer() -> None:
        own = DeadLetterStore(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=DB), prefix, sealer)
        own.replay(list(ids), publish)

    threads = [threading.Thread(target=replayer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(published) == sorted(f"job-{i}" for i in range(200))
    assert set(published.values()) == {1}
    assert store.depth() == 0
    assert client.zcard(f"{prefix}:dlq:replaying") == 0


def test_entries_survive_a_new_client(client: redis.Redis) -> None:
    prefix = client.tk_prefix  # type: ignore[attr-defined]
    sealer = ArgumentSealer(os.urandom(32))
    kwargs = {"tenant_id": "acme", "payload": jobs.encode_payload(b"x")}
    entry = DeadLetterStore(client, prefix, sealer).add(
        task=jobs.SIGN,
        job_id="j",
        kwargs=kwargs,
        arguments=jobs.redact(kwargs),
        error=TransientKmsError("down"),
        attempts=1,
        worker="w",
    )
    fresh = DeadLetterStore(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=DB), prefix, sealer)
    assert fresh.get(entry.id).job_id == "j"
    assert fresh.depth() == 1 and (fresh.oldest_age() or 0) >= 0


def test_breaker_state_is_shared_through_redis(client: redis.Redis) -> None:
    prefix = client.tk_prefix  # type: ignore[attr-defined]
    one = Resilience(client, prefix, fail_max=2, reset_timeout=60)
    two = Resilience(
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=DB), prefix, fail_max=2, reset_timeout=60
    )

    def failing() -> None:
        raise TransientKmsError("down")

    for _ in range(2):
        with pytest.raises(TransientKmsError):
            one.call("aws", failing)
    with pytest.raises(CircuitOpenError):
        two.call("aws", lambda: None)
    assert two.state("aws") == "open"
    assert client.exists(f"{prefix}:breaker:aws:pybreaker:state")
