"""``tenantkeys sign``, ``verify`` and ``jwks``."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tenantkeys.cli.context import emit, runtime, settings
from tenantkeys.cli.jobs import check_job_id, worker_check
from tenantkeys.errors import (
    ErrorCode,
    InvalidRequest,
    JobTimeout,
    KeyNotFound,
    KeyRevoked,
    TenantKeysError,
    VerificationError,
)
from tenantkeys.signing import Signature, parse_compact, verify_parsed
from tenantkeys.signing.timestamps import (
    Timestamper,
    signed_before_revocation,
    verify_timestamp,
)

if TYPE_CHECKING:
    from tenantkeys.keys.service import KeyService


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
    signature = service.sign(tenant_id, payload, canonical_json=canonical_json)
    timestamper = Timestamper.from_settings(settings())
    if timestamper is not None:
        signature = replace(signature, timestamp=timestamper.stamp(signature.jws))
    emit(signature.to_dict())


@click.command("verify")
@with_payload
@click.option("--jws", help="The compact JWS (detached or not), exactly as it was issued.")
@click.option(
    "--signature",
    "signature_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The signature JSON `tenantkeys sign` printed (its jws, and its timestamp if any).",
)
@click.option("--timestamp", help="An RFC 3161 token (base64 TimeStampResp) over the JWS.")
@click.option(
    "--tsa-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The TSA's CA certificates (PEM) to trust [default: TENANTKEYS_TSA_CA_FILE].",
)
def verify_command(
    tenant_id: str,
    file: Path | None,
    data: str | None,
    stdin: str | None,
    canonical_json: bool,
    jws: str | None,
    signature_file: Path | None,
    timestamp: str | None,
    tsa_ca: Path | None,
) -> None:
    """Exit 0 when the JWS verifies for this tenant; 1 with the reason on stderr when not.

    Strict: a JWS in any spelling but the one issued (padding, whitespace, high-S, repeated
    header members, crit, b64 ...) is refused with its own code; see docs/verifying.md.
    With a timestamp, its genTime is checked too; a signature by a since revoked key is
    valid only when the timestamp proves it was made before the revocation.
    """
    payload = read_payload(file, data, stdin)
    jws, timestamp = _signature_parts(jws, signature_file, timestamp)
    try:
        service = runtime(create=False).service
        try:
            result = service.verify(tenant_id, payload, jws, canonical_json=canonical_json)
            facts: dict[str, Any] = {
                "valid": True,
                "tenant_id": result.tenant_id,
                "kid": result.kid,
                "version": result.version,
                "status": result.status,
            }
            if timestamp is not None:
                stamped = verify_timestamp(timestamp, jws, _tsa_trust(tsa_ca))
                facts.update(timestamp=stamped.isoformat(), timestamp_verdict="timestamp valid")
        except KeyRevoked:
            if timestamp is None:
                raise
            facts = _verify_revoked(service, tenant_id, payload, jws, canonical_json)
            stamped = verify_timestamp(timestamp, jws, _tsa_trust(tsa_ca))
            signed_before_revocation(timestamp, facts["revoked_at"])
            facts.update(
                timestamp=stamped.isoformat(),
                revoked_at=facts["revoked_at"].isoformat(),
                timestamp_verdict="signed before the key was revoked",
            )
    except (VerificationError, InvalidRequest) as exc:
        if exc.code in {ErrorCode.INVALID_TENANT, ErrorCode.PAYLOAD_TOO_LARGE}:
            raise
        click.echo(f"invalid: {exc.one_line()}", err=True)
        sys.exit(1)
    emit(facts)


def _signature_parts(
    jws: str | None, signature_file: Path | None, timestamp: str | None
) -> tuple[str, str | None]:
    """The JWS and timestamp from ``--jws``/``--timestamp`` or a signature JSON file."""
    if (jws is None) == (signature_file is None):
        raise InvalidRequest("give exactly one of --jws JWS or --signature FILE")
    if signature_file is None:
        assert jws is not None
        return jws, timestamp
    try:
        found = Signature.from_dict(json.loads(signature_file.read_bytes()))
    except OSError as exc:
        raise InvalidRequest(f"cannot read {signature_file}: {exc.strerror}") from None
    except (ValueError, TenantKeysError):
        raise InvalidRequest(
            f"{signature_file} is not the signature JSON `tenantkeys sign` prints",
            code=ErrorCode.INVALID_JSON,
        ) from None
    return found.jws, timestamp if timestamp is not None else found.timestamp


def _tsa_trust(tsa_ca: Path | None) -> Path:
    trust = tsa_ca or settings().tsa_ca_file
    if trust is None:
        raise InvalidRequest(
            "a timestamp is checked against its TSA's CA: give --tsa-ca FILE or set "
            "TENANTKEYS_TSA_CA_FILE"
        )
    return trust


def _verify_revoked(
    service: KeyService, tenant_id: str, payload: bytes | None, jws: str, canonical_json: bool
) -> dict[str, Any]:
    """Check a JWS against its revoked key; the facts, with ``revoked_at`` as a datetime.

    Only for a JWS that carries a timestamp: the caller still has to prove it predates the
    revocation. service.verify has checked the spelling and the tenant already.
    """
    parsed = parse_compact(jws)
    version = service.store.by_kid(tenant_id, parsed.header["kid"])
    if version is None or version.public_key is None or version.revoked_at is None:
        raise KeyRevoked(f"key {parsed.header['kid']!r} of tenant {tenant_id!r} was revoked")
    data = (
        parsed.payload
        if payload is None
        else service.check_payload(payload, canonical_json=canonical_json)
    )
    if data is None:
        raise InvalidRequest("detached JWS: give the payload that was signed")
    if parsed.payload is not None and parsed.payload != data:
        raise VerificationError("the JWS carries a different payload than the one given")
    verify_parsed(parsed, data, version.algorithm, version.public_key)
    return {
        "valid": True,
        "tenant_id": tenant_id,
        "kid": version.kid,
        "version": version.version,
        "status": version.status.value,
        "revoked_at": version.revoked_at,
    }


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
