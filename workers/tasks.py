"""The tasks: thin adapters from Celery requests to :class:`tenantkeys.jobs.runner.JobRunner`.

Single ``sign`` jobs are aggregated on the worker with celery-batches: messages are buffered by
the consumer and handed to one pool call (up to ``sign_batch_size`` jobs, or whatever arrived
within ``sign_batch_interval_seconds``), so a burst of single jobs pays the pool round trip,
the task set-up and the tracing once per batch instead of once per job. Each job still gets its
own result, stored under its own id, and its message is acked only after the batch ran.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from tenantkeys import jobs, telemetry
from tenantkeys.errors import ErrorCode, TransientKmsError
from tenantkeys.jobs.runner import Outcome
from tenantkeys.keys.rotation import RotationSweep
from tenantkeys.resilience import RetryPolicy
from tenantkeys.telemetry import tracing
from workers import consumer
from workers.app import WorkerProcess, app, current, settings
from workers.fastpath import acks, results

log = logging.getLogger(__name__)


class RedactedTask(Task):  # type: ignore[misc]
    """Every message it publishes (including retries) shows hashes, never payloads."""

    def apply_async(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        options["argsrepr"], options["kwargsrepr"] = jobs.argsrepr(args, kwargs)
        return super().apply_async(args, kwargs, **options)


def _queue(delivery_info: dict[str, Any] | None) -> str | None:
    return (delivery_info or {}).get("routing_key")


#: Message headers a re-published job keeps: its enqueue time and trace context (the
#: tracing instrumentation replaces the latter with the current span's when it is on).
_CARRIED_HEADERS = (jobs.ENQUEUED_AT_HEADER, "traceparent", "tracestate")


def _carried(headers: dict[str, Any] | None) -> dict[str, Any]:
    return {name: headers[name] for name in _CARRIED_HEADERS if headers and name in headers}


def _observed(process: WorkerProcess, outcome: Outcome, headers: dict[str, Any] | None) -> None:
    """Metrics of a job whose outcome is decided (its result is stored or being returned)."""
    outcome.record_metrics(jobs.enqueued_at(headers))
    telemetry.set_l1_entries(len(process.runtime.service.l1))


def run_request(task: Task, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Run a regular (non-batched) task's request; retry or return the result envelope."""
    request = task.request
    process = current()
    outcome = process.runner.run(
        name,
        kwargs,
        job_id=request.id,
        retries=request.retries,
        queue=_queue(request.delivery_info),
        worker=request.hostname,
        args=args,
    )
    # Celery's retry keeps the custom headers, enqueue time included.
    _observed(process, outcome, request.headers)
    if outcome.retry_in is not None:
        raise task.retry(countdown=outcome.retry_in, max_retries=None, exc=outcome.error)
    return outcome.result


class SignBatches(RedactedTask, Batches):  # type: ignore[misc]
    """celery-batches with a worker-lost path: a batch whose process died is redelivered."""

    flush_every = settings.sign_batch_size
    flush_interval = settings.sign_batch_interval_seconds

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        # The consumer rebuilds strategies on every (re)connect and clears its timer, but
        # celery-batches arms its flush timer only once: re-arm it, or after a broker restart
        # fewer jobs than a full batch would wait unflushed (and unacked) for ever.
        armed: Any = getattr(self, "_tref", None)
        if armed is not None:
            with contextlib.suppress(Exception):
                armed.cancel()
        self._tref = None
        return super().Strategy(task, app, consumer)

    def flush(self, requests: Sequence[Any]) -> Any:
        # Same as Batches.flush for acks_late tasks, plus an error callback: if the pool
        # process dies (WorkerLostError) or hits the hard time limit, each job is sent again
        # with one more attempt counted, or dead-lettered after the last one, so a KMS that
        # stays slower than the time limit ends every job instead of looping it for ever.
        simple = ([SimpleRequest.from_request(r) for r in requests],)

        def on_return(_result: Any) -> None:
            acks.acknowledge(requests)

        def on_error(info: Any) -> None:
            log.error("a signing batch of %d jobs was lost (%r)", len(requests), info)
            for request in requests:
                _retry_or_dead_letter(self, request, info)

        return self._pool.apply_async(
            apply_batches_task,
            (self, simple, 0, None),
            callback=on_return,
            error_callback=on_error,
            soft_timeout=settings.task_soft_time_limit_seconds,
            timeout=settings.task_time_limit_seconds,
        )


def _retry_or_dead_letter(task: SignBatches, request: Any, info: Any) -> None:
    """A job of a lost batch: again with one more attempt, or to the dead-letter store."""
    headers = request.request_dict or {}
    attempts = int(headers.get("retries") or 0) + 1
    kwargs = dict(request.kwargs or {})
    try:
        if attempts > settings.retry_max:
            error = TransientKmsError(
                f"the signing batch exceeded its time limit or its process died "
                f"{attempts} times ({type(getattr(info, 'exception', info)).__name__})",
                code=ErrorCode.KMS_TIMEOUT,
            )
            entry = consumer.store().add(
                task=jobs.SIGN,
                job_id=request.id,
                kwargs=kwargs,
                arguments=jobs.redact(kwargs),
                error=error,
                attempts=attempts,
                worker=request.hostname or "",
                queue=jobs.SIGN_QUEUE,
            )
            app.backend.mark_as_done(request.id, jobs.failed(error, dead_letter=entry.id))
        else:
            task.apply_async(
                kwargs=kwargs,
                task_id=request.id,
                retries=attempts,
                headers=_carried(headers),
                countdown=RetryPolicy.from_settings(settings).delay(attempts - 1),
            )
    except Exception as exc:  # cannot re-send or record: keep it in the broker instead
        log.error("job %s requeued as it was (%s)", request.id, type(exc).__name__)
        request.reject(requeue=True)
        return
    request.acknowledge()


