"""What TK-JOB-TIMEOUT promises, kept: the job stays queued and ``job show`` fetches it later.

A queued ``sign`` with no worker running times out naming ``tenantkeys job show ID`` and how to
check for a worker; ``job show`` says PENDING (exit 3) until a real worker starts, then prints
the JWS (exit 0), which verifies; a job that failed shows its coded error (exit 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Deployment, redis_deployment, run_cli, wait_for

pytestmark = pytest.mark.e2e

EXIT_PENDING = 3


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with redis_deployment(tmp_path) as made:
        yield made


tenantkeys = run_cli


def test_a_timed_out_job_is_fetched_later_by_its_id(deployment: Deployment) -> None:
    created = tenantkeys(deployment, "keys", "create", "--tenant", "alpha")
    assert created.returncode == 0, created.stderr
    job = "job-show-e2e-1"

    timed_out = tenantkeys(
        deployment, "sign", "--via-queue", "--tenant", "alpha", "--data", "x",
        "--timeout", "0.5", "--job-id", job,
    )  # fmt: skip
    assert timed_out.returncode == 2
    assert timed_out.stderr.startswith(f"TK-JOB-TIMEOUT: no result for job {job}")
    assert f"`tenantkeys job show {job}`" in timed_out.stderr
    assert "celery -A workers.app:app inspect ping" in timed_out.stderr

    pending = tenantkeys(deployment, "job", "show", job)
    assert pending.returncode == EXIT_PENDING, pending.stderr
    assert json.loads(pending.stdout) == {"job_id": job, "state": "PENDING"}
    assert "Check that a worker is running" in pending.stderr

    deployment.worker("w1", concurrency=1)
    shown = wait_for(
        lambda: (done := tenantkeys(deployment, "job", "show", job)).returncode == 0 and done,
        60,
        "the queued job's result",
        0.5,
    )
    found = json.loads(shown.stdout)
    assert found["state"] == "SUCCESS" and found["result"]["tenant_id"] == "alpha"
    verified = tenantkeys(
        deployment, "verify", "--tenant", "alpha", "--data", "x", "--jws", found["result"]["jws"]
    )
    assert verified.returncode == 0, verified.stderr

    failed_job = "job-show-e2e-2"
    failed = tenantkeys(
        deployment, "sign", "--via-queue", "--tenant", "ghost", "--data", "x",
        "--job-id", failed_job,
    )  # fmt: skip
    assert failed.returncode == 2 and failed.stderr.startswith("TK-KEY-NOT-FOUND"), failed.stderr
    shown_failed = tenantkeys(deployment, "job", "show", failed_job)
    assert shown_failed.returncode == 1, shown_failed.stderr
    assert json.loads(shown_failed.stdout)["error"]["code"] == "TK-KEY-NOT-FOUND"
    assert shown_failed.stderr.startswith("TK-KEY-NOT-FOUND: ")
    assert len(shown_failed.stderr.strip().splitlines()) == 1
