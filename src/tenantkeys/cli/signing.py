"""``tenantkeys sign``, ``verify`` and ``jwks``."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tenantkeys.cli.context import emit, runtime, settings
from tenantkeys.cli.jobs import check_job_id, worker_check
from tenantkeys.errors import ErrorCode, InvalidRequest, JobTimeout, KeyNotFound, VerificationError


def read_payload(file: Path | None, data: str | None, stdin: str | None) -> bytes:
    """Exactly one of --file, --data or '-' (standard input)."""
    given = [x for x in (file, data, stdin) if x is not None]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of --file F, --data S or - (standard input)")
    if file is not None:
        try:
            return file.read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"cannot read {file}: {exc.strerror}") from None
    if data is not None:
        return os.fsencode(data)  # the argument's bytes as given, UTF-8 or not
    if stdin != "-":
        raise InvalidRequest(f"unexpected argument {stdin!r}; use - for standard input")
    return sys.stdin.buffer.read()


payload_options = [
    click.option("--tenant", "tenant_id", required=True),
    click.option("--file", "file", type=click.Path(path_type=Path, dir_okay=False)),
    click.option("--data", "data"),
    click.argument("stdin", required=False),
    click.option(
        "--canonical-json", is_flag=True, help="Sign the RFC 8785 form of a JSON payload."
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


def with_payload(fn: F) -> F:
    """The payload options shared by ``sign`` and ``verify``."""
    for option in reversed(payload_options):
        fn = option(fn)
    return fn


@click.command("sign")
@with_payload
@click.option("--via-queue", is_flag=True, help="Send the job through the broker to a worker.")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True)
@click.option(
    "--job-id",
    help="With --via-queue: the job's id (default: a new UUID); the same id again is the same "
    "job, and `tenantkeys job show ID` fetches its result.",
)
def sign_command(
    tenant_id: str,
    file: Path | None,
    data: str | None,
    stdin: str | None,
    canonical_json: bool,
    via_queue: bool,
    timeout: float,
    job_id: str | None,
) -> None:
    """Sign a payload with the tenant's active key; print one JSON object."""
    if job_id is not None and not via_queue:
        raise InvalidRequest("--job-id names a queued job: use it with --via-queue")
    payload = read_payload(file, data, stdin)
    if via_queue:
        from tenantkeys.client import SigningClient

        job = check_job_id(job_id) if job_id is not None else str(uuid.uuid4())
        with SigningClient.from_settings(settings()) as client:
            try:
                result = client.sign(
                    tenant_id, payload, canonical_json=canonical_json, timeout=timeout, job_id=job
                )
            except JobTimeout:
                raise JobTimeout(
                    f"no result for job {job} within {timeout:g} s; it stays queued: "
                    f"`tenantkeys job show {job}` fetches its result later. {worker_check()}"
                ) from None
        emit(result.to_dict())
        return
    service = runtime(create=False).service
    emit(service.sign(tenant_id, payload, canonical_json=canonical_json).to_dict())


@click.command("verify")
@with_payload
@click.option(
    "--jws", required=True, help="The compact JWS (detached or not), exactly as it was issued."
)
def verify_command(
    tenant_id: str,
    file: Path | None,
    data: str | None,
    stdin: str | None,
    canonical_json: bool,
    jws: str,
) -> None:
    """Exit 0 when the JWS verifies for this tenant; 1 with the reason on stderr when not.

    Strict: a JWS in any spelling but the one issued (padding, whitespace, high-S, repeated
    header members, crit, b64 ...) is refused with its own code; see docs/verifying.md.
    """
    payload = read_payload(file, data, stdin)
    try:
        service = runtime(create=False).service
        result = service.verify(tenant_id, payload, jws, canonical_json=canonical_json)
    except (VerificationError, InvalidRequest) as exc:
        if exc.code in {ErrorCode.INVALID_TENANT, ErrorCode.PAYLOAD_TOO_LARGE}:
            raise
        click.echo(f"invalid: {exc.one_line()}", err=True)
        sys.exit(1)
    emit(
        {
            "valid": True,
            "tenant_id": result.tenant_id,
            "kid": result.kid,
            "version": result.version,
            "status": result.status,
        }
    )


@click.command("jwks")
@click.option("--tenant", "tenant_id", required=True)
def jwks_command(tenant_id: str) -> None:
    """The tenant's JWKS: active and retired public keys (revoked ones listed apart).

    A tenant with no key at all is TK-KEY-NOT-FOUND, not an empty set: an empty JWKS handed
    to a verifier fails every signature later, far from the mistyped tenant id. A tenant
    whose keys are all revoked does get its (empty) set, with the revoked kids.
    """
    service = runtime(create=False).service
    if not service.list_keys(tenant_id):
        raise KeyNotFound(
            f"tenant {tenant_id!r} has no keys in this key store; check the tenant id "
            "(tenantkeys keys list --tenant T) and that this is the deployment's store "
            "(tenantkeys config check shows it)"
        )
    emit(service.jwks(tenant_id))
