"""TENANTKEYS_BROKER_QUEUE_TYPE: what the Celery settings become (no broker needed).

The behaviour on real RabbitMQ (a three-node cluster losing its leader, delayed retries in
RabbitMQ, queues of another type refused) is in tests/e2e/faults/test_rabbitmq_cluster.py.
"""

from __future__ import annotations

import pytest
from amqp.exceptions import MessageNacked, PreconditionFailed

from tenantkeys import jobs
from tenantkeys.config import load_settings
from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.queue import config

pytestmark = pytest.mark.unit

CLUSTER = "amqp://u:p@n1:5672//;amqp://u:p@n2:5672//;amqp://u:p@n3:5672//"


def test_classic_is_the_default_and_keeps_celery_s_behaviour() -> None:
    conf = config.celery_config(load_settings(broker_url="amqp://u:p@h:5672//"))
    assert conf["task_default_queue_type"] == "classic"
    assert conf["task_default_exchange_type"] == "direct"
    assert all(q.queue_arguments is None for q in conf["task_queues"])
    assert "confirm_publish" not in conf["broker_transport_options"]
    assert conf["task_publish_retry_policy"]["max_retries"] == 3  # Celery's default


def test_quorum_declares_quorum_queues_on_a_topic_exchange_with_confirms() -> None:
    conf = config.celery_config(load_settings(broker_url=CLUSTER, broker_queue_type="quorum"))
    assert [q.name for q in conf["task_queues"]] == list(jobs.QUEUES)
    for queue in conf["task_queues"]:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.exchange.type == "topic"  # native delayed delivery needs it
        assert queue.routing_key == queue.name
    assert conf["task_default_queue_type"] == "quorum"
    assert conf["worker_detect_quorum_queues"] is True
    assert conf["broker_transport_options"]["confirm_publish"] is True
    assert conf["task_publish_retry_policy"]["errback"] is config.pause_after_nack


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "amqp://u:p@n1//;redis://127.0.0.1:6379/0"]
)
def test_quorum_needs_rabbitmq_everywhere_in_the_url(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        config.celery_config(load_settings(broker_url=url, broker_queue_type="quorum"))
    assert refused.value.code == ErrorCode.CONFIG_INVALID
    assert "TENANTKEYS_BROKER_QUEUE_TYPE=quorum needs RabbitMQ" in str(refused.value)


def test_an_unknown_queue_type_is_refused_at_load() -> None:
    with pytest.raises(ConfigurationError):
        load_settings(broker_queue_type="stream")


@pytest.mark.parametrize(
    ("queue_type", "seconds", "expected"),
    [
        ("quorum", 0.2, 1.0),  # RabbitMQ's delay queues refuse less than a second
        ("quorum", 1.4, 2.0),
        ("quorum", 3.0, 3.0),
        ("quorum", None, None),
        ("quorum", 0, 0),
        ("classic", 0.2, 0.2),  # the worker holds it to its ETA, to the millisecond
    ],
)
def test_broker_countdown(queue_type: str, seconds: float | None, expected: float | None) -> None:
    assert config.broker_countdown(queue_type, seconds) == expected


def test_precondition_failed_becomes_tk_broker_queue_type() -> None:
    exc = PreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'tenantkeys.sign'"
    )
    error = config.queue_type_refused(exc, "quorum")
    assert error is not None and error.code == ErrorCode.BROKER_QUEUE_TYPE
    assert "inequivalent arg 'x-queue-type'" in str(error) and "new vhost" in str(error)
    assert error.one_line().endswith("(see docs/setup/KMS_TROUBLESHOOTING.md#tk-broker-queue-type)")
    assert config.queue_type_refused(OSError("refused"), "quorum") is None


def test_a_nacked_publish_pauses_before_the_next_try(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(config.time, "sleep", slept.append)
    config.pause_after_nack(MessageNacked(), 0)
    config.pause_after_nack(ConnectionRefusedError(), 0)  # kombu's own interval applies
    assert slept == [config.NACK_PAUSE_SECONDS]


def test_the_worker_sets_up_delay_queues_through_one_node_not_every_node() -> None:
    """Celery's step (which retries a dead node ~15 s per reconnect) is replaced by ours; an
    upgrade that renames Celery's step fails here instead of running both."""
    from celery.worker.consumer import Consumer

    from workers import delayed_delivery
    from workers.consumer import DeadLetterConsumer

    assert delayed_delivery.CELERY_STEP in Consumer.Blueprint.default_steps
    steps = DeadLetterConsumer.Blueprint.default_steps
    assert delayed_delivery.STEP in steps and delayed_delivery.CELERY_STEP not in steps
