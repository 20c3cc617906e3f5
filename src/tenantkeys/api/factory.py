"""The ops API application: :func:`create_app` builds it, :func:`serve` runs it on uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tenantkeys import __version__
from tenantkeys.api import admin, errors, health, jobs
from tenantkeys.api.services import ApiServices
from tenantkeys.config import Settings, load_settings

DESCRIPTION = """Operations API of tenantkeys: health, KMS validation and status, dead letters,
per-tenant JWKS and Prometheus metrics; and the HTTP front door (`/v1/jobs`) where upstream
services enqueue signing jobs.

Admin routes take `Authorization: Bearer <token>`; the `admin` role may do everything, the
`reader` role may read the status only. `/health/*`, `/metrics` and the JWKS need no token.
The front door takes a producer's token (TENANTKEYS_PRODUCER_SCOPES_FILE lists each token's
SHA-256 and the tenants it may sign for).
Every error is `{"error": {"code": "TK-...", "message": ...}}`."""


def create_app(settings: Settings | None = None, *, services: ApiServices | None = None) -> FastAPI:
    """The FastAPI app; settings are loaded (and validated) here when not given.

    ``tenantkeys api`` calls it with no argument (uvicorn ``factory=True``).
    """
    settings = settings or load_settings()
    built = services or ApiServices(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        built.start()
        try:
            yield
        finally:
            built.close()

    app = FastAPI(
        title="tenantkeys ops API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=errors.error_responses(422, 500),
    )
    app.state.services = built
    errors.install(app)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(admin.public)
    app.include_router(jobs.router)
    return app


def serve(
    settings: Settings, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info"
) -> None:
    """Run the API in this process until interrupted (what ``tenantkeys api`` does)."""
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        # The API reports no client address anywhere; do not trust forwarded headers.
        proxy_headers=False,
        server_header=False,
    )
