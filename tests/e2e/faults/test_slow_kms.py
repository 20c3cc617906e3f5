"""A KMS that stays slower than the task time limit ends each signing job: retried after the
time limit, then dead-lettered after TENANTKEYS_RETRY_MAX, never redelivered for ever.

Found by this suite: a signing batch that hit the hard limit was requeued without counting an
attempt, so with the KMS slow for good the same jobs went round with no result and no dead
letter. ``SignBatches.flush`` now passes the time limits to the pool and, when a batch is lost,
re-sends each job with one more attempt or dead-letters it after the last (workers/tasks.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.faults.outages import SlowProxy
from tests.e2e.faults.sending import results, send_sign_jobs
from tests.e2e.faults.test_kms_faults import AWS_ROOT, kms, slow_deployment  # noqa: F401
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e


def test_jobs_on_a_kms_slower_than_the_time_limit_end_in_the_dead_letter_store(
    kms: object,  # noqa: F811
    tmp_path: Path,
) -> None:
    proxy = SlowProxy(kms.port)  # type: ignore[attr-defined]
    proxy.start()
    deployment = slow_deployment(tmp_path, kms, proxy)
    try:
        deployment.worker("w1", concurrency=1, extra_env=AWS_ROOT)
        with deployment.client() as client:
            client.create_keys("s1", ["signing"], timeout=60)
            proxy.delay = 5.0  # and it stays slow
            sent = send_sign_jobs(client, ["s1"], 3, "pending-slow")
            ids = [job.job_id for job in sent]
            started = time.monotonic()
            # 3 attempts (1 + retry_max 2) of at most the 4 s hard limit each, plus delays.
            wait_for(
                lambda: len(results(deployment, ids)) == len(ids),
                40,
                "every job to end (retried after the time limit, then dead-lettered)",
                0.5,
            )
            envelopes = results(deployment, ids)
            assert all(e["error"].get("dead_letter") for e in envelopes.values()), envelopes
            print(f"ended in {time.monotonic() - started:.1f} s")
    finally:
        proxy.stop()
        deployment.stop()
