"""``tenantkeys job show JOB_ID``: a queued job's state and result, by its id.

What TK-JOB-TIMEOUT promises: a job that outlived its caller's wait stays queued, and its
result can be fetched later by the job id (results are kept TENANTKEYS_RESULT_EXPIRES_SECONDS).
"""

from __future__ import annotations

import sys

import click

from tenantkeys.cli.context import emit, settings
from tenantkeys.errors import InvalidRequest, TenantKeysError

#: Exit status of ``job show`` for a job that failed (its error is the one line on stderr).
EXIT_FAILED = 1
#: Exit status of ``job show`` for a job with no result yet (queued, running, or unknown).
EXIT_PENDING = 3
_MAX_JOB_ID = 200


def check_job_id(value: str) -> str:
    """A job id as Celery stores it: 1-200 printable ASCII characters, no spaces."""
    if not (1 <= len(value) <= _MAX_JOB_ID and value.isascii() and value.isprintable()) or (
        " " in value
    ):
        raise InvalidRequest(
            f"job id {value[:40]!r} must be 1-{_MAX_JOB_ID} printable ASCII characters, no spaces"
        )
    return value


def worker_check() -> str:
    """How to tell whether a worker runs; what a job with no result calls for."""
    return (
        "Check that a worker is running: `celery -A workers.app:app inspect ping` (any "
        "worker), `tenantkeys worker-ready` (this host's), or Flower's Workers page"
    )


@click.group("job")
def job_group() -> None:
    """Queued jobs, by id."""


@job_group.command("show")
@click.argument("job_id")
def show_command(job_id: str) -> None:
    """Print the job's state and result as one JSON object.

    Exit 0 when it succeeded, 1 when it failed (its coded error on stderr), 3 when it has no
    result (yet): queued, running, unknown, or its result expired.
    """
    from tenantkeys import jobs
    from tenantkeys.client import SigningClient

    check_job_id(job_id)
    config = settings()
    with SigningClient.from_settings(config) as client:
        state = client.producer.state(job_id)
    if state.status == "SUCCESS":
        try:
            emit({"job_id": job_id, "state": state.status, "result": jobs.unwrap(state.result)})
        except TenantKeysError as rejected:  # an error result (Celery's SUCCESS of a reject)
            _failed(job_id, rejected)
        return
    if state.status == "FAILURE":
        detail = jobs.failure_detail(state.result)
        error = (
            jobs.error_from(detail)
            if detail is not None
            else TenantKeysError(f"job {job_id} failed in the worker; see its log")
        )
        _failed(job_id, error)
    emit({"job_id": job_id, "state": state.status})
    click.echo(
        f"no result for job {job_id} ({state.status}): it is queued or running, or the id is "
        f"unknown, or its result expired (kept {config.result_expires_seconds} s). "
        f"{worker_check()}",
        err=True,
    )
    sys.exit(EXIT_PENDING)


def _failed(job_id: str, error: TenantKeysError) -> None:
    emit({"job_id": job_id, "state": "FAILURE", "error": error.to_dict()})
    click.echo(error.one_line(), err=True)
    sys.exit(EXIT_FAILED)
