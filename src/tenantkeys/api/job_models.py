"""Bodies of the HTTP front door (``/v1/jobs``), as they appear in ``/openapi.json``.

The request bodies are documented from the job contract's own JSON Schema (the ``SignArgs`` and
``SignBatchArgs`` shapes a worker checks), plus ``job_id``; they are not declared a second time.
The handlers read the body themselves, to cap its size while it streams, and check it with the
contract's ``parse_arguments``, as a worker does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, TypeAdapter

from tenantkeys.api.models import TENANT_ID_SCHEMA
from tenantkeys.jobs.contract import (
    MAX_BATCH_ITEMS,
    ErrorDetail,
    SignArgs,
    SignBatchCompactResult,
    SignBatchResult,
)
from tenantkeys.signing import Signature

#: Job ids the front door takes: they go into a URL path segment and a Redis key name. A UUID
#: fits; so does an upstream record id such as ``invoice-2026-000123``.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
#: Standard base64 (RFC 4648 section 4), padded: what ``decode_payload`` accepts.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _sign_item_schema() -> dict[str, Any]:
    schema = TypeAdapter(SignArgs).json_schema()
    schema.pop("title", None)
    properties = schema["properties"]
    properties["tenant_id"].update(TENANT_ID_SCHEMA)
    properties["payload"].update(
        pattern=BASE64_PATTERN,
        description="The bytes to sign, base64 (standard alphabet, padded); "
        "at most TENANTKEYS_MAX_PAYLOAD_BYTES once decoded.",
    )
    properties["canonical_json"]["description"] = (
        "Sign the RFC 8785 canonical form of the JSON payload."
    )
    return schema


def _job_id_schema() -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": JOB_ID_PATTERN,
        "description": "Your idempotency key (say, the id of the record you sign); a UUID is "
        "made when absent. Sent again with the same body, it names the same job.",
    }


def sign_request_schema() -> dict[str, Any]:
    """``POST /v1/jobs/sign``: a ``tenantkeys.sign`` job's arguments, plus ``job_id``."""
    schema = _sign_item_schema()
    schema["properties"] = {"job_id": _job_id_schema(), **schema["properties"]}
    return schema


def sign_batch_request_schema() -> dict[str, Any]:
    """``POST /v1/jobs/sign-batch``: a ``sign_batch`` job's arguments in either form, plus
    ``job_id``: ``items`` (each signed on its own, one result object each), or the compact
    form (one tenant, ``payloads``, one array of JWS back)."""
    item = _sign_item_schema()
    items_form = {
        "type": "object",
        "title": "items",
        "description": f"1 to {MAX_BATCH_ITEMS} items, each signed on its own.",
        "additionalProperties": False,
        "required": ["items"],
        "properties": {
            "job_id": _job_id_schema(),
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH_ITEMS,
                "items": item,
            },
        },
    }
    compact_form = {
        "type": "object",
        "title": "compact",
        "description": f"1 to {MAX_BATCH_ITEMS} payloads of one tenant; the result is one "
        "array of detached JWS (null where that payload failed, its error in errors).",
        "additionalProperties": False,
        "required": ["tenant_id", "payloads"],
        "properties": {
            "job_id": _job_id_schema(),
            "tenant_id": item["properties"]["tenant_id"],
            "payloads": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH_ITEMS,
                "items": item["properties"]["payload"],
            },
            "canonical_json": item["properties"]["canonical_json"],
        },
    }
    return {"oneOf": [items_form, compact_form]}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body the handler reads itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class JobAccepted(BaseModel):
    """A job the front door knows: ``url`` is where to ``GET`` its state and result."""

    job_id: str = Field(examples=["3f2c9d0e-8a51-4d7b-9a0e-6c1f1d2b7e55"])
    state: str = Field(
        description="Celery's state: PENDING (queued, or not known yet), STARTED, RETRY, "
        "SUCCESS or FAILURE.",
        examples=["PENDING"],
    )
    url: str = Field(examples=["/v1/jobs/3f2c9d0e-8a51-4d7b-9a0e-6c1f1d2b7e55"])


class JobView(JobAccepted):
    """A job's state; ``result`` once it succeeded, ``error`` (its TK code) once it failed."""

    result: Signature | SignBatchResult | SignBatchCompactResult | None = Field(
        default=None,
        description="sign: the signature; sign-batch: one result per item, in order, each "
        "ok with its signature or with its own error; a compact sign-batch: one JWS per "
        "payload (null where it failed) and the errors by index.",
    )
    error: ErrorDetail | None = Field(
        default=None, description="Why the job failed: a stable TK code and its doc section."
    )
