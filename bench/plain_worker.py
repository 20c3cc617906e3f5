"""Scenario 4's worker: plain Celery, one ordinary task per payload, no aggregation.

Same broker, result backend, JSON serializer and ack settings as the service
(:func:`tenantkeys.queue.config.celery_config`), and the same KeyService with a warm L1, so the only
difference from scenario 3 is what the service adds on top: batching single jobs together.
Run as ``celery -A bench.plain_worker worker -Q <queue>`` with the run's ``TENANTKEYS_*``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from tenantkeys import jobs
from tenantkeys.config import load_settings
from tenantkeys.keys.runtime import Runtime, build_runtime
from tenantkeys.queue.config import celery_config

TASK = "tkbench.plain_sign"
QUEUE = os.environ.get("TKBENCH_PLAIN_QUEUE", "tkbench.plain")

settings = load_settings()
app = Celery("tkbench-plain", set_as_current=True)
app.conf.update(celery_config(settings))
app.conf.update(task_default_queue=QUEUE, task_routes={TASK: {"queue": QUEUE}})
_runtime: tuple[int, Runtime] | None = None


def _service() -> Any:
    global _runtime  # noqa: PLW0603 - one runtime per pool process
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), build_runtime(settings, migrate=False))
    return _runtime[1].service


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def plain_sign(tenant_id: str, payload: str) -> dict[str, str]:
    """Sign one payload; the result is the signature record."""
    signature = _service().sign(tenant_id, jobs.decode_payload(payload))
    result: dict[str, str] = signature.to_dict()
    return result
