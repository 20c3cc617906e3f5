"""Sign through tenantkeys over RabbitMQ with pika alone (no Celery, no kombu).

    python python_amqp.py AMQP_URL RESULT_URL TENANT FILE [FILE ...]

Sends each file as a ``tenantkeys.sign`` job, then all of them as one ``tenantkeys.sign_batch``
job (its ``items`` form, JSON) and as one compact ``tenantkeys.sign_batch`` (raw bytes in
msgpack), and prints one JSON line per job: its task name, ``job_id`` and the stored result
(``status``, ``result``, ``task_id``...). A job is published to the exchange ``tenantkeys`` with
the queue's name as routing key; the Celery headers travel as AMQP headers, the body (JSON, or
msgpack for the compact sign_batch) as the message body. Results are read from the Redis result
backend (``celery-task-meta-<job id>``).
``pip install pika redis msgpack``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pika
import redis
from celery_message import (
    EXCHANGE,
    TaskMessage,
    compact_batch_job,
    sign_job,
    task_message,
    wait_result,
)


def properties(message: TaskMessage) -> pika.BasicProperties:
    """AMQP properties of the job; Celery's headers are its application headers."""
    headers = dict(message.headers)
    if "enqueued_at" in headers:  # pika encodes no float in a header table; a string works too
        headers["enqueued_at"] = f"{headers['enqueued_at']:.6f}"
    return pika.BasicProperties(
        content_type=message.content_type,  # application/json, or application/x-msgpack
        content_encoding=message.content_encoding,  # utf-8, or binary
        headers=headers,
        correlation_id=message.job_id,
        delivery_mode=message.properties["delivery_mode"],
        priority=message.properties["priority"],
    )


def publish(channel: Any, message: TaskMessage) -> None:
    """Publish the job; raises if RabbitMQ did not take it (no queue bound, or a nack).

    ``channel`` has publisher confirms on; ``mandatory`` returns a job no queue is bound for
    (no worker has declared the queues yet) instead of dropping it.
    """
    channel.basic_publish(
        exchange=EXCHANGE,
        routing_key=message.queue,
        body=message.body,
        properties=properties(message),
        mandatory=True,
    )


def main(amqp_url: str, result_url: str, tenant: str, *files: str) -> None:
    payloads = [Path(name).read_bytes() for name in files]
    jobs = [task_message("tenantkeys.sign", sign_job(tenant, data)) for data in payloads]
    items = [sign_job(tenant, data) for data in payloads]
    jobs.append(task_message("tenantkeys.sign_batch", {"items": items}))
    compact = compact_batch_job(tenant, payloads)
    jobs.append(task_message("tenantkeys.sign_batch", compact, binary=True))
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for job in jobs:
            publish(channel, job)
    finally:
        connection.close()
    results = redis.Redis.from_url(result_url)
    for job in jobs:
        found: dict[str, Any] = wait_result(results.get, job.job_id)
        print(json.dumps({"task": job.headers["task"], "job_id": job.job_id, **found}))


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
