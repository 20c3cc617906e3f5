"""The tasks: thin adapters from Celery requests to the runner's method for each job.

Single ``sign`` jobs are aggregated on the worker with celery-batches: messages are buffered by
the consumer and handed to one pool call (up to ``sign_batch_size`` jobs, or whatever arrived
within ``sign_batch_interval_seconds``). Each job still gets its own result, stored under its
own id, and its message is acked only once its outcome is settled: its result stored, or the
job published again. Whatever is not settled when the batch ends (a result store that stays
down, an error outside the runner) goes back to the queue instead of being acked. A batch
logs one INFO line (its job ids and outcome counts, never a payload), sends its jobs' task
events (received, started, succeeded / failed / retried) as one message from a thread of the
pool process (``outcomes.EventSender``: the process moves on to the next batch), and adds its cache
and KMS counts to the fleet's counters in Redis (``tenantkeys.telemetry.fleet``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Task, signals, states
from celery.exceptions import Retry
from celery.worker import state as worker_state
from celery_batches import SimpleRequest

from tenantkeys import jobs
from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError, TransientKmsError
from tenantkeys.jobs.deadletters import Attempt
from tenantkeys.jobs.runner import JobRunner, Outcome
from tenantkeys.keys.rotation import RotationSweep
from tenantkeys.resilience import RetryPolicy
from tenantkeys.telemetry import fleet, tracing
from workers import consumer
from workers.app import app, current, settings
from workers.fastpath import acks
from workers.fastpath.batches import FencedBatches
from workers.outcomes import (
    BatchTally,
    EventSender,
    Finished,
    arrival_events,
    celery_outcome,
    note_received,
    observe,
    requeue,
    send_events,
    write_results,
)
from workers.requests import RedactedRequest

log = logging.getLogger(__name__)


class RedactedTask(Task):  # type: ignore[misc]
    """Every message it publishes (including retries) shows hashes, never payloads; so does
    every remote-control answer about its jobs (``celery inspect active`` ..., Flower)."""

    #: ``info()`` gives the redacted reprs even when Celery asks for the raw arguments.
    Request = RedactedRequest

    #: A job failing with one of ours is an outcome, not a crash: Celery logs it in one line
    #: (no traceback) and still stores FAILURE and sends task-failed.
    throws = (TenantKeysError,)

    def apply_async(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        options["argsrepr"], options["kwargsrepr"] = jobs.argsrepr(args, kwargs)
        return super().apply_async(args, kwargs, **options)


def _queue(delivery_info: dict[str, Any] | None) -> str | None:
    return (delivery_info or {}).get("routing_key")


def run_request(task: Task, method: Callable[..., Outcome], kwargs: dict[str, Any]) -> Any:
    """Run a regular task's request through its runner method (``JobRunner.create_keys``...):
    its result, or a retry (Celery's RETRY state, the job published again)."""
    request = task.request
    process = current()
    outcome = method(
        process.runner,
        kwargs,
        job_id=request.id,
        retries=request.retries,
        queue=_queue(request.delivery_info),
        worker=request.hostname,
        args=request.args,
    )
    observe(outcome, request.headers)
    fleet.flush(process.runtime.redis, settings.redis_prefix)
    if outcome.retry_in is not None:
        requeue(
            task,
            request.id,
            kwargs,
            request.headers,
            retries=request.retries + 1,
            countdown=outcome.retry_in,
        )
        raise Retry(exc=outcome.error, when=outcome.retry_in)
    state, result = celery_outcome(outcome)
    if state == states.FAILURE:
        raise result  # Celery's FAILURE: the error's class, its code and doc in the arguments
    return result


class SignBatches(RedactedTask, FencedBatches):
    """The batched ``sign`` task: acks what it settled, gives the rest back to the queue."""

    flush_every = settings.sign_batch_size
    flush_interval = settings.sign_batch_interval_seconds
    batch_soft_time_limit = settings.task_soft_time_limit_seconds
    batch_time_limit = settings.task_time_limit_seconds

    def flush(self, requests: Sequence[Any]) -> Any:
        # Celery's worker counts a task when its pool accepts it (``celery inspect stats``'
        # total, the heartbeat's processed count, Flower's worker page); celery-batches does
        # not, so the batch's jobs are counted here, once per batch.
        worker_state.total_count[self.name] += len(requests)
        worker_state.all_total_count[0] += len(requests)
        return super().flush(requests)

    def on_batch_finished(self, requests: Sequence[Any], result: Any) -> None:
        # Ack the jobs the batch settled (result stored, or published again); every other one
        # (results not stored, an error outside the runner: ``sign`` then returns nothing)
        # goes back to the queue as it was, so no job is acked without its outcome.
        settled = set(result) if isinstance(result, list) else set()
        acks.acknowledge([r for r in requests if r.id in settled])
        for request in requests:
            if request.id not in settled and not request.acknowledged:
                log.warning("job %s of a signing batch not settled; requeued", request.id)
                request.reject(requeue=True)

    def on_batch_lost(self, requests: Sequence[Any], info: Any) -> None:
        # The pool process died (WorkerLostError) or hit the hard time limit: each job is sent
        # again with one more attempt counted, or dead-lettered after the last one, so a KMS
        # that stays slower than the time limit ends every job instead of looping it for ever.
        log.error("a signing batch of %d jobs was lost (%r)", len(requests), info)
        events = [event for r in requests for event in arrival_events(r, None)]
        finished: list[Finished] = []
        for request in requests:
            done = _retry_or_dead_letter(self, request, info)
            if done is not None:
                finished.append(done)
        try:
            write_results(app, finished, events)
        except Exception as exc:  # the dead letters are stored; only their results are not
            log.warning("results of %d dead-lettered jobs not stored (%s)", len(finished), exc)
        send_events(app, requests[0].hostname if requests else None, events)


def _retry_or_dead_letter(task: SignBatches, request: Any, info: Any) -> Finished | None:
    """A job of a lost batch: again with one more attempt, or to the dead-letter store."""
    headers = request.request_dict or {}
    attempts = int(headers.get("retries") or 0) + 1
    kwargs = dict(request.kwargs or {})
    finished = None
    try:
        if attempts > settings.retry_max:
            error = TransientKmsError(
                f"the signing batch exceeded its time limit or its process died "
                f"{attempts} times ({type(getattr(info, 'exception', info)).__name__})",
                code=ErrorCode.KMS_TIMEOUT,
            )
            where = Attempt(request.id, attempts - 1, jobs.SIGN_QUEUE, request.hostname or "")
            envelope = consumer.writer().write(jobs.SIGN, kwargs, error, where)
            finished = Finished(
                request, Outcome(envelope, error=error, signatures=("failed",)), headers
            )
        else:
            delay = RetryPolicy.from_settings(settings).delay(attempts - 1)
            requeue(task, request.id, kwargs, headers, retries=attempts, countdown=delay)
    except Exception as exc:  # cannot re-send or record: keep it in the broker instead
        log.error("job %s requeued as it was (%s)", request.id, type(exc).__name__)
        request.reject(requeue=True)
        return None
    request.acknowledge()
    return finished


def _received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """celery-batches fires ``task_received`` but sends no task-received event: without one
    Flower knows a batched job by id only (no name, no arguments, Processed 0). The time is
    noted here; the pool sends the event with the job's outcome (``outcomes.arrival_events``)."""
    if request is not None and isinstance(request.task, SignBatches):
        note_received(request)


signals.task_received.connect(_received, weak=False)

#: The pool process's batch events, sent from a thread of its own (``outcomes.EventSender``).
_events = EventSender(app)


def _send_queued_events(**_: Any) -> None:
    _events.close()


signals.worker_process_shutdown.connect(_send_queued_events, weak=False)


@app.task(name=jobs.SIGN, base=SignBatches, acks_late=True, bind=True)  # type: ignore[untyped-decorator]
def sign(self: SignBatches, requests: list[SimpleRequest]) -> list[str]:
    """Sign many single jobs in one call path; returns the ids of the jobs it settled.

    The parent acks exactly those; every other job of the batch goes back to the queue.
    """
    process = current()
    finished: list[Finished] = []
    settled: list[str] = []
    events: list[tuple[str, dict[str, Any]]] = []
    tally = BatchTally([request.id for request in requests])
    # A batch shares one time limit: when KMS calls turn slow, hand the rest back to the
    # queue (same job, same retry count) instead of running the whole batch into the limit.
    budget = time.monotonic() + settings.task_soft_time_limit_seconds / 2
    try:
        for request in requests:
            headers = request.request_dict or {}
            retries = int(headers.get("retries") or 0)
            if time.monotonic() > budget:
                requeue(self, request.id, request.kwargs, headers, retries=retries)
                settled.append(request.id)
                tally.handed_back += 1
                events.extend(arrival_events(request, None))
                continue
            events.extend(arrival_events(request, time.time()))
            # One span per job, continuing its producer's trace (the batch has a trace of its own).
            with tracing.job_span(jobs.SIGN, request.id, headers):
                started = time.perf_counter()
                outcome = process.runner.sign(
                    request.kwargs,
                    job_id=request.id,
                    retries=retries,
                    queue=_queue(request.delivery_info),
                    worker=request.hostname,
                    args=request.args,
                )
            if outcome.retry_in is None:
                finished.append(Finished(request, outcome, headers, time.perf_counter() - started))
                continue
            requeue(
                self,
                request.id,
                request.kwargs,
                headers,
                retries=retries + 1,
                countdown=outcome.retry_in,
            )
            settled.append(request.id)
            tally.retried += 1
            observe(outcome, headers)
            events.append(("task-retried", {"uuid": request.id, "exception": repr(outcome.error)}))
    finally:
        # Even when the loop is cut short (the soft time limit), the jobs already signed keep
        # their results: one round trip or two for the batch instead of two per job. The
        # fleet's counters go first (a caller holding a result finds its lookups counted), in
        # the results' round trip when the result store is that Redis.
        try:
            write_results(
                app,
                finished,
                events,
                fleet_client=process.runtime.redis,
                fleet_prefix=settings.redis_prefix,
            )
        except Exception as exc:  # not stored: those jobs go back to the queue, not acked
            log.error("results of %d signed jobs not stored (%s); requeued", len(finished), exc)
            tally.not_stored += len(finished)
        else:
            settled.extend(f.request.id for f in finished)
            tally.count(finished)
        process.observe_cache()
        log.info("%s", tally)
    _events.send(requests[0].hostname if requests else None, events)
    return settled


@app.task(name=jobs.SIGN_BATCH, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def sign_batch(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Many payloads in one job; each item gets its own result, bad items do not fail others."""
    return run_request(self, JobRunner.sign_batch, kwargs)


@app.task(name=jobs.CREATE_KEYS, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def create_keys(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Create the tenant's keys (those it lacks)."""
    return run_request(self, JobRunner.create_keys, kwargs)


@app.task(name=jobs.ROTATE_KEY, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def rotate_key(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Rotate (tenant, purpose), only if ``expected_version`` is still active when given."""
    return run_request(self, JobRunner.rotate_key, kwargs)


@app.task(name=jobs.REVOKE_KEY, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def revoke_key(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Revoke a key version by kid (an active one is replaced at once)."""
    return run_request(self, JobRunner.revoke_key, kwargs)


@app.task(name=jobs.ROTATION_SWEEP, base=RedactedTask, bind=True)  # type: ignore[untyped-decorator]
def rotation_sweep(self: Task, *args: Any, **kwargs: Any) -> Any:
    """Enqueue one conditional rotate_key per due key; also recover stale dead-letter replays.

    It takes no arguments: a message that brings some fails with TK-INVALID-ARGUMENT (not
    Python's TypeError), as every other job's bad arguments do."""
    try:
        if args:
            raise InvalidRequest("job arguments must be keyword arguments (a JSON object)")
        jobs.parse_arguments(jobs.ROTATION_SWEEP, kwargs)
    except InvalidRequest as refused:
        raise jobs.job_failure(jobs.failed(refused)["error"]) from None
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
