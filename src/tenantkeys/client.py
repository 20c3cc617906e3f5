"""What upstream services import to sign through the queue.

Jobs are sent by task *name*, so a producer installs ``tenantkeys`` only, never the workers.
Each job id is an idempotency key: pass your own (say, the id of the record you sign) and a
resent job lands on the same result; Ed25519 makes a re-run produce the same JWS anyway.
Payloads travel base64-encoded in JSON; task events show their SHA-256 and size only.

>>> with SigningClient.from_settings(load_settings()) as client:   # doctest: +SKIP
...     signature = client.sign("acme", b'{"amount": 12}', canonical_json=True)
...     signature.jws
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import redis
from celery import Celery
from celery.backends.redis import RedisBackend
from kombu.exceptions import OperationalError

from tenantkeys import jobs
from tenantkeys.config import Settings
from tenantkeys.errors import (
    ErrorCode,
    InvalidRequest,
    JobTimeout,
    TenantKeysError,
    TransientError,
)
from tenantkeys.keys.service import Signature
from tenantkeys.queue.config import celery_config
from tenantkeys.queue.message_signing import setup_message_signing
from tenantkeys.telemetry import tracing

#: The typed result of a signing job (what ``tenantkeys sign --via-queue`` prints).
SignResult = Signature
#: One item of :meth:`SigningClient.sign_many`: the signature, or why that item failed.
ItemResult = Signature | TenantKeysError
#: Messages :meth:`SigningClient.submit_many` buffers before one pipelined write to Redis:
#: large enough to amortise the round trip, small enough (~2 MB of 1 KB payloads) to bound memory.
PUBLISH_BATCH = 1_000


class PollingRedisBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend without the subscription it opens for every job sent.

    ``send_task`` asks the Redis backend to SUBSCRIBE to the job's result channel (and the
    returned ``AsyncResult`` UNSUBSCRIBEs when collected): two round trips per job, 42 % of a
    producer's time in a profile of :meth:`SigningClient.submit_many`. This client waits by
    polling the stored result, so it never reads that subscription; ``AsyncResult.get``
    still works, because it subscribes (and reads what was already stored) when called.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def _polling_backend(url: str) -> str:
    """``url`` served by :class:`PollingRedisBackend` when it is a Redis URL (Celery's
    ``module:Class+scheme://`` form), unchanged otherwise."""
    if url.startswith(("redis://", "rediss://")):
        return f"{__name__}:PollingRedisBackend+{url}"
    return url


def _sign_kwargs(tenant_id: str, payload: bytes, canonical_json: bool) -> dict[str, Any]:
    """Arguments of one ``sign`` job (``canonical_json`` only when asked for)."""
    kwargs: dict[str, Any] = {"tenant_id": tenant_id, "payload": jobs.encode_payload(payload)}
    if canonical_json:
        kwargs["canonical_json"] = True
    return kwargs


def _signature(result: Any) -> Signature:
    if not isinstance(result, Mapping):
        raise TenantKeysError("a signing job returned no signature")
    return Signature(**{name: str(result[name]) for name in Signature.__dataclass_fields__})


class PendingSignature:
    """A signing job on its way; :meth:`result` waits for it."""

    def __init__(self, client: SigningClient, job_id: str, kwargs: Mapping[str, Any]) -> None:
        self.client = client
        self.job_id = job_id
        self._kwargs = kwargs

    def result(self, timeout: float = 30.0) -> Signature:
        """Wait for the signature; re-sends the job (same id) if it seems lost, see ``wait``."""
        return _signature(self.client.wait(self.job_id, timeout, resend=(jobs.SIGN, self._kwargs)))


class SigningClient:
    """Sends signing and key jobs to the workers and waits for typed results."""

    def __init__(
        self, app: Celery, *, owns_app: bool = False, resend_after: float | None = None
    ) -> None:
        self.app = app
        self._owns_app = owns_app
        # Trace context travels in each message, so the worker's span continues the caller's
        # trace; an application that set up OpenTelemetry keeps its own provider.
        tracing.ensure_tracing("tenantkeys-client")
        tracing.instrument_celery()
        #: Seconds without a result after which a job is published again under the same id.
        self.resend_after = resend_after

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningClient:
        """A client with its own Celery app (broker, backend and JSON settings of the workers)."""
        app = Celery("tenantkeys-client", set_as_current=False)
        app.conf.update(celery_config(settings))
        app.conf.result_backend = _polling_backend(app.conf.result_backend)
        # With TENANTKEYS_MESSAGE_SIGNING on, jobs are signed with this producer's key.
        setup_message_signing(app, settings)
        # The horizon at which Redis itself re-delivers an unacked job: a job still without a
        # result then was most likely lost between the broker and a dying worker.
        return cls(app, owns_app=True, resend_after=settings.broker_visibility_timeout_seconds)

    def __enter__(self) -> SigningClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_app:
            self.app.close()

    # -- sending and waiting -------------------------------------------------------------

    def send(self, task: str, kwargs: Mapping[str, Any], *, job_id: str | None = None) -> str:
        """Publish job ``task`` with ``kwargs``; returns its job id."""
        job_id = job_id or str(uuid.uuid4())
        try:
            self._publish(task, kwargs, job_id)
        except OperationalError as exc:
            raise TransientError(
                f"the broker did not accept job {job_id} ({type(exc).__name__}); retry later",
                code=ErrorCode.BROKER_UNAVAILABLE,
            ) from exc
        return job_id

    def _publish(
        self, task: str, kwargs: Mapping[str, Any], job_id: str, producer: Any = None
    ) -> None:
        shown_args, shown_kwargs = jobs.argsrepr((), kwargs)
        self.app.send_task(
            task,
            kwargs=dict(kwargs),
            task_id=job_id,
            queue=jobs.ROUTES.get(task, jobs.MAINTENANCE_QUEUE),
            argsrepr=shown_args,
            kwargsrepr=shown_kwargs,
            # The worker measures signing latency from here (telemetry).
            headers={jobs.ENQUEUED_AT_HEADER: time.time()},
            producer=producer,
        )

    def wait(
        self,
        job_id: str,
        timeout: float = 30.0,
        *,
        resend: tuple[str, Mapping[str, Any]] | None = None,
    ) -> Any:
        """The result of ``job_id``; raises the job's error, or :class:`JobTimeout`.

        Polls the result backend with a growing interval (2 ms to 100 ms) instead of using
        Celery's pub/sub result consumer: no subscription outlives the client, and waits from
        several threads (the asyncio client) share nothing but a connection pool.

        With ``resend=(task, kwargs)``, a job without a result after ``resend_after`` seconds
        is published again under the same id. Redis (kombu) pops a message and records it as
        unacked in two steps; a worker killed between them loses that message, and only the
        producer still has it. Job ids make the duplicate harmless.
        """
        started = last_sent = time.monotonic()
        deadline = started + timeout
        interval = 0.002
        while True:
            if (
                resend is not None
                and self.resend_after is not None
                and time.monotonic() - last_sent >= self.resend_after
            ):
                self.send(resend[0], resend[1], job_id=job_id)
                last_sent = time.monotonic()
            meta = self._meta(job_id)
            if meta.get("status") == "SUCCESS":
                return jobs.unwrap(meta.get("result"))
            if meta.get("status") == "FAILURE":
                raise TenantKeysError(f"job {job_id} failed in the worker; see its log")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout(
                    f"no result for job {job_id} within {timeout:g} s; it stays queued and its "
                    "result can still be fetched by the job id"
                )
            time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, 0.1)

    def _meta(self, job_id: str) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = self.app.backend.get_task_meta(job_id)
        except (OperationalError, redis.RedisError) as exc:
            raise TransientError(
                f"the result backend cannot be reached ({type(exc).__name__})",
                code=ErrorCode.BROKER_UNAVAILABLE,
            ) from exc
        return meta

    def forget(self, job_id: str) -> None:
        """Drop the stored result of ``job_id`` (a replay does, so waiters see the new one)."""
        self.app.backend.forget(job_id)

    # -- signing -------------------------------------------------------------------------

    def submit(
        self,
        tenant_id: str,
        payload: bytes,
        *,
        canonical_json: bool = False,
        job_id: str | None = None,
    ) -> PendingSignature:
        """Send one signing job without waiting (workers batch such jobs together)."""
        kwargs = _sign_kwargs(tenant_id, payload, canonical_json)
        return PendingSignature(self, self.send(jobs.SIGN, kwargs, job_id=job_id), kwargs)

    def submit_many(
        self,
        requests: Iterable[tuple[str, bytes]],
        *,
        canonical_json: bool = False,
        job_ids: Sequence[str] | None = None,
    ) -> list[PendingSignature]:
        """Send many single signing jobs at once; one :class:`PendingSignature` each, in order.

        Each ``(tenant_id, payload)`` is its own job with its own id and result, as with
        :meth:`submit`, but the messages are published together: on a Redis broker kombu
        pipelines them (one round trip per ``PUBLISH_BATCH`` messages instead of one each).
        If the broker fails part way, :class:`TransientError` says so and no job is known to
        be queued: send the same requests again with the same ``job_ids`` (ids make the
        duplicates harmless). Pass your own ids (say, the evidence records' ids) so that a
        resend after such an error is possible.
        """
        pairs = list(requests)
        if job_ids is not None and len(job_ids) != len(pairs):
            raise InvalidRequest("job_ids must give one id per request")
        ids = list(job_ids) if job_ids is not None else [str(uuid.uuid4()) for _ in pairs]
        pending: list[PendingSignature] = []
        try:
            with (
                self.app.producer_or_acquire() as producer,
                producer.batch(max_size=PUBLISH_BATCH),
            ):
                for (tenant_id, payload), job_id in zip(pairs, ids, strict=True):
                    kwargs = _sign_kwargs(tenant_id, payload, canonical_json)
                    self._publish(jobs.SIGN, kwargs, job_id, producer)
                    pending.append(PendingSignature(self, job_id, kwargs))
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise TransientError(
                f"the broker did not accept all of {len(pairs)} jobs ({type(exc).__name__}); "
                "send them again with the same job_ids",
                code=ErrorCode.BROKER_UNAVAILABLE,
            ) from exc
        return pending

    def sign(
        self,
        tenant_id: str,
        payload: bytes,
        *,
        canonical_json: bool = False,
        timeout: float = 30.0,
        job_id: str | None = None,
    ) -> Signature:
        """Sign ``payload`` with the tenant's active key through a worker."""
        pending = self.submit(tenant_id, payload, canonical_json=canonical_json, job_id=job_id)
        return pending.result(timeout)

    def sign_many(
        self,
        tenant_id: str,
        payloads: Iterable[bytes],
        *,
        canonical_json: bool = False,
        timeout: float = 60.0,
        job_id: str | None = None,
    ) -> list[ItemResult]:
        """Sign many payloads in one ``sign_batch`` job; one result per payload, in order.

        A bad payload yields its error in its place; the others are signed.
        """
        items = [
            {
                "tenant_id": tenant_id,
                "payload": jobs.encode_payload(p),
                "canonical_json": canonical_json,
            }
            for p in payloads
        ]
        kwargs = {"items": items}
        job_id = self.send(jobs.SIGN_BATCH, kwargs, job_id=job_id)
        result = self.wait(job_id, timeout, resend=(jobs.SIGN_BATCH, kwargs))
        return [_item(entry) for entry in result["results"]]

    # -- key jobs ------------------------------------------------------------------------

    def create_keys(
        self, tenant_id: str, purposes: Sequence[str] | None = None, *, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"tenant_id": tenant_id}
        if purposes is not None:
            kwargs["purposes"] = list(purposes)
        keys: list[dict[str, Any]] = self.wait(self.send(jobs.CREATE_KEYS, kwargs), timeout)["keys"]
        return keys

    def rotate_key(
        self,
        tenant_id: str,
        purpose: str = "signing",
        *,
        expected_version: int | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        kwargs = {"tenant_id": tenant_id, "purpose": purpose, "expected_version": expected_version}
        result: dict[str, Any] = self.wait(self.send(jobs.ROTATE_KEY, kwargs), timeout)
        return result

    def revoke_key(self, tenant_id: str, kid: str, *, timeout: float = 30.0) -> dict[str, Any]:
        kwargs = {"tenant_id": tenant_id, "kid": kid}
        result: dict[str, Any] = self.wait(self.send(jobs.REVOKE_KEY, kwargs), timeout)
        return result


def _item(entry: Any) -> ItemResult:
    try:
        return _signature(jobs.unwrap(entry))
    except TenantKeysError as exc:
        return exc


class AsyncSigningClient:
    """asyncio face of :class:`SigningClient`: waits run in threads, the loop stays free."""

    def __init__(self, client: SigningClient) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> AsyncSigningClient:
        return cls(SigningClient.from_settings(settings))

    async def __aenter__(self) -> AsyncSigningClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.client.close()

    async def sign(
        self,
        tenant_id: str,
        payload: bytes,
        *,
        canonical_json: bool = False,
        timeout: float = 30.0,
        job_id: str | None = None,
    ) -> Signature:
        return await asyncio.to_thread(
            self.client.sign,
            tenant_id,
            payload,
            canonical_json=canonical_json,
            timeout=timeout,
            job_id=job_id,
        )

    async def sign_many(
        self,
        tenant_id: str,
        payloads: Iterable[bytes],
        *,
        canonical_json: bool = False,
        timeout: float = 60.0,
        job_id: str | None = None,
    ) -> list[ItemResult]:
        return await asyncio.to_thread(
            self.client.sign_many,
            tenant_id,
            list(payloads),
            canonical_json=canonical_json,
            timeout=timeout,
            job_id=job_id,
        )


async def async_sign(
    settings: Settings, tenant_id: str, payload: bytes, **options: Any
) -> Signature:
    """One-shot asyncio signing (opens and closes a client)."""
    async with AsyncSigningClient.from_settings(settings) as client:
        return await client.sign(tenant_id, payload, **options)
