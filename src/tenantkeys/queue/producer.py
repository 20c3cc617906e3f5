"""The producer side of the queue: publish jobs by task name, read and forget their results.

:class:`Producer` is all that :mod:`tenantkeys.client` (and the dead-letter replay) need from
Celery: it builds a Celery app from :func:`~tenantkeys.queue.config.celery_config`, publishes
jobs with redacted ``argsrepr``/``kwargsrepr`` and the enqueue-time header, and turns broker
and result-backend failures into ``TK-BROKER-UNAVAILABLE``. Jobs are sent by name, so a
producer installs ``tenantkeys`` only, never the workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.exceptions import BatchPublishError, OperationalError

from tenantkeys.config import Settings
from tenantkeys.errors import ErrorCode, TransientError
from tenantkeys.jobs import contract, messages
from tenantkeys.queue.config import celery_config, queue_type_refused
from tenantkeys.queue.message_signing import binary_serializer, setup_message_signing
from tenantkeys.queue.tracing import instrument_celery

#: Messages :meth:`Producer.publish_many` buffers before one pipelined write to Redis: large
#: enough to amortise the round trip, small enough (~2 MB of 1 KB payloads) to bound memory.
PUBLISH_BATCH = 1_000
#: What a broker or result-store failure looks like from here.
#: kombu raises BatchPublishError when a pipelined batch fails part way (delivery uncertain).
_UNREACHABLE = (OperationalError, BatchPublishError, redis.RedisError, OSError)


class PollingRedisBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend without the subscription it opens for every job sent.

    ``send_task`` asks the Redis backend to SUBSCRIBE to the job's result channel (and the
    returned ``AsyncResult`` UNSUBSCRIBEs when collected): two round trips per job. This
    producer waits by polling the stored result, so it never reads that subscription;
    ``AsyncResult.get`` still works, because it subscribes (and reads what was already
    stored) when called.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


class PollingSentinelBackend(SentinelBackend):  # type: ignore[misc]
    """:class:`PollingRedisBackend` for Redis behind Sentinel (``sentinel://`` URLs)."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def _polling_backend(url: str) -> str:
    """``url`` served by :class:`PollingRedisBackend` (or its Sentinel twin) when it is a Redis
    URL (Celery's ``module:Class+scheme://`` form), unchanged otherwise."""
    if url.startswith(("redis://", "rediss://")):
        return f"{__name__}:PollingRedisBackend+{url}"
    if url.startswith("sentinel://"):
        return f"{__name__}:PollingSentinelBackend+{url}"
    return url


@dataclass(frozen=True)
class Job:
    """One job to publish: task name, keyword arguments (the contract's shape) and id."""

    task: str
    kwargs: Mapping[str, Any]
    job_id: str
    #: msgpack (raw bytes may travel: a compact sign_batch) instead of the app's JSON.
    binary: bool = False


@dataclass(frozen=True)
class JobState:
    """A job as the result backend knows it: Celery's state name and stored result."""

    status: str
    result: Any = None

    @property
    def done(self) -> bool:
        return self.status in ("SUCCESS", "FAILURE")


class Producer:
    """Publishes jobs and reads their results; one Celery app, closed by :meth:`close`."""

    def __init__(self, app: Celery, *, owns_app: bool = False) -> None:
        #: The Celery app (for tests and benchmarks that drive Celery directly).
        self.app = app
        self._owns_app = owns_app

    @classmethod
    def from_settings(cls, settings: Settings) -> Producer:
        """A producer with its own app: the workers' broker, backend and JSON settings."""
        app = Celery("tenantkeys-client", set_as_current=False)
        app.conf.update(celery_config(settings))
        app.conf.result_backend = _polling_backend(app.conf.result_backend)
        # With TENANTKEYS_MESSAGE_SIGNING on, jobs are signed with this producer's key.
        setup_message_signing(app, settings)
        return cls(app, owns_app=True)

    def close(self) -> None:
        if self._owns_app:
            self.app.close()

    def publish(self, job: Job) -> None:
        """Send one job; ``TK-BROKER-UNAVAILABLE`` when the broker does not take it."""
        instrument_celery()  # a tracer provider installed since: carry its context from now on
        with self._unreachable(f"the broker did not accept job {job.job_id}; retry later"):
            self._send(job, None)

    def publish_many(self, jobs: Iterable[Job]) -> int:
        """Send many jobs in kombu's producer batch (pipelined on Redis); returns how many.

        On a failure part way, ``TK-BROKER-UNAVAILABLE`` and no job is known to be queued:
        send them again under the same ids (ids make the duplicates harmless).
        """
        batch = list(jobs)
        instrument_celery()
        with (
            self._unreachable(
                f"the broker did not accept all of {len(batch)} jobs; "
                "send them again with the same job_ids"
            ),
            self.app.producer_or_acquire() as producer,
            producer.batch(max_size=PUBLISH_BATCH),
        ):
            for job in batch:
                self._send(job, producer)
        return len(batch)

    def _send(self, job: Job, producer: Any) -> None:
        shown_args, shown_kwargs = messages.argsrepr((), job.kwargs)
        self.app.send_task(
            job.task,
            kwargs=dict(job.kwargs),
            task_id=job.job_id,
            queue=contract.ROUTES.get(job.task, contract.MAINTENANCE_QUEUE),
            argsrepr=shown_args,
            kwargsrepr=shown_kwargs,
            # The worker measures signing latency from here (telemetry).
            headers={messages.ENQUEUED_AT_HEADER: time.time()},
            producer=producer,
            serializer=binary_serializer(self.app) if job.binary else None,
        )

    @contextmanager
    def _unreachable(self, message: str) -> Iterator[None]:
        """:func:`_unreachable`, and a queue declared otherwise before as
        ``TK-BROKER-QUEUE-TYPE`` (a configuration error: retrying cannot help)."""
        try:
            with _unreachable(message):
                yield
        except Exception as exc:
            refused = queue_type_refused(exc, self.app.conf.task_default_queue_type)
            if refused is None:
                raise
            raise refused from exc

    def state(self, job_id: str) -> JobState:
        """The job's state and result as stored now (``PENDING`` when nothing is stored)."""
        with _unreachable("the result backend cannot be reached"):
            meta: dict[str, Any] = self.app.backend.get_task_meta(job_id)
        return JobState(str(meta.get("status")), meta.get("result"))

    def forget(self, job_id: str) -> None:
        """Drop the stored result of ``job_id`` (a replay does, so waiters see the new one)."""
        with _unreachable("the result backend cannot be reached"):
            self.app.backend.forget(job_id)


@contextmanager
def _unreachable(message: str) -> Iterator[None]:
    """Broker and result-store failures as ``TK-BROKER-UNAVAILABLE`` (a transient error)."""
    try:
        yield
    except _UNREACHABLE as exc:
        raise TransientError(
            f"{message} ({type(exc).__name__})", code=ErrorCode.BROKER_UNAVAILABLE
        ) from exc
