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

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        armed: Any = getattr(self, "_tref", None)
        if armed is not None:
            with contextlib.suppress(Exception):
                armed.cancel()
        self._tref = None
        return super().Strategy(task, app, consumer)

    def flush(self, requests: Sequence[Any]) -> Any:
        simple = ([SimpleRequest.from_request(request) for request in requests],)

        def on_return(result: Any) -> None:
            self.on_batch_finished(requests, result)

        def on_error(reason: Any) -> None:
            log.error("a batch of %d jobs of %s was lost (%r)", len(requests), self.name, reason)
            self.on_batch_lost(requests, reason)

        return self._pool.apply_async(
            apply_batches_task,
            (self, simple, 0, None),
            callback=on_return,
            error_callback=on_error,
            soft_timeout=self.batch_soft_time_limit,
            timeout=self.batch_time_limit,
        )
