"""Request and response bodies of the ops API, as they appear in ``/openapi.json``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

Status = Literal["UP", "DOWN"]
#: Documented in the schema only: the handlers check it themselves, so a bad tenant id gets
#: the TK-INVALID-TENANT code (400) rather than a generic validation error.
TENANT_ID_SCHEMA: JsonDict = {"pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
DEAD_LETTER_ID_SCHEMA: JsonDict = {"pattern": r"^[0-9a-f]{32}$"}


class ErrorDetail(BaseModel):
    """A stable ``TK-...`` code (with a section in the troubleshooting doc) and a message."""

    code: str = Field(examples=["TK-INVALID-TENANT"])
    message: str
    doc: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """Every error response of the API has this shape."""

    error: ErrorDetail


class Liveness(BaseModel):
    status: Status


class KmsHealth(BaseModel):
    """``/health/kms``; ``error`` is set when ``status`` is DOWN (HTTP 503)."""

    status: Status
    provider: str
    key_id: str
    latency_ms: float
    detail: str = ""
    checked_within_seconds: float
    error: ErrorDetail | None = None


class PartStatus(BaseModel):
    status: Status
    latency_ms: float
    code: str | None = None
    detail: str | None = None


class Readiness(BaseModel):
    """``/health/ready``: every part; ``failing`` names the DOWN ones (HTTP 503)."""

    status: Status
    checks: dict[str, PartStatus]
    failing: list[str]
    error: ErrorDetail | None = None


class ValidationStep(BaseModel):
    step: str
    ok: bool
    latency_ms: float
    error_code: str | None = None
    message: str | None = None
    remedy: str | None = None
    skipped: bool = False


class ValidationResult(BaseModel):
    """``POST /api/admin/kms/validate``: HTTP 200 whether or not a step failed; see ``ok``."""

    ok: bool
    provider: str
    key_id: str
    failed_steps: list[str]
    steps: list[ValidationStep]


class DeadLetterEntry(BaseModel):
    """One dead letter: arguments are redacted (payload hash and size, never the payload)."""

    model_config = ConfigDict(extra="allow")

    id: str
    task: str
    job_id: str
    tenant_id: str | None
    arguments: dict[str, Any]
    error_class: str
    code: str
    message: str
    attempts: int
    first_failure_at: float
    last_failure_at: float
    worker: str
    replayable: bool = True


class DeadLetterList(BaseModel):
    depth: int
    oldest_age_seconds: float
    entries: list[DeadLetterEntry]


class ReplayOne(BaseModel):
    """Replay one dead letter by its id."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(json_schema_extra=DEAD_LETTER_ID_SCHEMA)


class ReplayTenant(BaseModel):
    """Replay every replayable dead letter of one tenant."""

    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(json_schema_extra=TENANT_ID_SCHEMA)


class ReplayAll(BaseModel):
    """Replay every replayable dead letter."""

    model_config = ConfigDict(extra="forbid")

    all: Literal[True]


#: Exactly one of ``{"id": ...}``, ``{"tenant_id": ...}`` or ``{"all": true}``.
ReplayRequest = ReplayOne | ReplayTenant | ReplayAll


class ReplayFailure(BaseModel):
    id: str
    reason: str


class ReplayResult(BaseModel):
    replayed: list[str]
    failed: list[ReplayFailure]


class Jwk(BaseModel):
    model_config = ConfigDict(extra="allow")

    kty: str
    kid: str


class Jwks(BaseModel):
    """RFC 7517 key set: the tenant's active and retired public signing keys."""

    model_config = ConfigDict(extra="allow")

    keys: list[Jwk]
