"""What a worker does with a job's outcome: the one requeue path and the one result writer.

* :func:`requeue` -- every "run it again" (a retry, a job handed back from a batch running out
  of time, a job of a lost batch) publishes the job under its own id with its retry count and
  the headers it carries (enqueue time, trace context). Published before the message is acked:
  at least once, never zero times.
* :func:`write_results` -- every result we store ourselves (a signing batch's, a lost batch's
  dead letters, a message no task could take) is stored together in Celery's own states
  (SUCCESS with the result document, FAILURE with the job's exception), counted in the metrics
  and announced to Flower in one events message. Regular tasks return their result to Celery
  or raise the same exception, and Celery stores it and sends its own events.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task, states

from tenantkeys import jobs
from tenantkeys.jobs.runner import Outcome
from tenantkeys.queue.config import broker_countdown
from tenantkeys.telemetry import fleet
from workers.fastpath import results

log = logging.getLogger(__name__)

#: Message headers a re-published job keeps: its enqueue time and trace context (the
#: tracing instrumentation replaces the latter with the current span's when it is on).
CARRIED_HEADERS = (jobs.ENQUEUED_AT_HEADER, "traceparent", "tracestate")


def carried(headers: dict[str, Any] | None) -> dict[str, Any]:
    """The headers of ``headers`` a re-published job keeps."""
    return {name: headers[name] for name in CARRIED_HEADERS if headers and name in headers}


def requeue(
    task: Task,
    job_id: str,
    kwargs: dict[str, Any],
    headers: dict[str, Any] | None,
    *,
    retries: int,
    countdown: float | None = None,
) -> None:
    """Publish the job again under ``job_id`` with ``retries`` attempts counted."""
    task.apply_async(
        # JSON, whatever form the job came in: a msgpack job's payloads go as base64.
        kwargs=jobs.json_safe(kwargs),
        task_id=job_id,
        retries=retries,
        headers=carried(headers),
        # Quorum queues: the delay waits in RabbitMQ, in whole seconds (queue/config.py).
        countdown=broker_countdown(task.app.conf.task_default_queue_type, countdown),
    )


@dataclass(frozen=True)
class ResultOnly:
    """The request of a job known only by its id (a message no task could take)."""

    id: str
    ignore_result: bool = False
    chord: None = None
    group: None = None
    children: tuple[()] = ()


@dataclass(frozen=True)
class Finished:
    """A job whose outcome is decided: what to store under its id, and its metric labels."""

    request: Any
    outcome: Outcome
    headers: dict[str, Any]
    runtime: float = 0.0


def observe(outcome: Outcome, headers: dict[str, Any] | None) -> None:
    """Metrics of a job whose outcome is decided (its result is stored or being returned)."""
    outcome.record_metrics(jobs.enqueued_at(headers))


def write_results(
    app: Celery,
    finished: Sequence[Finished],
    events: list[tuple[str, dict[str, Any]]],
    *,
    fleet_client: Any = None,
    fleet_prefix: str = "",
) -> None:
    """Store every result (one round trip or two), then count and announce each job.

    The fleet counters of this process go first (a caller holding a result finds its lookups
    counted): in the results' first round trip when ``fleet_client`` is the result store's
    own Redis, else in a round trip of their own. Raises when the results could not be
    stored: the caller must then not ack those jobs.
    """
    stored = [(f.request, *celery_outcome(f.outcome)) for f in finished]
    prelude = taken = None
    if fleet_client is not None:
        if stored and _same_redis(fleet_client, getattr(app.backend, "client", None)):
            counts = taken = fleet.take()
            prelude = results.Prelude(lambda pipe: fleet.queue(pipe, fleet_prefix, counts))
        else:
            fleet.flush(fleet_client, fleet_prefix)
    try:
        results.store(app.backend, stored, prelude if taken else None)
    except Exception:
        if prelude is not None and taken and not prelude.sent:
            fleet.give_back(taken)  # not counted: the next flush adds them
        raise
    for f, (_request, state, result) in zip(finished, stored, strict=True):
        observe(f.outcome, f.headers)
        fields: dict[str, Any] = {"uuid": f.request.id, "runtime": f.runtime}
        if state == states.FAILURE:
            events.append(("task-failed", {**fields, "exception": repr(result)}))
        else:
            events.append(("task-succeeded", fields))


def _same_redis(one: Any, other: Any) -> bool:
    """Whether two redis-py clients talk to the same server and database."""
    try:
        a, b = one.connection_pool.connection_kwargs, other.connection_pool.connection_kwargs
    except AttributeError:
        return False
    fields = ("host", "port", "path", "db", "username")
    return all(a.get(f) == b.get(f) for f in fields) and type(one.connection_pool) is type(
        other.connection_pool
    )


def celery_outcome(outcome: Outcome) -> tuple[str, Any]:
    """``(state, result)`` of a decided job: SUCCESS and its result document, or FAILURE
    and the exception it ended with (:func:`tenantkeys.jobs.job_failure`)."""
    envelope = outcome.result or {}
    if envelope.get("ok"):
        return states.SUCCESS, envelope
    return states.FAILURE, jobs.job_failure(envelope.get("error") or {})


@dataclass
class BatchTally:
    """What happened to the jobs of one signing batch: its one INFO log line, ids and counts
    only (never a payload, never a tenant id)."""

    ids: list[str]
    ok: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    failed: int = 0
    retried: int = 0
    handed_back: int = 0
    not_stored: int = 0
    started: float = field(default_factory=time.perf_counter)

    def count(self, finished: Sequence[Finished]) -> None:
        """Count the jobs whose results were stored, by outcome."""
        for f in finished:
            envelope = f.outcome.result or {}
            if envelope.get("ok"):
                self.ok += 1
            elif (envelope.get("error") or {}).get("dead_letter"):
                self.dead_lettered += 1
            elif f.outcome.signatures[:1] == ("rejected",):
                self.rejected += 1
            else:
                self.failed += 1

    def __str__(self) -> str:
        return (
            f"signing batch of {len(self.ids)} jobs: ok={self.ok} rejected={self.rejected} "
            f"dead_lettered={self.dead_lettered} failed={self.failed} retried={self.retried} "
            f"handed_back={self.handed_back} not_stored={self.not_stored} "
            f"in {(time.perf_counter() - self.started) * 1000:.1f} ms; ids {','.join(self.ids)}"
        )


#: Where the worker's parent notes when it received a batched job: in the job's
#: ``request_dict``, which travels with it to the pool (and is never published again).
RECEIVED_AT = "tk_received_at"


def note_received(request: Any) -> None:
    """In the worker's parent, on ``task_received``: note the time, and nothing else.

    celery-batches sends no task-received event; the pool sends it with the job's outcome
    (:func:`arrival_events`), so the parent, which serves every job, does one dict write.
    """
    if request.request_dict is not None:
        request.request_dict[RECEIVED_AT] = time.time()


def arrival_events(request: Any, started_at: float | None) -> list[tuple[str, dict[str, Any]]]:
    """A batched job's task-received (at the time the parent noted) and, when it ran,
    task-started: the fields Celery's own worker sends, arguments redacted.

    The producer's ``argsrepr`` / ``kwargsrepr`` are redacted already; a producer that set
    none (a client in another language) gets them redacted here: hash and size, never bytes.
    """
    found = request.request_dict or {}
    args, kwargs = found.get("argsrepr"), found.get("kwargsrepr")
    if not kwargs:
        args, kwargs = jobs.argsrepr(request.args, request.kwargs)
    received = {
        "uuid": request.id,
        "name": request.name,
        "args": args,
        "kwargs": kwargs,
        "retries": found.get("retries") or 0,
        "root_id": found.get("root_id"),
        "parent_id": found.get("parent_id"),
        "eta": found.get("eta"),
        "expires": found.get("expires"),
        "timestamp": found.get(RECEIVED_AT) or started_at or time.time(),
    }
    events: list[tuple[str, dict[str, Any]]] = [("task-received", received)]
    if started_at is not None:
        events.append(("task-started", {"uuid": request.id, "timestamp": started_at}))
    return events


def send_events(
    app: Celery, hostname: str | None, events: list[tuple[str, dict[str, Any]]]
) -> None:
    """A batch's task events for Flower: each job's received, started and succeeded / failed
    / retried (celery-batches sends none of them).

    They travel as one ``task.multi`` message per batch, as Celery's own worker buffers its
    task events; Celery's event receivers (Flower, ``celery events``) unpack the list, and each
    event keeps its own timestamp.
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


