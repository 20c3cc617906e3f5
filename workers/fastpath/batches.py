"""celery-batches' ``Batches``, fenced: a flush timer that survives reconnects, a lost-batch path.

A task class derives from :class:`FencedBatches` and says what a finished and a lost batch mean
for its jobs (:meth:`~FencedBatches.on_batch_finished`, :meth:`~FencedBatches.on_batch_lost`);
the celery-batches internals it needs stay here:

- Celery's consumer rebuilds task strategies on every (re)connect and clears its timer, but
  celery-batches arms its flush timer (``Batches._tref``) only once: :meth:`Strategy` re-arms
  it, or after a broker restart fewer jobs than a full batch would wait unflushed (and unacked)
  for ever.
- ``Batches.flush`` hands the batch to the pool (``Batches._pool``) with
  ``celery_batches.trace.apply_batches_task`` and acks on return only: if the pool process dies
  (``WorkerLostError``) or hits the hard time limit, nothing is acked and nothing says so, and
  the jobs wait for the visibility timeout. :meth:`flush` adds the pool's error callback, which
  calls :meth:`on_batch_lost`.

Every job of a batch has ``acks_late`` semantics here: acked after the batch ran (or was lost
and dealt with), never before.

**Batches grow with the load** (prefork pool). celery-batches flushes its buffer every
``flush_interval`` whatever the pool is doing, so under load every tick makes a small batch
that waits in the pool's queue behind the others, each paying the batch's fixed cost (its
result, event and counter round trips). Once that cost outgrows the tick the pool falls behind
for good: the queue fills to the prefetch limit and stays there, every job waiting
``prefetch / rate`` (160-200 ms at 780 jobs/s; the "bimodal" runs of bench scenario 10). Here,
while every pool process runs one of this task's batches, the tick keeps the buffer, and the
first batch to come back flushes it at once: batches grow with the load, the pool's queue stays
empty, and a job waits at most about one batch. A buffer of ``flush_every`` jobs is flushed
anyway. The threads and solo pools (no process count) flush on the tick, as celery-batches does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from workers.fastpath import acks

log = logging.getLogger(__name__)


class FencedBatches(Batches):  # type: ignore[misc]
    """A celery-batches task whose batches end in one of two hooks, never in silence."""

    #: Seconds a batch's pool call may take before SoftTimeLimitExceeded is raised in it, and
    #: before its process is killed (the batch is then lost); ``None``: the worker's
    #: ``task_soft_time_limit`` / ``task_time_limit``. Not Celery's ``soft_time_limit`` /
    #: ``time_limit`` task attributes, which would travel in every message the task publishes.
    batch_soft_time_limit: float | None = None
    batch_time_limit: float | None = None

    def on_batch_finished(self, requests: Sequence[Any], result: Any) -> None:
        """The pool ran the batch: ``result`` is what the task returned (``None`` if it raised).

        This default acks every job, together. A task that can tell which jobs it settled
        (say, by returning their ids) acks those and rejects the others with ``requeue=True``.
        """
        acks.acknowledge(requests)

    def on_batch_lost(self, requests: Sequence[Any], reason: Any) -> None:
        """The pool lost the batch (its process died, or the hard time limit killed it).

        Each request must end acked (sent again, dead-lettered) or rejected. This default
        queues each job again as it was (``reject(requeue=True)``), as Celery does for a lost
        worker with ``task_reject_on_worker_lost``; a job that always kills its process then
        loops, so a real task counts attempts and stops (see ``workers.tasks``).
        """
        for request in requests:
            request.reject(requeue=True)

    #: Batches handed to the pool and not back yet (a token each; the pool's result once
    #: ``apply_async`` returned it). One dict per task class instance, made on first flush.
    _running: dict[object, Any] | None = None

    def _do_flush(self) -> None:
        if self._held():
            return
        super()._do_flush()

    def _held(self) -> bool:
        """Whether the buffer waits for a pool process: every one runs one of our batches and
        the buffer is not a full batch yet."""
        slots = self._slots()
        if slots is None or not self._running:
            return False
        for token, result in list(self._running.items()):
            if result is not None and _ready(result):  # its callback is due; never wait on it
                self._running.pop(token, None)
        return len(self._running) >= slots and self._buffer.qsize() < self.flush_every

    def _batch_back(self, token: object) -> None:
        """A batch came back (or was lost): its process is free for what the buffer holds."""
        if self._running is not None:
            self._running.pop(token, None)
        if self._slots() is not None and not self._buffer.empty():
            try:
                self._do_flush()
            except Exception as exc:  # the returning batch's own hook must still run
                log.error(
                    "jobs waiting for a pool process were not handed over (%r); they stay "
                    "unacked and come back to the queue",
                    exc,
                )

    def _slots(self) -> int | None:
        """The prefork pool's process count; ``None`` for pools that call back from their own
        threads (threads) or inline (solo), which flush on the tick only."""
        slots = getattr(self._pool, "num_processes", None)
        return slots if isinstance(slots, int) and slots > 0 else None

    #: A flush is due when the consumer's event loop finishes its current round.
    _flush_due = False

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        armed: Any = getattr(self, "_tref", None)
        if armed is not None:
            with contextlib.suppress(Exception):
                armed.cancel()
        self._tref = None
        self._flush_due = False
        handler = super().Strategy(task, app, consumer)
        hub = getattr(consumer, "hub", None)
        if hub is None or self._slots() is None:
            return handler  # flushed by the tick alone
        return self._flushing_after_round(handler, hub)

    def _flushing_after_round(self, handler: Any, hub: Any) -> Any:
        """``handler``, and a flush once the event loop has delivered this round of messages
        (one take, many messages): a free pool process need not wait for the tick."""

        def on_message(*args: Any, **kwargs: Any) -> None:
            handler(*args, **kwargs)
            if not self._flush_due:
                self._flush_due = True
                hub.call_soon(self._flush_now)

        return on_message

    def _flush_now(self) -> None:
        self._flush_due = False
        if not self._buffer.empty():
            self._do_flush()

    def flush(self, requests: Sequence[Any]) -> Any:
        simple = ([SimpleRequest.from_request(request) for request in requests],)
        token = object()
        tracked = self._slots() is not None  # callbacks on this (the consumer's) thread
        if tracked:
            if self._running is None:
                self._running = {}
            self._running[token] = None

        def on_return(result: Any) -> None:
            # The next batch first (the freed process starts on it), then this one's acks.
            self._batch_back(token)
            self.on_batch_finished(requests, result)

        def on_error(reason: Any) -> None:
            log.error("a batch of %d jobs of %s was lost (%r)", len(requests), self.name, reason)
            self._batch_back(token)
            self.on_batch_lost(requests, reason)

        try:
            applied = self._pool.apply_async(
                apply_batches_task,
                (self, simple, 0, None),
                callback=on_return,
                error_callback=on_error,
                soft_timeout=self.batch_soft_time_limit,
                timeout=self.batch_time_limit,
            )
        except BaseException:
            if self._running is not None:
                self._running.pop(token, None)  # never handed over: it holds no process
            raise
        if tracked and self._running is not None and token in self._running:
            self._running[token] = applied  # still running: ``_held`` may ask it
        return applied


def _ready(result: Any) -> bool:
    """Whether a pool result says its batch is over (a pool without ``ready()``: it is)."""
    ready = getattr(result, "ready", None)
    try:
        return True if ready is None else bool(ready())
    except Exception:  # a result that cannot tell must not hold the buffer
        return True
