"""JobRunner: runs one job against the KeyService and decides what happens next.

Each task calls its own method (:meth:`JobRunner.sign`, :meth:`~JobRunner.sign_batch`, ...).
Every method runs inside the one error boundary, :meth:`JobRunner._attempt`, which checks the
arguments against the job contract and turns whatever goes wrong into an :class:`Outcome`:
bad input becomes an error result; transient errors retry with backoff until the policy gives
up; everything else (and a spent retry budget) goes through the one
:class:`~tenantkeys.jobs.deadletters.DeadLetterWriter`, and the result says where.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, cast, get_args

import redis

from tenantkeys import telemetry
from tenantkeys.errors import (
    CacheUnavailable,
    ErrorCode,
    InvalidRequest,
    TenantKeysError,
    TransientError,
)
from tenantkeys.jobs import contract, messages
from tenantkeys.jobs.deadletters import Attempt, DeadLetterStore, DeadLetterWriter
from tenantkeys.keys.model import Purpose
from tenantkeys.keys.service import KeyService
from tenantkeys.resilience import RetryPolicy, as_error
from tenantkeys.signing.timestamps import Timestamper

log = logging.getLogger(__name__)


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
        # A batch's items share their latency: one increment per label, not one per item.
        counts = Counter(self.signatures) if len(self.signatures) > 1 else {}
        for label in counts or self.signatures:
            seconds = None if label == "retry" else latency
            telemetry.record_signature(label, seconds, count=counts.get(label, 1))
        if self.rotation is not None:
            telemetry.record_rotation(*self.rotation)


class _BatchTransient(Exception):
    """Some items of a sign_batch failed transiently; carries the partial results."""

    def __init__(self, results: list[dict[str, Any]], first: TenantKeysError) -> None:
        super().__init__(first.message)
        self.results = results
        self.first = first


class JobRunner:
    """One per worker process, next to its KeyService and its dead-letter writer."""

    def __init__(
        self,
        service: KeyService,
        deadletters: DeadLetterStore,
        policy: RetryPolicy,
        *,
        worker: str = "unknown",
        out_of_time: tuple[type[BaseException], ...] = (),
        timestamper: Timestamper | None = None,
    ) -> None:
        self.service = service
        #: With TENANTKEYS_TSA_URL set: every signature carries an RFC 3161 token, or fails.
        self.timestamper = timestamper
        #: Exceptions meaning "the job ran out of time" (Celery's soft time limit): retried.
        self.out_of_time = out_of_time
        self.deadletters = deadletters
        self.writer = DeadLetterWriter(deadletters)
        self.policy = policy
        self.worker = worker

    # -- one method per task -------------------------------------------------------------

    def sign(self, kwargs: object, **where: Any) -> Outcome:
        """``tenantkeys.sign``: one payload, one signature."""
        outcome = self._attempt(contract.SIGN, kwargs, where, self._sign)
        return replace(outcome, signatures=(_signature_label(outcome),))

    def sign_batch(self, kwargs: object, **where: Any) -> Outcome:
        """``tenantkeys.sign_batch``: one result per item; a bad item fails only itself."""
        work = self._sign_compact if contract.is_compact_batch(kwargs) else self._sign_batch
        outcome = self._attempt(contract.SIGN_BATCH, kwargs, where, work)
        return replace(outcome, signatures=_batch_labels(kwargs, outcome))

    def create_keys(self, kwargs: object, **where: Any) -> Outcome:
        """``tenantkeys.create_keys``: the purposes the tenant lacks."""
        return self._attempt(contract.CREATE_KEYS, kwargs, where, self._create_keys)

    def rotate_key(self, kwargs: object, **where: Any) -> Outcome:
        """``tenantkeys.rotate_key``: conditional on ``expected_version`` when given."""
        outcome = self._attempt(contract.ROTATE_KEY, kwargs, where, self._rotate_key)
        return replace(outcome, rotation=_rotation_label(kwargs, outcome))

    def revoke_key(self, kwargs: object, **where: Any) -> Outcome:
        """``tenantkeys.revoke_key``: an active key is replaced at once."""
        return self._attempt(contract.REVOKE_KEY, kwargs, where, self._revoke_key)

    # -- the error boundary ----------------------------------------------------------------

    def _attempt(
        self, task: str, kwargs: object, where: Mapping[str, Any], work: Callable[[Any], Any]
    ) -> Outcome:
        """Run ``work`` on the checked arguments; never raises (every error is an Outcome)."""
        attempt = _attempt_of(where, self.worker)
        shown = kwargs if isinstance(kwargs, Mapping) else {}
        try:
            if where.get("args"):
                raise InvalidRequest("job arguments must be keyword arguments (a JSON object)")
            result = work(contract.parse_arguments(task, kwargs))
        except _BatchTransient as partial:
            return self._failed(task, shown, partial.first, attempt, partial.results)
        except Exception as exc:  # the boundary: every error is classified below
            return self._failed(task, shown, exc, attempt)
        if attempt.retries:
            self._quietly(lambda: self.deadletters.forget_failures(attempt.job_id))
        return Outcome(messages.ok(result))

    def _failed(
        self,
        task: str,
        kwargs: Mapping[str, Any],
        exc: BaseException,
        attempt: Attempt,
        partial: list[dict[str, Any]] | None = None,
    ) -> Outcome:
        if isinstance(exc, self.out_of_time):
            exc = TransientError("the job ran out of time (soft time limit); retried")
        error = as_error(exc)
        action = error.action
        if not isinstance(exc, TenantKeysError):
            log.error("job %s[%s] failed unexpectedly", task, attempt.job_id, exc_info=exc)
        if action == "reject":
            return Outcome(messages.failed(error), error=error)
        if action == "retry" and attempt.retries < self.policy.max_retries:
            self._quietly(lambda: self.deadletters.note_failure(attempt.job_id))
            return Outcome(None, retry_in=self.policy.delay(attempt.retries), error=error)
        extra: dict[str, Any] = {} if partial is None else {"results": partial}
        try:
            envelope = self.writer.write(task, kwargs, error, attempt, **extra)
        except redis.RedisError as redis_exc:
            # Never drop a job: without the store, keep it in the broker and try again later.
            log.error("dead-letter store unavailable (%s); job kept for retry", redis_exc)
            down = CacheUnavailable("dead-letter store (Redis) unavailable")
            return Outcome(None, retry_in=self.policy.cap_seconds, error=down)
        return Outcome(envelope, error=error)

    @staticmethod
    def _quietly(fn: Callable[[], object]) -> None:
        try:
            fn()
        except redis.RedisError as exc:  # bookkeeping only; the job itself goes on
            log.warning("dead-letter bookkeeping skipped (%s)", type(exc).__name__)

    # -- the work of each job ----------------------------------------------------------------

    def _sign(self, args: contract.SignArgs) -> dict[str, str]:
        payload = messages.decode_payload(args["payload"])
        canonical = args.get("canonical_json", False)
        signature = self.service.sign(args["tenant_id"], payload, canonical_json=canonical)
        if self.timestamper is not None:
            # One token per signature, batch items too (docs/verifying.md#timestamps says why);
            # a TSA that fails fails the signature (retried), never issues it unstamped.
            signature = replace(signature, timestamp=self.timestamper.stamp(signature.jws))
        return signature.to_dict()

    def _sign_batch(self, args: contract.SignBatchArgs) -> contract.SignBatchResult:
        _check_batch_size(len(args["items"]))
        results: list[dict[str, Any]] = []
        transient: TenantKeysError | None = None
        for item in args["items"]:
            if transient is not None and transient.code == ErrorCode.TSA_UNAVAILABLE:
                # The TSA is down: the rest would each wait out its timeout; retry them all.
                results.append(messages.failed(transient))
                continue
            try:
                signed = self._sign(item)  # checked with the batch: a SignArgs each
                results.append(messages.ok(signed))
            except Exception as exc:  # one bad item must not fail the others
                error = as_error(exc)
                if error.action != "reject" and transient is None:
                    transient = error
                results.append(messages.failed(error))
        if transient is not None:
            raise _BatchTransient(results, transient)
        return cast(contract.SignBatchResult, {"results": results})

    def _sign_compact(self, args: contract.SignBatchCompactArgs) -> contract.SignBatchCompactResult:
        """The compact form: one tenant, one key lookup, and one JWS (or error) per payload."""
        _check_batch_size(len(args["payloads"]))
        payloads: list[object] = list(args["payloads"])
        undecodable: dict[int, TenantKeysError] = {}
        for index, payload in enumerate(payloads):
            if isinstance(payload, str):  # the JSON form: base64, as in a sign job
                try:
                    payloads[index] = messages.decode_payload(payload)
                except InvalidRequest as exc:
                    undecodable[index] = exc
                    payloads[index] = None  # refused by sign_many; its error is replaced below
        signed = self.service.sign_many(
            args["tenant_id"], payloads, canonical_json=args.get("canonical_json", False)
        )
        errors = [(i, undecodable.get(i, error)) for i, error in signed.errors]
        result = contract.SignBatchCompactResult(
            tenant_id=signed.tenant_id,
            kid=signed.kid,
            alg=signed.alg,
            signed_at=signed.signed_at,
            jws=signed.jws,
            errors=[
                contract.ItemFailure(index=i, error=cast(contract.ErrorDetail, error.to_dict()))
                for i, error in errors
            ],
        )
        if self.timestamper is not None:
            # One token per signature (docs/verifying.md#timestamps); a TSA that fails fails
            # the job, retried as a whole: nothing is issued unstamped.
            stamp = self.timestamper.stamp
            result["timestamps"] = [None if jws is None else stamp(jws) for jws in signed.jws]
        return result

    def _create_keys(self, args: contract.CreateKeysArgs) -> contract.CreateKeysResult:
        purposes = args.get("purposes") or [p.value for p in Purpose]
        created = self.service.create_keys(args["tenant_id"], purposes)
        return {"keys": [cast(contract.KeyInfo, v.public_info()) for v in created]}

    def _rotate_key(self, args: contract.RotateKeyArgs) -> contract.RotateKeyResult:
        expected = args.get("expected_version")
        result = self.service.rotate(args["tenant_id"], args["purpose"], expected_version=expected)
        return cast(contract.RotateKeyResult, asdict(result))

    def _revoke_key(self, args: contract.RevokeKeyArgs) -> contract.KeyInfo:
        revoked = self.service.revoke(args["tenant_id"], args["kid"])
        return cast(contract.KeyInfo, revoked.public_info())


def _check_batch_size(count: int) -> None:
    if not 1 <= count <= contract.MAX_BATCH_ITEMS:
        raise InvalidRequest(
            f"a sign_batch job carries 1 to {contract.MAX_BATCH_ITEMS} items, not "
            f"{count}: split bigger batches into several jobs",
            code=ErrorCode.INVALID_ARGUMENT,
        )


def _attempt_of(where: Mapping[str, Any], default_worker: str) -> Attempt:
    return Attempt(
        job_id=str(where.get("job_id") or "unknown"),
        retries=int(where.get("retries") or 0),
        queue=where.get("queue"),
        worker=where.get("worker") or default_worker,
    )


def _signature_label(outcome: Outcome) -> telemetry.SignatureOutcome:
    if outcome.retry_in is not None:
        return "retry"
    if outcome.result is not None and outcome.result.get("ok"):
        return "ok"
    return _failure_label(outcome.error)


def _failure_label(error: TenantKeysError | None) -> telemetry.SignatureOutcome:
    # Bad input is the caller's fault ("rejected"); anything else was given up on ("failed").
    return "failed" if error is None else error.signature_outcome


def _item_label(envelope: object) -> telemetry.SignatureOutcome:
    if not isinstance(envelope, Mapping) or not envelope.get("ok"):
        detail = envelope.get("error") if isinstance(envelope, Mapping) else None
        return _failure_label(messages.error_from(detail if isinstance(detail, Mapping) else {}))
    return "ok"


def _batch_labels(kwargs: object, outcome: Outcome) -> tuple[telemetry.SignatureOutcome, ...]:
    """One label per item; a job refused as a whole (bad arguments) counts once per item."""
    field = contract.COMPACT_BATCH_FIELD if contract.is_compact_batch(kwargs) else "items"
    items = kwargs.get(field) if isinstance(kwargs, Mapping) else None
    count = len(items) if isinstance(items, list) and items else 1
    if outcome.retry_in is not None:
        retry: telemetry.SignatureOutcome = "retry"
        return (retry,) * count
    result = outcome.result or {}
    payload = result.get("result") if result.get("ok") else result.get("error")
    if isinstance(payload, Mapping) and isinstance(payload.get("jws"), list):
        failures = [entry.get("error") for entry in payload.get("errors") or ()]
        signed: telemetry.SignatureOutcome = "ok"
        return (signed,) * (len(payload["jws"]) - len(failures)) + tuple(
            _item_label({"ok": False, "error": error}) for error in failures
        )
    entries = payload.get("results") if isinstance(payload, Mapping) else None
    if isinstance(entries, list):
        return tuple(_item_label(entry) for entry in entries)
    return (_failure_label(outcome.error),) * min(count, contract.MAX_BATCH_ITEMS)


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
