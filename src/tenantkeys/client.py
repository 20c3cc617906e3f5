"""What upstream services import to sign through the queue.

Jobs are sent by task *name*, so a producer installs ``tenantkeys`` only, never the workers.
Each job id is an idempotency key: pass your own (say, the id of the record you sign) and a
resent job lands on the same result; Ed25519 makes a re-run produce the same JWS anyway.
Payloads travel base64-encoded in JSON, or as raw bytes in a compact ``sign_batch`` (msgpack);
task events show their SHA-256 and size only.

>>> with SigningClient.from_settings(load_settings()) as client:   # doctest: +SKIP
...     signature = client.sign("acme", b'{"amount": 12}', canonical_json=True)
...     signature.jws
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from tenantkeys.signing import Signature, canonicalize
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
        found = self.client.wait(self.job_id, timeout, resend=self._resend)
        return Signature.from_dict(found)

    def _resend(self) -> None:
        self.client.send(jobs.SIGN, self._kwargs, job_id=self.job_id)


class PendingBatch:
    """A ``sign_batch`` job on its way; :meth:`results` waits for it."""

    def __init__(
        self,
        client: SigningClient,
        job_id: str,
        kwargs: Mapping[str, Any],
        payloads: Sequence[bytes],
        canonical_json: bool,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self._kwargs = kwargs
        self._payloads = payloads
        self._canonical_json = canonical_json

    def results(self, timeout: float = 60.0) -> list[ItemResult]:
        """One result per payload, in order: its :class:`Signature`, or why it failed."""
        found = self.client.wait(self.job_id, timeout, resend=self._resend)
        if not jobs.is_compact_batch(self._kwargs):
            return [_item(entry) for entry in found["results"]]
        return compact_items(found, self._payloads, canonical_json=self._canonical_json)

    def _resend(self) -> None:
        # In the form it first went in: the compact form as msgpack, raw payload bytes.
        binary = jobs.is_compact_batch(self._kwargs)
        self.client.send(jobs.SIGN_BATCH, self._kwargs, job_id=self.job_id, binary=binary)


def compact_items(
    result: Mapping[str, Any], payloads: Sequence[bytes], *, canonical_json: bool = False
) -> list[ItemResult]:
    """A compact ``sign_batch`` result as one :class:`Signature` (or error) per payload.

    The result names the key once; each signature's ``payload_sha256`` is computed here from
    the payload it signed (canonicalized first when ``canonical_json``), as a worker would.
    """
    try:
        signed: list[str | None] = result["jws"]
        failures = {entry["index"]: entry["error"] for entry in result["errors"]}
        stamps = result.get("timestamps") or [None] * len(signed)
        facts = {name: str(result[name]) for name in ("kid", "tenant_id", "alg", "signed_at")}
    except (KeyError, TypeError):
        raise TenantKeysError("a sign_batch job returned no compact result") from None
    if len(signed) != len(payloads):
        raise TenantKeysError(
            f"a sign_batch job returned {len(signed)} signatures for {len(payloads)} payloads"
        )
    items: list[ItemResult] = []
    for index, (jws, payload) in enumerate(zip(signed, payloads, strict=True)):
        if jws is None:
            items.append(jobs.error_from(failures.get(index) or {}))
            continue
        data = canonicalize(payload) if canonical_json else payload
        digest = hashlib.sha256(data).hexdigest()
        items.append(Signature(jws=jws, payload_sha256=digest, timestamp=stamps[index], **facts))
    return items


class SigningClient:
    """Sends signing and key jobs to the workers and waits for typed results."""

    def __init__(self, producer: Producer, *, resend_after: float | None = None) -> None:
        self.producer = producer
        # Trace context travels in each message (the producer instruments Celery before it
        # publishes), so the worker's span continues the caller's trace; an application that
        # set up OpenTelemetry keeps its own provider.
        tracing.ensure_tracing("tenantkeys-client")
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

    def send(
        self,
        task: str,
        kwargs: Mapping[str, Any],
        *,
        job_id: str | None = None,
        binary: bool = False,
    ) -> str:
        """Publish job ``task`` with ``kwargs``; returns its job id.

        ``binary`` sends msgpack instead of JSON, so payloads travel as raw bytes (a compact
        ``sign_batch``); signed with this producer's key when message signing is on.
        """
        job_id = job_id or str(uuid.uuid4())
        self.producer.publish(Job(task, kwargs, job_id, binary))
        return job_id

    def wait(
        self,
        job_id: str,
        timeout: float = 30.0,
        *,
        resend: Callable[[], object] | None = None,
    ) -> Any:
        """The result of ``job_id``; raises the job's error, or :class:`JobTimeout`.

        Polls the result backend with a growing interval (2 ms to 100 ms) instead of using
        Celery's pub/sub result consumer: no subscription outlives the client, and waits from
        several threads (the asyncio client) share nothing but a connection pool.

        With ``resend`` (a function that publishes the job again under the same id), a job
        without a result after ``resend_after`` seconds is published again.
        Redis (kombu) pops a message and records it as unacked in two steps; a worker killed
        between them loses that message, and only the producer still has it. Job ids make the
        duplicate harmless.
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
                resend()
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

    def submit_batch(
        self,
        tenant_id: str,
        payloads: Iterable[bytes],
        *,
        canonical_json: bool = False,
        job_id: str | None = None,
        binary: bool = True,
    ) -> PendingBatch:
        """Send one ``sign_batch`` job for many payloads of one tenant, without waiting.

        ``binary`` (the default) sends the compact form as msgpack: raw payload bytes, and one
        array of JWS back (docs/contract: about half the CPU per signature of the JSON
        ``items`` form). Workers older than the compact form refuse it; ``binary=False``
        sends the JSON ``items`` form, which every worker takes.
        """
        data = [bytes(p) for p in payloads]
        if binary:
            kwargs: dict[str, Any] = {"tenant_id": tenant_id, jobs.COMPACT_BATCH_FIELD: data}
            if canonical_json:
                kwargs["canonical_json"] = True
            job_id = self.send(jobs.SIGN_BATCH, kwargs, job_id=job_id, binary=True)
        else:
            items = [_sign_args(tenant_id, p, canonical_json) for p in data]
            kwargs = dict(SignBatchArgs(items=items))
            job_id = self.send(jobs.SIGN_BATCH, kwargs, job_id=job_id)
        return PendingBatch(self, job_id, kwargs, data, canonical_json)

    def sign_many(
        self,
        tenant_id: str,
        payloads: Iterable[bytes],
        *,
        canonical_json: bool = False,
        timeout: float = 60.0,
        job_id: str | None = None,
        binary: bool = True,
    ) -> list[ItemResult]:
        """Sign many payloads in one ``sign_batch`` job; one result per payload, in order.

        A bad payload yields its error in its place; the others are signed. ``binary``: see
        :meth:`submit_batch`.
        """
        pending = self.submit_batch(
            tenant_id, payloads, canonical_json=canonical_json, job_id=job_id, binary=binary
        )
        return pending.results(timeout)

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
        binary: bool = True,
    ) -> list[ItemResult]:
        return await asyncio.to_thread(
            self.client.sign_many,
            tenant_id,
            list(payloads),
            canonical_json=canonical_json,
            timeout=timeout,
            job_id=job_id,
            binary=binary,
        )


async def async_sign(
    settings: Settings, tenant_id: str, payload: bytes, **options: Any
) -> Signature:
    """One-shot asyncio signing (opens and closes a client)."""
    async with AsyncSigningClient.from_settings(settings) as client:
        return await client.sign(tenant_id, payload, **options)