@app.task(name=jobs.SIGN, base=SignBatches, acks_late=True, bind=True)  # type: ignore[untyped-decorator]
def sign(self: SignBatches, requests: list[SimpleRequest]) -> None:
    """Sign many single jobs in one call path; each job's result is stored under its id."""
    process = current()
    done: list[_Done] = []
    events: list[tuple[str, dict[str, Any]]] = []
    # A batch shares one time limit: when KMS calls turn slow, hand the rest back to the
    # queue (same job, same retry count) instead of running the whole batch into the limit.
    budget = time.monotonic() + settings.task_soft_time_limit_seconds / 2
    try:
        for request in requests:
            headers = request.request_dict or {}
            retries = int(headers.get("retries") or 0)
            if time.monotonic() > budget:
                self.apply_async(
                    kwargs=request.kwargs,
                    task_id=request.id,
                    retries=retries,
                    headers=_carried(headers),
                )
                continue
            # One span per job, continuing its producer's trace (the batch has a trace of its own).
            with tracing.job_span(jobs.SIGN, request.id, headers):
                finished = _sign_one(self, process, request, headers, retries)
            if isinstance(finished, _Done):
                done.append(finished)
            else:
                events.append(finished)
    finally:
        # Even when the loop is cut short (the soft time limit), the jobs already signed keep
        # their results: one round trip or two for the batch instead of two per job.
        results.store(app.backend, [(d.request, d.outcome.result) for d in done])
        for d in done:
            _observed(process, d.outcome, d.headers)
            events.append(("task-succeeded", {"uuid": d.request.id, "runtime": d.runtime}))
    _send_events(requests[0].hostname if requests else None, events)


@dataclass(frozen=True)
class _Done:
    """A job of the batch with its result decided, stored with the others after the loop."""

    request: SimpleRequest
    outcome: Outcome
    headers: dict[str, Any]
    runtime: float


def _sign_one(
    task: SignBatches,
    process: WorkerProcess,
    request: SimpleRequest,
    headers: dict[str, Any],
    retries: int,
) -> _Done | tuple[str, dict[str, Any]]:
    """Run one job of a batch: its result to store, or (its retry published) its event."""
    started = time.perf_counter()
    outcome: Outcome = process.runner.run(
        jobs.SIGN,
        request.kwargs,
        job_id=request.id,
        retries=retries,
        queue=_queue(request.delivery_info),
        worker=request.hostname,
        args=request.args,
    )
    if outcome.retry_in is not None:
        # Publish the retry before this message is acked: at least once, never zero times.
        task.apply_async(
            kwargs=request.kwargs,
            task_id=request.id,
            countdown=outcome.retry_in,
            retries=retries + 1,
            headers=_carried(headers),
        )
        _observed(process, outcome, headers)
        return ("task-retried", {"uuid": request.id, "exception": repr(outcome.error)})
    return _Done(request, outcome, headers, time.perf_counter() - started)


def _send_events(hostname: str | None, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Per-job events for Flower (celery-batches sends only task-received).

    They travel as one ``task.multi`` message per batch, as Celery's own worker buffers its
    task events; Celery's event receivers (Flower, ``celery events``) unpack the list.
    """
    if not events or not app.conf.worker_send_task_events:
        return
    try:
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            dispatcher.buffer_group = frozenset({"task"})
            dispatcher.buffer_limit = len(events) + 1  # flushed below, not on the way
            for kind, fields in events:
                dispatcher.send(kind, **fields)
            dispatcher.flush(errors=False)
    except Exception as exc:  # events are best effort; results are already stored
        log.warning("task events not sent (%s)", type(exc).__name__)


@app.task(name=jobs.SIGN_BATCH, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def sign_batch(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Many payloads in one job; each item gets its own result, bad items do not fail others."""
    return run_request(self, jobs.SIGN_BATCH, args, kwargs)


@app.task(name=jobs.CREATE_KEYS, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def create_keys(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Create the tenant's keys (those it lacks)."""
    return run_request(self, jobs.CREATE_KEYS, args, kwargs)


@app.task(name=jobs.ROTATE_KEY, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def rotate_key(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Rotate (tenant, purpose), only if ``expected_version`` is still active when given."""
    return run_request(self, jobs.ROTATE_KEY, args, kwargs)


@app.task(name=jobs.REVOKE_KEY, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def revoke_key(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Revoke a key version by kid (an active one is replaced at once)."""
    return run_request(self, jobs.REVOKE_KEY, args, kwargs)


@app.task(name=jobs.ROTATION_SWEEP, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def rotation_sweep(self: Task) -> Any:
    """Enqueue one conditional rotate_key per due key; also recover stale dead-letter replays."""
    process = current()
    sweep = RotationSweep(
        process.runtime.service.store,
        process.runtime.redis,
        settings.redis_prefix,
        page_size=settings.rotation_sweep_page_size,
    )
    report = sweep.run(
        lambda version: rotate_key.apply_async(
            kwargs={
                "tenant_id": version.tenant_id,
                "purpose": version.purpose.value,
                "expected_version": version.version,
            }
        )
    )
    recovered = process.deadletters.recover_stale()
    return jobs.ok({**report.to_dict(), "dead_letters_recovered": recovered})
