"""Store a signing batch's results together: two Redis round trips per batch, not two per job.

Celery's ``backend.mark_as_done`` reads the job's key (a stored success is never overwritten,
so a duplicate run cannot replace a result a caller may have read) and then writes it with a
SETEX + PUBLISH pipeline: two round trips per job (what that cost a batched ``sign`` task:
docs/performance.md). :func:`store` keeps those semantics for a whole batch -- one MGET, then one
pipeline of SETEX + PUBLISH per job -- with the value, key, expiry and size limit Celery's
Redis backend would use. A failed job is stored as Celery's FAILURE with its exception, as
``mark_as_failure`` would store it. Other backends (and chord members, which sign jobs never
are) take ``mark_as_done`` / ``mark_as_failure`` job by job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.backends.base import Backend
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError

#: ``(request, state, result)``: state SUCCESS with the result document, or FAILURE with the
#: exception the job ended with.
Done = tuple[Any, str, Any]


@dataclass
class Prelude:
    """Commands to send in the results' first round trip, ahead of them (a batch's fleet
    counters: a caller holding a result finds them counted). ``sent`` once Redis took them:
    a retry does not send them twice, and a caller whose store failed knows whether to keep
    them for later."""

    queue: Callable[[Any], None]
    sent: bool = False


def store(backend: Backend, done: Sequence[Done], prelude: Prelude | None = None) -> None:
    """Store each job's outcome under its own job id; ``prelude`` (a Redis backend's) first."""
    wanted = [job for job in done if not job[0].ignore_result]
    fast = isinstance(backend, RedisBackend) and not any(
        getattr(request, "chord", None) for request, _, _ in done
    )
    if prelude is not None and isinstance(backend, RedisBackend) and not (fast and wanted):
        with backend.client.pipeline(transaction=False) as alone:  # no fast-path round trip
            prelude.queue(alone)
            alone.execute()
        prelude.sent = True
    if not done:
        return
    if not fast:
        for request, state, result in done:
            if state == states.FAILURE:
                backend.mark_as_failure(request.id, result, request=request, call_errbacks=False)
            else:
                backend.mark_as_done(request.id, result, request=request)
        return
    if wanted:
        backend.ensure(_store_redis, (backend, wanted, prelude))


def _store_redis(backend: RedisBackend, done: Sequence[Done], prelude: Prelude | None) -> None:
    keys = [backend.get_key_for_task(request.id) for request, _, _ in done]
    if prelude is not None and not prelude.sent:
        with backend.client.pipeline(transaction=False) as first:
            prelude.queue(first)
            first.mget(keys)
            current = first.execute()[-1]
        prelude.sent = True
    else:
        current = backend.client.mget(keys)
    with backend.client.pipeline(transaction=False) as pipe:
        for key, stored, (request, state, result) in zip(keys, current, done, strict=True):
            if stored is not None and backend.decode_result(stored)["status"] == states.SUCCESS:
                continue  # a duplicate run: the first result stands (as in mark_as_done)
            value = backend.encode(_meta(backend, request, state, result))
            if isinstance(value, str) and len(value) > backend._MAX_STR_VALUE_SIZE:
                raise BackendStoreError("value too large for Redis backend", task_id=request.id)
            pipe.set(key, value, ex=backend.expires or None)
            pipe.publish(key, value)
        pipe.execute()


def _meta(backend: RedisBackend, request: Any, state: str, result: Any) -> dict[str, Any]:
    meta: dict[str, Any] = backend._get_result_meta(
        result=backend.encode_result(result, state),
        state=state,
        traceback=None,
        request=request,
    )
    meta["task_id"] = str(request.id)
    return meta
