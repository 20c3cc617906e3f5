"""The broker probe: is the broker up, how deep is each queue, does a worker answer a ping.

Used by readiness checks, the status report, the shared-state gauges of ``/metrics`` and the
worker's readiness probe (``tenantkeys worker-ready``). Reads only: it never publishes a job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import redis

from tenantkeys import jobs
from tenantkeys.config import Settings
from tenantkeys.errors import ErrorCode, TenantKeysError, TransientError
from tenantkeys.keys.runtime import redis_from_url
from tenantkeys.queue.config import celery_config
from tenantkeys.queue.migrate import queue_keys

#: Broker URL schemes read with Redis LLEN; the AMQP ones with a passive queue_declare.
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")
_AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
#: Broker reads must answer well inside a Prometheus scrape timeout (10 s by default).
BROKER_TIMEOUT_SECONDS = 2.0


class BrokerProbe:
    """Reads the broker (Redis or RabbitMQ): is it up, and how many messages wait per queue."""

    def __init__(self, broker_url: str, transport_options: Mapping[str, Any]) -> None:
        self.broker_url = broker_url
        self._options = dict(transport_options)
        self._redis: redis.Redis | None = None
        if broker_url.startswith(_REDIS_SCHEMES):
            self._redis = redis_from_url(
                broker_url,
                sentinel_master=str(self._options.get("master_name", "")),
                timeout=BROKER_TIMEOUT_SECONDS,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerProbe:
        config = celery_config(settings)
        return cls(config["broker_url"], config["broker_transport_options"])

    def ping(self) -> None:
        """Raise unless the broker accepts a connection now."""
        if self._redis is not None:
            self._redis.ping()
            return
        with self._amqp() as conn:
            conn.ensure_connection(max_retries=1)

    def _amqp(self) -> Any:
        from kombu.connection import Connection

        return Connection(self.broker_url, connect_timeout=BROKER_TIMEOUT_SECONDS)  # type: ignore[no-untyped-call]

    def queue_depths(self) -> dict[str, int]:
        """Depth of every queue of :data:`tenantkeys.jobs.QUEUES`; raises if the broker is down."""
        if self._redis is not None:
            return self._read_redis(self._redis)
        if self.broker_url.startswith(_AMQP_SCHEMES):
            return self._read_amqp()
        raise TenantKeysError(f"queue depth is not supported for broker {self.scheme!r}")

    @property
    def scheme(self) -> str:
        return self.broker_url.partition("://")[0]

    def _read_redis(self, client: redis.Redis) -> dict[str, int]:
        # kombu keeps one list per priority step: "{queue}" and "{queue}\x06\x16{n}".
        keys = {queue: queue_keys(queue) for queue in jobs.QUEUES}
        pipe = client.pipeline(transaction=False)
        for names in keys.values():
            for name in names:
                pipe.llen(name)
        sizes = iter(pipe.execute())
        return {queue: sum(int(next(sizes)) for _ in names) for queue, names in keys.items()}

    def _read_amqp(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        with self._amqp() as conn:
            for queue in jobs.QUEUES:
                channel = conn.channel()
                try:
                    depths[queue] = int(channel.queue_declare(queue=queue, passive=True)[1])
                except conn.channel_errors as exc:
                    if getattr(exc, "code", None) != 404:
                        raise
                    depths[queue] = 0  # never declared: no worker started yet, nothing waits
                finally:
                    with contextlib.suppress(Exception):  # already closed by a 404
                        channel.close()
        return depths

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


def ping_worker(config: Settings, hostname: str | None, timeout: float) -> str | None:
    """The node name if the worker answered a Celery ping within ``timeout`` seconds.

    ``hostname`` is the worker's node name as given to ``tenantkeys worker --hostname``
    (default: ``celery@<this host>``, the worker's own default). ``TK-BROKER-UNAVAILABLE``
    when the broker cannot be reached.
    """
    from celery import Celery
    from celery.utils.nodenames import default_nodename, host_format
    from kombu.exceptions import OperationalError

    node = host_format(default_nodename(hostname))
    app = Celery("tenantkeys-probe", set_as_current=False)
    app.conf.update(celery_config(config))
    app.conf.broker_connection_timeout = timeout
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=timeout)
            replies = app.control.ping(destination=[node], timeout=timeout, connection=conn)
    except (OperationalError, OSError) as exc:
        raise TransientError(
            f"the broker cannot be reached ({type(exc).__name__})",
            code=ErrorCode.BROKER_UNAVAILABLE,
        ) from exc
    finally:
        app.close()
    answered = any(node in reply for reply in replies or [])
    return node if answered else None
