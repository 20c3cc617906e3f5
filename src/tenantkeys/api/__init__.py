"""The ops HTTP API (FastAPI): health, admin, JWKS and metrics.

``create_app`` and ``serve`` are imported lazily, so importing :mod:`tenantkeys.admin.checks`
(the CLI does) does not import FastAPI. ``tenantkeys.api:app`` builds an app from the
environment on first access, for ``uvicorn tenantkeys.api:app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenantkeys.api.factory import create_app, serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from tenantkeys.api import factory as module

        return getattr(module, name)
    if name == "app":
        from tenantkeys.api.factory import create_app

        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
