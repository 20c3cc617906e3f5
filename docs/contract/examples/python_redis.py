"""Sign through tenantkeys over a Redis broker with redis-py alone (no Celery, no kombu).

    python python_redis.py BROKER_URL RESULT_URL TENANT FILE [FILE ...]

Sends each file as a ``tenantkeys.sign`` job, then all of them as one ``tenantkeys.sign_batch``
job (its ``items`` form, JSON) and as one compact ``tenantkeys.sign_batch`` (raw bytes in
msgpack), and prints one JSON line per job: its task name, ``job_id`` and the stored result
(``status``, ``result``, ``task_id``...). A job is kombu's Redis envelope around the Celery
message, pushed with LPUSH onto the list named after the queue; its result is the JSON string at
``celery-task-meta-<job id>`` in the result backend's Redis database.
``pip install redis msgpack``.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import redis
from celery_message import (
    TaskMessage,
    compact_batch_job,
    sign_job,
    task_message,
    wait_result,
)


def redis_envelope(message: TaskMessage) -> str:
    """The message as kombu's Redis transport stores it: one JSON document per list item.

    The body travels base64 inside it, JSON or msgpack alike (``content-type`` says which:
    ``application/json`` with ``utf-8``, ``application/x-msgpack`` with ``binary``).
    ``delivery_tag`` must be unique: the worker records an unacked message under it.
    ``properties`` comes last, as kombu writes it.
    """
    return json.dumps(
        {
            "body": base64.b64encode(message.body).decode("ascii"),
            "content-encoding": message.content_encoding,
            "content-type": message.content_type,
            "headers": message.headers,
            "properties": {
                **message.properties,
                # The default exchange: the routing key is the queue's name (as Celery sends).
                "delivery_info": {"exchange": "", "routing_key": message.queue},
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def publish(broker: redis.Redis, message: TaskMessage) -> None:
    """Queue the job: LPUSH onto the queue's list (workers take from its other end)."""
    broker.lpush(message.queue, redis_envelope(message))


def main(broker_url: str, result_url: str, tenant: str, *files: str) -> None:
    payloads = [Path(name).read_bytes() for name in files]
    jobs = [task_message("tenantkeys.sign", sign_job(tenant, data)) for data in payloads]
    items = [sign_job(tenant, data) for data in payloads]
    jobs.append(task_message("tenantkeys.sign_batch", {"items": items}))
    compact = compact_batch_job(tenant, payloads)
    jobs.append(task_message("tenantkeys.sign_batch", compact, binary=True))
    broker, results = redis.Redis.from_url(broker_url), redis.Redis.from_url(result_url)
    for job in jobs:
        publish(broker, job)
    for job in jobs:
        found: dict[str, Any] = wait_result(results.get, job.job_id)
        print(json.dumps({"task": job.headers["task"], "job_id": job.job_id, **found}))


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
