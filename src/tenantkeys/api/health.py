"""``/health/live``, ``/health/ready``, ``/health/kms`` and ``/metrics``: no authentication.

Probes and Prometheus carry no credentials, and these answers hold no secret: up/down, the
provider's key id (not secret: IAM policies name it) and counts.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from tenantkeys import telemetry
from tenantkeys.admin.checks import PartCheck, check_broker, check_database, check_kms, check_redis
from tenantkeys.api.errors import RETRY_AFTER_SECONDS, error_body
from tenantkeys.api.models import ErrorDetail, KmsHealth, Liveness, PartStatus, Readiness
from tenantkeys.api.services import ApiServices
from tenantkeys.errors import ErrorCode

router = APIRouter(tags=["health"])
#: Readiness parts in the order they are reported.
PARTS = ("broker", "redis", "database", "kms")


def services(request: Request) -> ApiServices:
    found: ApiServices = request.app.state.services
    return found


def _unavailable(body: dict[str, object]) -> JSONResponse:
    return JSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS})


@router.get("/health/live", response_model=Liveness, summary="The process is running")
def live() -> Liveness:
    """200 whenever the process can answer; checks no dependency (a restart would not help)."""
    return Liveness(status="UP")


@router.get(
    "/health/kms",
    response_model=KmsHealth,
    response_model_exclude_none=True,
    responses={503: {"model": KmsHealth, "description": "The KMS is down; error says why"}},
    summary="KMS reachability and latency",
)
def kms(request: Request) -> KmsHealth | JSONResponse:
    """Describe the KMS key (cached for ``TENANTKEYS_KMS_HEALTH_CACHE_SECONDS``)."""
    api = services(request)
    report = api.kms_health.get()
    body = KmsHealth(
        status="UP" if report.ok else "DOWN",
        provider=report.provider,
        key_id=report.key_id,
        latency_ms=report.latency_ms,
        detail=report.detail,
        checked_within_seconds=api.settings.kms_health_cache_seconds,
    )
    if report.ok:
        return body
    part = check_kms(report)
    body.error = ErrorDetail(**error_body(str(part.code), f"KMS is down: {report.detail}")["error"])
    return _unavailable(body.model_dump(mode="json", exclude_none=True))


@router.get(
    "/health/ready",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "Parts named in failing are down"}},
    summary="Broker, Redis, database and KMS",
)
def ready(request: Request) -> Readiness | JSONResponse:
    """200 when every part answers; 503 naming the failing parts otherwise."""
    api = services(request)
    checks: list[PartCheck] = [
        check_broker(api.broker.ping),
        check_redis(api.redis),
        check_database(api.store()),
        check_kms(api.kms_health.get()),
    ]
    failing = [check.name for check in checks if not check.ok]
    body = Readiness(
        status="DOWN" if failing else "UP",
        checks={check.name: PartStatus(**check.to_dict()) for check in checks},
        failing=failing,
    )
    if not failing:
        return body
    first = next(check for check in checks if not check.ok)
    message = "not ready: " + "; ".join(
        f"{check.name} ({check.code}: {check.detail})" for check in checks if not check.ok
    )
    body.error = ErrorDetail(**error_body(str(first.code or ErrorCode.INTERNAL), message)["error"])
    return _unavailable(body.model_dump(mode="json", exclude_none=True))


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics",
    tags=["metrics"],
)
def metrics(request: Request) -> Response:
    """Event metrics (this process, or all sharing PROMETHEUS_MULTIPROC_DIR) plus shared state."""
    return Response(services(request).render_metrics(), media_type=telemetry.CONTENT_TYPE)
