"""The fault suite's deployments: isolated in Redis DB 6 under a private prefix, cleaned by it,
and the operator's dead-letter replay run against them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.harness import Deployment, rabbitmq_vhost

#: Redis database of the fault suite (results, dead letters, queues, under unique prefixes).
FAULT_REDIS_DB = 6
FAULT_REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{FAULT_REDIS_DB}"


def fault_deployment(tmp: Path, broker_url: str | None = None, **overrides: Any) -> Deployment:
    """A :class:`Deployment` in Redis DB 6 under a ``tkfault-`` prefix."""
    values = {"redis_url": FAULT_REDIS_URL, "result_backend": FAULT_REDIS_URL, **overrides}
    made = Deployment(tmp, broker_url=broker_url or values["redis_url"], **values)
    made.prefix = f"tkfault-{uuid.uuid4().hex[:10]}"
    made.values["redis_prefix"] = made.prefix
    return made


def on_broker(broker: str, tmp: Path) -> Iterator[Deployment]:
    """A fault deployment on ``broker`` ("redis", or "rabbitmq" in a vhost of its own), stopped
    and cleaned afterwards: the body of a fixture parametrised over both brokers."""
    if broker == "redis":
        made = fault_deployment(tmp)
        yield made
        made.stop()
        return
    if not port_open("127.0.0.1", 5672):
        service_missing("RabbitMQ at 127.0.0.1:5672")
    with rabbitmq_vhost() as url:
        made = fault_deployment(tmp, broker_url=url)
        yield made
        made.stop()
        cleanup_prefix(made.settings.redis_url, made.prefix)


def cleanup_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()


def replay_all(deployment: Deployment, extra_env: dict[str, str] | None = None) -> str:
    """``tenantkeys dlq replay --all`` as an operator runs it; returns its output."""
    done = subprocess.run(
        [
            os.environ.get("TK_PYTHON", sys.executable),
            "-c",
            "import sys; from tenantkeys.cli import main; sys.exit(main())",
            "dlq",
            "replay",
            "--all",
        ],
        env=deployment.env(extra_env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout
