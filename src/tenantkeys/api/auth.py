"""Bearer tokens with two roles: ``admin`` (everything) and ``reader`` (status only).

Settings hold the SHA-256 hex digest of each token, never the token. A presented token is
hashed and compared with every configured digest in constant time. With no digest configured,
every protected route answers 401: the API is never open by default.

Unauthenticated on purpose: ``/health/*`` (probes carry no credentials and reveal up/down
only), ``/metrics`` (Prometheus scrapes it; counts only, no tenant ids) and the JWKS (public
keys, public by nature: verifiers fetch them).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from tenantkeys.api.errors import AUTH_FORBIDDEN, AUTH_REQUIRED, ApiError
from tenantkeys.errors import ConfigurationError, ErrorCode

_DIGEST = re.compile(r"[0-9a-f]{64}")
#: Tokens longer than this are refused unhashed (a cheap guard against huge headers).
MAX_TOKEN_LENGTH = 512


class Role(StrEnum):
    ADMIN = "admin"
    READER = "reader"


class TokenTable:
    """The configured token digests; validated when built, not when a request comes."""

    def __init__(self, admin_sha256: SecretStr | None, reader_sha256: SecretStr | None) -> None:
        self._digests: list[tuple[Role, bytes]] = []
        for role, secret in ((Role.ADMIN, admin_sha256), (Role.READER, reader_sha256)):
            if secret is None or not secret.get_secret_value().strip():
                continue
            digest = secret.get_secret_value().strip().lower()
            if not _DIGEST.fullmatch(digest):
                raise ConfigurationError(
                    f"TENANTKEYS_{role.upper()}_TOKEN_SHA256 must be the 64-character SHA-256 "
                    "hex digest of the token (e.g. printf %s TOKEN | sha256sum), not the token",
                    code=ErrorCode.CONFIG_INVALID,
                )
            self._digests.append((role, digest.encode()))

    @property
    def configured(self) -> bool:
        return bool(self._digests)

    def role_of(self, token: str) -> Role | None:
        """The role of ``token``, or None. Every digest is compared, in constant time."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest().encode()
        found: Role | None = None
        for role, digest in self._digests:
            # Constant-time compare, and no early exit: timing says nothing about the tokens.
            if hmac.compare_digest(presented, digest) and found is None:
                found = role
        return found


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="A token whose SHA-256 is TENANTKEYS_ADMIN_TOKEN_SHA256 or "
    "TENANTKEYS_READER_TOKEN_SHA256.",
)


def unauthorized(credentials: HTTPAuthorizationCredentials | None, message: str) -> ApiError:
    """401 ``TK-AUTH-REQUIRED`` with the RFC 6750 challenge (``invalid_token`` if one was sent)."""
    challenge = 'Bearer realm="tenantkeys"'
    if credentials:  # a token was sent but is not known
        challenge += ', error="invalid_token"'
    return ApiError(401, AUTH_REQUIRED, message, {"WWW-Authenticate": challenge})


def _tokens(request: Request) -> TokenTable:
    table: TokenTable = request.app.state.services.tokens
    return table


def require(*allowed: Role) -> Callable[..., Role]:
    """A dependency admitting the given roles: 401 without a known token, 403 otherwise."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Role:
        role = _tokens(request).role_of(credentials.credentials) if credentials else None
        if role is None:
            raise unauthorized(
                credentials, "a bearer token with the admin or reader role is required"
            )
        if role not in allowed:
            raise ApiError(
                403,
                AUTH_FORBIDDEN,
                f"the {role.value} role may not do this; it needs: "
                + ", ".join(r.value for r in allowed),
            )
        return role

    return dependency


AdminOnly = Depends(require(Role.ADMIN))
AnyRole = Depends(require(Role.ADMIN, Role.READER))
