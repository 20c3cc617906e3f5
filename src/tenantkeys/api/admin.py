"""Admin routes (bearer token) and the public JWKS route.

* ``GET  /api/admin/kms/status`` -- reader or admin.
* ``POST /api/admin/kms/validate``, ``GET /api/admin/dlq``, ``GET /api/admin/dlq/{id}``,
  ``POST /api/admin/dlq/replay`` -- admin only.
* ``GET  /tenants/{tenant_id}/jwks.json`` -- public.

``validate`` answers 200 whether or not a step failed (``ok`` and ``failed_steps`` say which):
the request itself succeeded, and a monitoring check can tell a failed step from an API that is
down. A 503 would also hide the per-step report from clients that stop at the status code.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from tenantkeys.admin.status import collect_status
from tenantkeys.api.auth import AdminOnly, AnyRole
from tenantkeys.api.errors import error_responses
from tenantkeys.api.health import services
from tenantkeys.api.models import (
    DEAD_LETTER_ID_SCHEMA,
    TENANT_ID_SCHEMA,
    DeadLetterEntry,
    DeadLetterList,
    Jwks,
    ReplayFailure,
    ReplayOne,
    ReplayRequest,
    ReplayResult,
    ReplayTenant,
    ValidationResult,
)
from tenantkeys.errors import ErrorCode, InvalidRequest, KeyNotFound
from tenantkeys.jobs.replay import Selection, replay
from tenantkeys.keys.model import validate_tenant_id

router = APIRouter(prefix="/api/admin", tags=["admin"])
public = APIRouter(tags=["jwks"])
_AUTH = error_responses(401, 403)
_DOWN = error_responses(503)


@router.get(
    "/kms/status",
    dependencies=[AnyRole],
    responses={**_AUTH, **_DOWN},
    summary="Provider, fleet cache hit rate, KMS calls, rotations, dead letters, queues, breaker",
)
def status(request: Request) -> dict[str, Any]:
    """The same report as ``tenantkeys admin status``; parts that cannot be read are null.

    Cache hit rate and KMS calls under ``fleet`` are every worker's (counters kept in Redis);
    ``process`` / ``*_this_process`` are the API process's own."""
    return collect_status(services(request).sources())


@router.post(
    "/kms/validate",
    dependencies=[AdminOnly],
    response_model=ValidationResult,
    response_model_exclude_none=True,
    responses={**_AUTH, **_DOWN},
    summary="Generate, encrypt, decrypt, describe, and a wrong-context decrypt that must fail",
)
def validate(request: Request) -> dict[str, Any]:
    """Run every step against the configured KMS (not through the breaker); 200 with ``ok``."""
    return services(request).validate_kms()


@router.get(
    "/dlq",
    dependencies=[AdminOnly],
    response_model=DeadLetterList,
    responses={**error_responses(400), **_AUTH, **_DOWN},
    summary="Waiting dead letters, oldest first",
)
def list_dead_letters(
    request: Request,
    tenant_id: Annotated[str | None, Query(json_schema_extra=TENANT_ID_SCHEMA)] = None,
    task: Annotated[str | None, Query(max_length=200)] = None,
    code: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeadLetterList:
    """Entries show redacted arguments only (payload SHA-256 and size)."""
    if tenant_id is not None:
        validate_tenant_id(tenant_id)
    store = services(request).deadletters()
    entries = store.entries(tenant_id=tenant_id, task=task, code=code, limit=limit)
    return DeadLetterList(
        depth=store.depth(),
        oldest_age_seconds=store.oldest_age() or 0.0,
        entries=[DeadLetterEntry(**entry.to_dict()) for entry in entries],
    )


@router.get(
    "/dlq/{entry_id}",
    dependencies=[AdminOnly],
    response_model=DeadLetterEntry,
    responses={**error_responses(404), **_AUTH, **_DOWN},
    summary="One dead letter",
)
def show_dead_letter(
    request: Request, entry_id: Annotated[str, Path(json_schema_extra=DEAD_LETTER_ID_SCHEMA)]
) -> DeadLetterEntry:
    return DeadLetterEntry(**services(request).deadletters().get(_entry_id(entry_id)).to_dict())


@router.post(
    "/dlq/replay",
    dependencies=[AdminOnly],
    response_model=ReplayResult,
    responses={**error_responses(400, 404), **_AUTH, **_DOWN},
    summary="Re-enqueue dead letters: one (id), one tenant's, or all",
)
def replay_dead_letters(request: Request, body: ReplayRequest) -> ReplayResult:
    """Each entry leaves the store only once it is re-enqueued under its original job id.

    200 even when some entries failed to publish: they stay in the store, listed in ``failed``.
    """
    api = services(request)
    if isinstance(body, ReplayOne):
        selection = Selection(entry_id=_entry_id(body.id))
    elif isinstance(body, ReplayTenant):
        selection = Selection(tenant_id=validate_tenant_id(body.tenant_id))
    else:
        selection = Selection(everything=True)
    report = replay(api.deadletters(), selection, api.sender())
    return ReplayResult(
        replayed=report.replayed,
        failed=[ReplayFailure(id=entry, reason=reason) for entry, reason in report.failed],
    )


def _entry_id(value: str) -> str:
    # Ids are uuid4 hex; anything else cannot exist and must not reach a Redis key name.
    if len(value) != 32 or not all(c in "0123456789abcdef" for c in value):
        raise InvalidRequest(f"no dead letter {value[:40]!r}", code=ErrorCode.DEAD_LETTER_NOT_FOUND)
    return value


@public.get(
    "/tenants/{tenant_id}/jwks.json",
    response_model=Jwks,
    response_model_exclude_unset=True,
    responses={**error_responses(400, 404), **_DOWN},
    summary="The tenant's public signing keys (JWKS)",
)
def jwks(
    request: Request, tenant_id: Annotated[str, Path(json_schema_extra=TENANT_ID_SCHEMA)]
) -> JSONResponse:
    """Active and retired public keys; revoked kids under ``revoked``. Public by nature."""
    validate_tenant_id(tenant_id)
    keys = services(request).runtime().service.jwks(tenant_id)
    if not keys["keys"] and not keys.get("revoked"):
        raise KeyNotFound(f"tenant {tenant_id!r} has no signing keys")
    # The max-age bounds how long a cache honouring it shows a revoked key; must-revalidate
    # forbids serving it stale beyond that (docs/verifying.md, "Revocation").
    max_age = services(request).settings.jwks_max_age_seconds
    return JSONResponse(
        keys, headers={"Cache-Control": f"public, max-age={max_age}, must-revalidate"}
    )
