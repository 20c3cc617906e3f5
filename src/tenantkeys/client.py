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
from typing import Any, cast

from tenantkeys import jobs
from tenantkeys.config import Settings
from tenantkeys.errors import InvalidRequest, JobTimeout, TenantKeysError
from tenantkeys.jobs.contract import (
    CreateKeysArgs,
    KeyInfo,
    RevokeKeyArgs,
    RotateKeyArgs,
    RotateKeyResult,
    SignArgs,
    SignBatchArgs,
)
from tenantkeys.queue.producer import Job, Producer
from tenantkeys.queue.tracing import instrument_celery
from tenantkeys.signing import Signature
from tenantkeys.telemetry import tracing

#: The typed result of a signing job (what ``tenantkeys sign --via-queue`` prints).
SignResult = Signature
#: One item of :meth:`SigningClient.sign_many`: the signature, or why that item failed.
ItemResult = Signature | TenantKeysError


def _sign_args(tenant_id: str, payload: bytes, canonical_json: bool) -> SignArgs:
    """Arguments of one ``sign`` job (``canonical_json`` only when asked for)."""
    args = SignArgs(tenant_id=tenant_id, payload=jobs.encode_payload(payload))
    if canonical_json:
        args["canonical_json"] = True
    return args


class PendingSignature:
    """A signing job on its way; :meth:`result` waits for it."""

    def __init__(self, client: SigningClient, job_id: str, kwargs: Mapping[str, Any]) -> None:
        self.client = client
        self.job_id = job_id
        self._kwargs = kwargs

    def result(self, timeout: float = 30.0) -> Signature:
        """Wait for the signature; re-sends the job (same id) if it seems lost, see ``wait``."""
        found = self.client.wait(self.job_id, timeout, resend=(jobs.SIGN, self._kwargs))
        return Signature.from_dict(found)


class SigningClient:
    """Sends signing and key jobs to the workers and waits for typed results."""

    def __init__(self, producer: Producer, *, resend_after: float | None = None) -> None:
        self.producer = producer
        # Trace context travels in each message, so the worker's span continues the caller's
        # trace; an application that set up OpenTelemetry keeps its own provider.
        tracing.ensure_tracing("tenantkeys-client")
        instrument_celery()
        #: Seconds without a result after which a job is published again under the same id.
        self.resend_after = resend_after

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningClient:
        """A client with its own producer (broker, backend and JSON settings of the workers)."""
        # The horizon at which Redis itself re-delivers an unacked job: a job still without a
        # result then was most likely lost between the broker and a dying worker.
        return cls(
            Producer.from_settings(settings),
            resend_after=settings.broker_visibility_timeout_seconds,
        )

    @property
    def app(self) -> Any:
        """The producer's Celery app (tests and benchmarks drive Celery through it)."""
        return self.producer.app

    def __enter__(self) -> SigningClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.producer.close()

    # -- sending and waiting -------------------------------------------------------------

    def send(self, task: str, kwargs: Mapping[str, Any], *, job_id: str | None = None) -> str:
        """Publish job ``task`` with ``kwargs``; returns its job id."""
        job_id = job_id or str(uuid.uuid4())
        self.producer.publish(Job(task, kwargs, job_id))
        return job_id

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
            state = self.producer.state(job_id)
            if state.status == "SUCCESS":
                return jobs.unwrap(state.result)
            if state.status == "FAILURE":
                detail = jobs.failure_detail(state.result)
                if detail is not None:
                    raise jobs.error_from(detail)
                raise TenantKeysError(
                    f"job {job_id} failed in the worker ({type(state.result).__name__}); "
                    "see its log"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout(
                    f"no result for job {job_id} within {timeout:g} s; it stays queued and its "
                    "result can still be fetched by the job id"
                )
            time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, 0.1)

    def forget(self, job_id: str) -> None:
        """Drop the stored result of ``job_id`` (a replay does, so waiters see the new one)."""
        self.producer.forget(job_id)

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
        kwargs = _sign_args(tenant_id, payload, canonical_json)
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
        pending = [
            PendingSignature(self, job_id, _sign_args(tenant_id, payload, canonical_json))
            for (tenant_id, payload), job_id in zip(pairs, ids, strict=True)
        ]
        self.producer.publish_many(Job(jobs.SIGN, p._kwargs, p.job_id) for p in pending)
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
            SignArgs(
                tenant_id=tenant_id,
                payload=jobs.encode_payload(p),
                canonical_json=canonical_json,
            )
            for p in payloads
        ]
        kwargs = SignBatchArgs(items=items)
        job_id = self.send(jobs.SIGN_BATCH, kwargs, job_id=job_id)
        result = self.wait(job_id, timeout, resend=(jobs.SIGN_BATCH, kwargs))
        return [_item(entry) for entry in result["results"]]

    # -- key jobs ------------------------------------------------------------------------

    def create_keys(
        self, tenant_id: str, purposes: Sequence[str] | None = None, *, timeout: float = 30.0
    ) -> list[KeyInfo]:
        """Create the tenant's keys (the purposes it lacks); the public facts of each."""
        kwargs = CreateKeysArgs(tenant_id=tenant_id)
        if purposes is not None:
            kwargs["purposes"] = list(purposes)
        found = self.wait(self.send(jobs.CREATE_KEYS, kwargs), timeout)
        return cast(list[KeyInfo], found["keys"])

    def rotate_key(
        self,
        tenant_id: str,
        purpose: str = "signing",
        *,
        expected_version: int | None = None,
        timeout: float = 30.0,
    ) -> RotateKeyResult:
        """Rotate (tenant, purpose); only if ``expected_version`` is still active, when given."""
        kwargs = RotateKeyArgs(
            tenant_id=tenant_id, purpose=purpose, expected_version=expected_version
        )
        return cast(RotateKeyResult, self.wait(self.send(jobs.ROTATE_KEY, kwargs), timeout))

    def revoke_key(self, tenant_id: str, kid: str, *, timeout: float = 30.0) -> KeyInfo:
        """Revoke a key version by kid (an active one is replaced at once)."""
        kwargs = RevokeKeyArgs(tenant_id=tenant_id, kid=kid)
        return cast(KeyInfo, self.wait(self.send(jobs.REVOKE_KEY, kwargs), timeout))


def _item(entry: Any) -> ItemResult:
    try:
        return Signature.from_dict(jobs.unwrap(entry))
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