class EventSender:
    """Sends a pool process's batch events from a thread of its own, in order: a batch's
    process is free for the next batch once its results are stored, not after one more round
    trip to the broker for Flower (p99 at 522 jobs/s: 24-30 ms against 28-107 ms sent in
    line, docs/performance.md). :meth:`close` (at the process's shutdown) sends what is
    queued. The thread starts with the first batch, after the fork. While the broker does not
    take events, at most ``limit`` batches' events wait; later ones are dropped and counted in
    a warning, the first and every ``limit``-th (events are best effort: the results are
    stored already)."""

    def __init__(self, app: Celery, limit: int = 1_000) -> None:
        self.app = app
        self.limit = limit
        self.dropped = 0
        self._queue: queue.SimpleQueue[tuple[str | None, list[tuple[str, dict[str, Any]]]] | None]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def send(self, hostname: str | None, events: list[tuple[str, dict[str, Any]]]) -> None:
        if not events or not self.app.conf.worker_send_task_events:
            return
        if self._thread is None or self._pid != os.getpid():
            self._queue = queue.SimpleQueue()  # never a queue a parent's thread was serving
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="tk-events", daemon=True)
            self._thread.start()
        if self._queue.qsize() >= self.limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % self.limit == 0:
                log.warning(
                    "task events of %d batches dropped: the broker has not taken the last %d",
                    self.dropped,
                    self.limit,
                )
            return
        self._queue.put((hostname, events))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            send_events(self.app, *item)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (at most ``timeout`` seconds), then stop the thread."""
        if self._thread is not None and self._pid == os.getpid():
            self._queue.put(None)
            self._thread.join(timeout)
        self._thread = None
