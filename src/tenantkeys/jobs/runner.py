"""JobRunner: runs one job against the KeyService and decides what happens next.

The Celery tasks are thin: they hand the job's name, arguments, id and retry count to
:meth:`JobRunner.run` and carry out the :class:`Outcome` -- store the result envelope, or run
the job again after ``retry_in`` seconds. Bad input becomes an error result; transient errors
retry with backoff until the policy gives up; everything else (and a retry budget spent) is
written to the dead-letter store, and the result says where.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, cast, get_args

import redis

from tenantkeys import jobs, telemetry
from tenantkeys.errors import (
    CacheUnavailable,
    ErrorCode,
    InvalidRequest,
    TenantKeysError,
    TransientError,
)
from tenantkeys.jobs.deadletters import DeadLetterStore
from tenantkeys.keys.model import KeyVersion, Purpose
from tenantkeys.keys.service import KeyService
from tenantkeys.resilience import RetryPolicy, as_error, classify

log = logging.getLogger(__name__)
Handler = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Outcome:
    """``result`` is the envelope to store; ``retry_in`` (seconds) means "run it again"."""

    result: dict[str, Any] | None
    retry_in: float | None = None
    error: TenantKeysError | None = None
    #: One label per signature the job asked for: one for sign, one per item of sign_batch.
    signatures: tuple[telemetry.SignatureOutcome, ...] = ()
    #: ``(purpose, outcome)`` of a rotate_key job that reached an outcome (not on retry).
    rotation: tuple[telemetry.Purpose, telemetry.RotationOutcome] | None = None

    def record_metrics(self, enqueued_at: float | None, *, now: float | None = None) -> None:
        """Count this job's signatures and rotation; call when its result is stored.

        Latency runs from the producer's ``enqueued_at`` (Unix seconds) to ``now``; a retry
        is not a result yet and has none.
        """
        latency = None
        if enqueued_at is not None:
            latency = (time.time() if now is None else now) - enqueued_at
        for label in self.signatures:
            telemetry.record_signature(label, None if label == "retry" else latency)
        if self.rotation is not None:
            telemetry.record_rotation(*self.rotation)


@dataclass(frozen=True)
class _Where:
    job_id: str
    retries: int
    queue: str | None
    worker: str


class _BatchTransient(Exception):
    """Some items of a sign_batch failed transiently; carries the partial results."""

    def __init__(self, results: list[dict[str, Any]], first: TenantKeysError) -> None:
        super().__init__(first.message)
        self.results = results
        self.first = first


class JobRunner:
    """One per worker process, next to its KeyService."""

    def __init__(
        self,
        service: KeyService,
        deadletters: DeadLetterStore,
        policy: RetryPolicy,
        *,
        worker: str = "unknown",
        out_of_time: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.service = service
        #: Exceptions meaning "the job ran out of time" (Celery's soft time limit): retried.
        self.out_of_time = out_of_time
        self.deadletters = deadletters
        self.policy = policy
        self.worker = worker
        self._handlers: dict[str, Handler] = {
            jobs.SIGN: self._sign,
            jobs.SIGN_BATCH: self._sign_batch,
            jobs.CREATE_KEYS: self._create_keys,
            jobs.ROTATE_KEY: self._rotate_key,
            jobs.REVOKE_KEY: self._revoke_key,
        }

    def run(
        self,
        task: str,
        kwargs: Mapping[str, Any],
        *,
        job_id: str,
        retries: int = 0,
        queue: str | None = None,
        worker: str | None = None,
        args: Sequence[Any] = (),
    ) -> Outcome:
        """Run ``task`` once; never raises (every error becomes an :class:`Outcome`)."""
        outcome = self._run(
            task, kwargs, _Where(job_id, retries, queue, worker or self.worker), args
        )
        return _labelled(task, kwargs, outcome)

    def _run(
        self, task: str, kwargs: Mapping[str, Any], where: _Where, args: Sequence[Any]
    ) -> Outcome:
        job_id, retries = where.job_id, where.retries
        try:
            handler = self._handlers.get(task)
            if handler is None:
                raise InvalidRequest(f"no job named {task[:80]!r}")
            if args or not isinstance(kwargs, Mapping):
                raise InvalidRequest("job arguments must be keyword arguments (a JSON object)")
            result = handler(kwargs)
        except _BatchTransient as partial:
            return self._failed(task, kwargs, partial.first, where, partial.results)
        except Exception as exc:  # the boundary: every error is classified below
            return self._failed(task, kwargs if isinstance(kwargs, Mapping) else {}, exc, where)
        if retries:
            self._quietly(lambda: self.deadletters.forget_failures(job_id))
        return Outcome(jobs.ok(result))

    def _failed(
        self,
        task: str,
        kwargs: Mapping[str, Any],
        exc: BaseException,
        where: _Where,
        partial: list[dict[str, Any]] | None = None,
    ) -> Outcome:
        job_id, retries = where.job_id, where.retries
        if isinstance(exc, self.out_of_time):
            exc = TransientError("the job ran out of time (soft time limit); retried")
        error = as_error(exc)
        action = classify(error)
        if not isinstance(exc, TenantKeysError):
            log.error("job %s[%s] failed unexpectedly", task, job_id, exc_info=exc)
        if action == "reject":
            return Outcome(jobs.failed(error), error=error)
        if action == "retry" and retries < self.policy.max_retries:
            self._quietly(lambda: self.deadletters.note_failure(job_id))
            return Outcome(None, retry_in=self.policy.delay(retries), error=error)
        try:
            entry = self.deadletters.add(
                task=task,
                job_id=job_id,
                kwargs=dict(kwargs),
                arguments=jobs.redact(kwargs),
                error=error,
                attempts=retries + 1,
                worker=where.worker,
                queue=where.queue,
            )
        except redis.RedisError as redis_exc:
            # Never drop a job: without the store, keep it in the broker and try again later.
            log.error("dead-letter store unavailable (%s); job kept for retry", redis_exc)
            down = CacheUnavailable("dead-letter store (Redis) unavailable")
            return Outcome(None, retry_in=self.policy.cap_seconds, error=down)
        log.warning("job %s[%s] dead-lettered as %s: %s", task, job_id, entry.id, error.code)
        extra: dict[str, Any] = {"dead_letter": entry.id}
        if partial is not None:
            extra["results"] = partial
        return Outcome(jobs.failed(error, **extra), error=error)

    @staticmethod
    def _quietly(fn: Callable[[], object]) -> None:
        try:
            fn()
        except redis.RedisError as exc:  # bookkeeping only; the job itself goes on
            log.warning("dead-letter bookkeeping skipped (%s)", type(exc).__name__)

    # -- handlers ------------------------------------------------------------------------

    def _sign(self, kwargs: Mapping[str, Any]) -> dict[str, str]:
        args = _arguments(kwargs, required=("tenant_id", "payload"), optional=("canonical_json",))
        payload = jobs.decode_payload(args["payload"])
        signature = self.service.sign(
            args["tenant_id"], payload, canonical_json=bool(args.get("canonical_json", False))
        )
        return signature.to_dict()

    def _sign_batch(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        args = _arguments(kwargs, required=("items",), optional=())
        items = args["items"]
        if not isinstance(items, list) or not 1 <= len(items) <= jobs.MAX_BATCH_ITEMS:
            raise InvalidRequest(f"items must be a list of 1-{jobs.MAX_BATCH_ITEMS} objects")
        results: list[dict[str, Any]] = []
        transient: TenantKeysError | None = None
        for item in items:
            try:
                results.append(jobs.ok(self._sign(item if isinstance(item, Mapping) else {})))
            except Exception as exc:  # one bad item must not fail the others
                error = as_error(exc)
                if classify(error) != "reject" and transient is None:
                    transient = error
                results.append(jobs.failed(error))
        if transient is not None:
            raise _BatchTransient(results, transient)
        return {"results": results}

    def _create_keys(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        args = _arguments(kwargs, required=("tenant_id",), optional=("purposes",))
        purposes = args.get("purposes") or [p.value for p in Purpose]
        if not isinstance(purposes, list):
            raise InvalidRequest("purposes must be a list", code=ErrorCode.INVALID_PURPOSE)
        created = self.service.create_keys(args["tenant_id"], purposes)
        return {"keys": [public_version(v) for v in created]}

    def _rotate_key(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        args = _arguments(kwargs, required=("tenant_id", "purpose"), optional=("expected_version",))
        expected = args.get("expected_version")
        if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
            raise InvalidRequest("expected_version must be an integer")
        result = self.service.rotate(args["tenant_id"], args["purpose"], expected_version=expected)
        return asdict(result)

    def _revoke_key(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        args = _arguments(kwargs, required=("tenant_id", "kid"), optional=())
        return public_version(self.service.revoke(args["tenant_id"], args["kid"]))


def _labelled(task: str, kwargs: object, outcome: Outcome) -> Outcome:
    """``outcome`` with the metric labels of what it means for signatures and rotations."""
    if task == jobs.SIGN:
        return replace(outcome, signatures=(_signature_label(outcome),))
    if task == jobs.SIGN_BATCH:
        return replace(outcome, signatures=_batch_labels(kwargs, outcome))
    if task == jobs.ROTATE_KEY:
        return replace(outcome, rotation=_rotation_label(kwargs, outcome))
    return outcome


def _signature_label(outcome: Outcome) -> telemetry.SignatureOutcome:
    if outcome.retry_in is not None:
        return "retry"
    if outcome.result is not None and outcome.result.get("ok"):
        return "ok"
    return _failure_label(outcome.error)


def _failure_label(error: TenantKeysError | None) -> telemetry.SignatureOutcome:
    # Bad input is the caller's fault ("rejected"); anything else was given up on ("failed").
    return "rejected" if error is not None and classify(error) == "reject" else "failed"


def _item_label(envelope: object) -> telemetry.SignatureOutcome:
    if not isinstance(envelope, Mapping) or not envelope.get("ok"):
        detail = envelope.get("error") if isinstance(envelope, Mapping) else None
        return _failure_label(jobs.error_from(detail if isinstance(detail, Mapping) else {}))
    return "ok"


def _batch_labels(kwargs: object, outcome: Outcome) -> tuple[telemetry.SignatureOutcome, ...]:
    """One label per item; a job refused as a whole (bad arguments) counts once."""
    items = kwargs.get("items") if isinstance(kwargs, Mapping) else None
    count = len(items) if isinstance(items, list) and items else 1
    if outcome.retry_in is not None:
        retry: telemetry.SignatureOutcome = "retry"
        return (retry,) * count
    result = outcome.result or {}
    payload = result.get("result") if result.get("ok") else result.get("error")
    entries = payload.get("results") if isinstance(payload, Mapping) else None
    if isinstance(entries, list):
        return tuple(_item_label(entry) for entry in entries)
    return (_failure_label(outcome.error),) * min(count, jobs.MAX_BATCH_ITEMS)


def _rotation_label(
    kwargs: object, outcome: Outcome
) -> tuple[telemetry.Purpose, telemetry.RotationOutcome] | None:
    purpose = kwargs.get("purpose") if isinstance(kwargs, Mapping) else None
    if outcome.retry_in is not None or purpose not in get_args(telemetry.Purpose):
        return None  # not an outcome yet, or no valid purpose to label it with
    label = cast(telemetry.Purpose, purpose)
    result = outcome.result or {}
    if not result.get("ok"):
        return (label, "failed")
    rotated = bool((result.get("result") or {}).get("rotated"))
    # "skipped": the key was rotated already (a duplicate request lost the conditional update).
    return (label, "ok" if rotated else "skipped")


def _arguments(
    kwargs: Mapping[str, Any], *, required: tuple[str, ...], optional: tuple[str, ...]
) -> Mapping[str, Any]:
    missing = [name for name in required if name not in kwargs]
    unknown = [str(name)[:40] for name in kwargs if name not in required + optional]
    if missing or unknown:
        raise InvalidRequest(
            f"bad job arguments: missing {missing or 'none'}, unknown {unknown or 'none'}"
        )
    return kwargs


def public_version(version: KeyVersion) -> dict[str, Any]:
    """The public facts of a key version (never a wrapped or plaintext secret)."""
    return version.public_info()
