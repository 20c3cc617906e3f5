"""``tenantkeys.admin.status`` against real services: queue depth read from Redis and RabbitMQ, the
state probe behind ``/metrics``, and readiness naming Redis when it is gone."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tenantkeys import jobs
from tenantkeys.admin.status import StatusSources, collect_status, state_probe
from tenantkeys.api import create_app
from tenantkeys.client import SigningClient
from tenantkeys.config import Settings, load_settings
from tenantkeys.keys.runtime import build_runtime
from tenantkeys.queue.broker import BrokerProbe
from tests.conftest import free_port, port_open, service_missing

pytestmark = pytest.mark.integration
#: The API tests' fixtures: api_redis_url (own Redis DB), api_prefix, api_overrides, api_settings.
pytest_plugins = ["tests.integration.test_api_support"]


def test_redis_queue_depth_counts_published_jobs(api_settings: Settings) -> None:
    probe = BrokerProbe.from_settings(api_settings)
    try:
        assert probe.queue_depths() == dict.fromkeys(jobs.QUEUES, 0)
        with SigningClient.from_settings(api_settings) as client:  # no worker: jobs wait
            for n in range(3):
                client.submit("acme", f"payload {n}".encode())
            client.send(jobs.ROTATION_SWEEP, {})
        assert probe.queue_depths() == {
            "tenantkeys.sign": 3,
            "tenantkeys.keys": 0,
            "tenantkeys.maintenance": 1,
        }
    finally:
        probe.close()


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A RabbitMQ vhost of our own, deleted afterwards."""
    if not port_open("127.0.0.1", 5672) or shutil.which("rabbitmqctl") is None:
        service_missing("RabbitMQ at 127.0.0.1:5672 with rabbitmqctl")
    vhost = f"tkapi-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], check=False, capture_output=True)


def test_amqp_queue_depth_reads_message_counts(amqp_url: str) -> None:
    from kombu import Connection, Exchange, Queue

    probe = BrokerProbe(amqp_url, {})
    probe.ping()
    assert probe.queue_depths() == dict.fromkeys(jobs.QUEUES, 0)  # not declared yet: 0
    exchange = Exchange(jobs.EXCHANGE, type="direct")
    queue = Queue(jobs.SIGN_QUEUE, exchange, routing_key=jobs.SIGN_QUEUE)
    with Connection(amqp_url) as conn:
        producer = conn.Producer()
        for n in range(4):
            producer.publish(
                {"n": n},
                exchange=exchange,
                routing_key=jobs.SIGN_QUEUE,
                declare=[queue],
                serializer="json",
            )
    depths = wait_depth(probe, 4)
    assert depths == {"tenantkeys.sign": 4, "tenantkeys.keys": 0, "tenantkeys.maintenance": 0}


def wait_depth(probe: BrokerProbe, expected: int) -> dict[str, int]:
    for _ in range(50):  # RabbitMQ's message_count follows the publish closely, not instantly
        depths = probe.queue_depths()
        if depths[jobs.SIGN_QUEUE] == expected:
            return depths
        time.sleep(0.1)
    return probe.queue_depths()


def test_state_probe_reads_every_shared_gauge(api_settings: Settings) -> None:
    runtime = build_runtime(api_settings)
    sources = StatusSources.of(runtime)
    try:
        empty = state_probe(sources)
        assert empty.last_sweep_timestamp is None and empty.oldest_active_key_age_seconds is None
        runtime.service.create_keys("acme")
        runtime.redis.set(sources.sweep.last_run_key, "1700000000.5")
        state = state_probe(sources)
    finally:
        sources.close()
        runtime.close()
    assert state.last_sweep_timestamp == 1700000000.5
    assert state.keys_overdue_rotation == 0
    assert state.oldest_active_key_age_seconds is not None
    assert state.oldest_active_key_age_seconds >= 0
    assert state.dead_letter_depth == 0 and state.dead_letter_oldest_age_seconds == 0.0
    assert state.breaker_states == {"local": "closed"}
    assert state.queue_depths == dict.fromkeys(jobs.QUEUES, 0)


def test_redis_gone_is_named_by_readiness_and_status(api_overrides: dict[str, Any]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = load_settings(
        **{**api_overrides, "redis_url": dead, "broker_url": dead, "result_backend": dead}
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/health/ready")
        body = response.json()
        assert response.status_code == 503, body
        assert {"redis", "broker"} <= set(body["failing"])
        assert body["checks"]["database"]["status"] == "UP"
        assert body["checks"]["redis"]["code"] == "TK-CACHE-UNAVAILABLE"
        assert body["checks"]["broker"]["code"] == "TK-BROKER-UNAVAILABLE"
        assert body["error"]["code"] in ("TK-BROKER-UNAVAILABLE", "TK-CACHE-UNAVAILABLE")
        assert dead not in response.text  # connection details stay in the log
        status = collect_status(client.app.state.services.sources())  # type: ignore[attr-defined]
    assert status["rotation"] is not None  # the store still answers
    assert status["dead_letters"] is None and status["queues"] is None
    assert status["errors"]["dead_letters"].startswith("TK-CACHE-UNAVAILABLE")
