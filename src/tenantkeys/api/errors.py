"""One JSON error shape for every failure: ``{"error": {"code": "TK-...", "message": ...}}``.

Each error's HTTP status is its own ``http_status``, from the table in
:mod:`tenantkeys.errors`: bad input 400 (404, 409, 413 for some codes), transient and
configuration problems 503 (the service cannot serve now; the caller did nothing wrong), a job
timeout 504, anything else 500. Unhandled exceptions become ``TK-INTERNAL`` with no traceback
and no exception text, which may hold a connection string or a key id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tenantkeys.errors import ErrorCode, TenantKeysError, doc_link

log = logging.getLogger(__name__)

#: Codes of the API's own refusals (authentication, authorization).
AUTH_REQUIRED: Final = ErrorCode.AUTH_REQUIRED.value
AUTH_FORBIDDEN: Final = ErrorCode.AUTH_FORBIDDEN.value
#: A 503 says when to try again; 5 s matches the KMS health cache.
RETRY_AFTER_SECONDS: Final = "5"


class ApiError(Exception):
    """An HTTP refusal of the API itself (authentication, authorization)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def http_status(exc: TenantKeysError) -> int:
    """The HTTP status of ``exc``: what the caller should do, as HTTP says it."""
    return exc.http_status


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": code, "message": message, "doc": doc_link(code)}
    detail.update({k: v for k, v in extra.items() if v is not None})
    return {"error": detail}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    shown = dict(headers or {})
    if status == 503:
        shown.setdefault("Retry-After", RETRY_AFTER_SECONDS)
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=shown)


async def _tenantkeys_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TenantKeysError)
    status = exc.http_status
    if status >= 500:
        log.warning("request failed: %s", exc.one_line())
    return error_response(status, str(exc.code), exc.message)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Location and reason only: the rejected input is not echoed back.
    details = [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in exc.errors()
    ]
    return error_response(
        422, str(ErrorCode.INVALID_ARGUMENT), "the request is not valid", details=details
    )


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = {404: "no such route", 405: "method not allowed on this route"}.get(
        exc.status_code, str(exc.detail)
    )
    code = ErrorCode.INTERNAL if exc.status_code >= 500 else ErrorCode.INVALID_ARGUMENT
    return error_response(exc.status_code, str(code), message, exc.headers)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s in the ops API", type(exc).__name__, exc_info=exc)
    return error_response(
        500, str(ErrorCode.INTERNAL), f"unexpected {type(exc).__name__}; see the API log"
    )


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the one JSON shape."""
    app.add_exception_handler(TenantKeysError, _tenantkeys_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


#: ``responses=`` for routes and the app, so /openapi.json documents the error shape.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Invalid input (code says which)",
        401: "No or unknown bearer token",
        403: "The token's role may not do this",
        404: "Not found",
        409: "Conflict",
        422: "Request validation failed (TK-INVALID-ARGUMENT)",
        500: "Unexpected error (TK-INTERNAL)",
        503: "A dependency is unavailable",
    }
    from tenantkeys.api.models import ErrorResponse

    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}
