"""The key model: tenants, purposes, statuses and one stored key version."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from tenantkeys.errors import ErrorCode, InvalidRequest

_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Purpose(StrEnum):
    SIGNING = "signing"
    ENCRYPTION = "encryption"


class Status(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"


def validate_tenant_id(value: object) -> str:
    """Return ``value`` if it is a valid tenant id, else raise ``TK-INVALID-TENANT``.

    1-64 characters of ``[A-Za-z0-9._-]``, starting with a letter or digit. Checked before any
    lookup, so a crafted id can never reach a cache key or a query.
    """
    if not isinstance(value, str) or not _TENANT_RE.fullmatch(value):
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidRequest(
            f"invalid tenant id {shown}: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit",
            code=ErrorCode.INVALID_TENANT,
        )
    return value


def parse_purpose(value: object) -> Purpose:
    try:
        return Purpose(str(value))
    except ValueError:
        raise InvalidRequest(
            f"invalid purpose {str(value)[:40]!r}: use one of "
            f"{', '.join(p.value for p in Purpose)}",
            code=ErrorCode.INVALID_PURPOSE,
        ) from None


@dataclass(frozen=True)
class KeyVersion:
    """One version of a tenant's key as the store holds it: public parts and wrapped secrets.

    ``wrapped_secret`` is the secret sealed with AES-GCM under a data key; ``wrapped_data_key``
    is that data key wrapped by ``provider``. Both are ``None`` once a signing key retires.
    """

    tenant_id: str
    purpose: Purpose
    version: int
    kid: str
    algorithm: str
    status: Status
    created_at: datetime
    rotate_after: datetime
    provider: str
    provider_key_id: str
    public_key: bytes | None = None
    wrapped_secret: bytes | None = field(default=None, repr=False)
    wrapped_data_key: bytes | None = field(default=None, repr=False)
    retired_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def context(self) -> dict[str, str]:
        """The canonical context this version's secret is bound to (tenant binding)."""
        return {
            "tenant_id": self.tenant_id,
            "purpose": self.purpose.value,
            "version": str(self.version),
            "kid": self.kid,
        }

    @property
    def has_secret(self) -> bool:
        return self.wrapped_secret is not None and self.wrapped_data_key is not None

    def public_info(self) -> dict[str, object]:
        """The public facts of this version, JSON-safe: never a wrapped or plaintext secret."""
        return {
            "tenant_id": self.tenant_id,
            "purpose": self.purpose.value,
            "version": self.version,
            "kid": self.kid,
            "algorithm": self.algorithm,
            "status": self.status.value,
            "provider": self.provider,
            "provider_key_id": self.provider_key_id,
            "created_at": self.created_at.isoformat(),
            "rotate_after": self.rotate_after.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

    def evolve(self, **changes: object) -> KeyVersion:
        return replace(self, **changes)  # type: ignore[arg-type]
