"""The job contract: task names, queues, and the typed arguments and results of every job.

This is what a producer in any language must know; :mod:`tenantkeys.queue` maps it onto
Celery and :mod:`tenantkeys.jobs.messages` says how payloads and results are encoded. The
argument and result shapes below are the single definition: the client builds jobs from them,
the runner validates incoming arguments against them (:func:`parse_arguments`), mypy checks
both sides, and :func:`json_schemas` emits them as JSON Schema for the published contract.
No Celery import, no database: importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, NotRequired

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.signing import Signature

SIGN = "tenantkeys.sign"
SIGN_BATCH = "tenantkeys.sign_batch"
CREATE_KEYS = "tenantkeys.create_keys"
ROTATE_KEY = "tenantkeys.rotate_key"
REVOKE_KEY = "tenantkeys.revoke_key"
ROTATION_SWEEP = "tenantkeys.rotation_sweep"

SIGN_QUEUE = "tenantkeys.sign"
KEYS_QUEUE = "tenantkeys.keys"
MAINTENANCE_QUEUE = "tenantkeys.maintenance"
QUEUES = (SIGN_QUEUE, KEYS_QUEUE, MAINTENANCE_QUEUE)
#: One direct exchange; each queue is bound under its own name.
EXCHANGE = "tenantkeys"

#: task name -> queue. Signing has its own queue so key jobs never wait behind a burst.
ROUTES: Mapping[str, str] = {
    SIGN: SIGN_QUEUE,
    SIGN_BATCH: SIGN_QUEUE,
    CREATE_KEYS: KEYS_QUEUE,
    ROTATE_KEY: KEYS_QUEUE,
    REVOKE_KEY: KEYS_QUEUE,
    ROTATION_SWEEP: MAINTENANCE_QUEUE,
}
#: Most items one sign_batch job may carry; bigger batches belong in several jobs.
MAX_BATCH_ITEMS = 1_000

_STRICT = ConfigDict(extra="forbid", strict=True)

# -- arguments (keyword arguments of the task message) -----------------------------------------


@with_config(_STRICT)
class SignArgs(TypedDict):
    """``tenantkeys.sign``: one payload, base64 (RFC 4648 §4, padded) in ``payload``."""

    tenant_id: str
    payload: str
    canonical_json: NotRequired[bool]


@with_config(_STRICT)
class SignBatchArgs(TypedDict):
    """``tenantkeys.sign_batch``: 1 to :data:`MAX_BATCH_ITEMS` items, each as a sign job's."""

    items: list[SignArgs]


@with_config(_STRICT)
class SignBatchCompactArgs(TypedDict):
    """``tenantkeys.sign_batch``, compact form: one tenant, 1 to :data:`MAX_BATCH_ITEMS`
    payloads, and a :class:`SignBatchCompactResult` back.

    Sent as msgpack (content type ``application/x-msgpack``), each payload is raw bytes (bin);
    sent as JSON, each is base64 as in a sign job. A job's own form decides its result's form,
    so producers of the ``items`` form are unaffected.
    """

    tenant_id: str
    payloads: list[bytes | str]
    canonical_json: NotRequired[bool]


@with_config(_STRICT)
class CreateKeysArgs(TypedDict):
    """``tenantkeys.create_keys``: the purposes the tenant lacks (default: all)."""

    tenant_id: str
    purposes: NotRequired[list[str] | None]


@with_config(_STRICT)
class RotateKeyArgs(TypedDict):
    """``tenantkeys.rotate_key``: only if ``expected_version`` is still active, when given."""

    tenant_id: str
    purpose: str
    expected_version: NotRequired[int | None]


@with_config(_STRICT)
class RevokeKeyArgs(TypedDict):
    """``tenantkeys.revoke_key``: the version with this kid (an active one is replaced)."""

    tenant_id: str
    kid: str


@with_config(_STRICT)
class RotationSweepArgs(TypedDict):
    """``tenantkeys.rotation_sweep`` (Beat's): no arguments."""


# -- results (the ``result`` of an ``ok`` envelope) --------------------------------------------


class ErrorDetail(TypedDict):
    """The ``error`` of a failed job or item: a stable code, never a payload."""

    code: str
    error: str
    message: str
    provider: str | None
    provider_code: str | None
    retryable: bool
    doc: str
    dead_letter: NotRequired[str]


class ItemResult(TypedDict):
    """One item of a sign_batch result: ``ok`` with a signature, or its error."""

    ok: bool
    result: NotRequired[Signature]
    error: NotRequired[ErrorDetail]


class SignBatchResult(TypedDict):
    results: list[ItemResult]


class ItemFailure(TypedDict):
    """A payload of a compact sign_batch that was not signed: its index and why."""

    index: int
    error: ErrorDetail


class SignBatchCompactResult(TypedDict):
    """A compact sign_batch's result: every signature made with one key at one time.

    ``jws[i]`` is payload ``i``'s detached compact JWS (``header..signature``, verified with
    the tenant's JWKS like any other), or ``null`` where ``errors`` holds that index.
    ``timestamps[i]`` (with RFC 3161 timestamps on) is the token of ``jws[i]``.
    """

    tenant_id: str
    kid: str
    alg: str
    signed_at: str
    jws: list[str | None]
    errors: list[ItemFailure]
    timestamps: NotRequired[list[str | None]]


class KeyInfo(TypedDict):
    """The public facts of a key version (never a wrapped or plaintext secret)."""

    tenant_id: str
    purpose: Literal["signing", "encryption"]
    version: int
    kid: str
    algorithm: str
    status: Literal["active", "retired", "revoked"]
    provider: str
    provider_key_id: str
    created_at: str
    rotate_after: str
    retired_at: str | None
    revoked_at: str | None


class CreateKeysResult(TypedDict):
    keys: list[KeyInfo]


class RotateKeyResult(TypedDict):
    tenant_id: str
    purpose: str
    rotated: bool
    old_version: int | None
    new_version: int | None
    reason: str


class RotationSweepResult(TypedDict):
    skipped: bool
    enqueued: int
    pages: int
    dead_letters_recovered: int


#: task name -> (argument shape, result shape): the whole contract in one table. A sign_batch
#: has two forms, each with its own result (:func:`is_compact_batch` tells them apart).
JOBS: Mapping[str, tuple[Any, Any]] = {
    SIGN: (SignArgs, Signature),
    SIGN_BATCH: (SignBatchArgs | SignBatchCompactArgs, SignBatchResult | SignBatchCompactResult),
    CREATE_KEYS: (CreateKeysArgs, CreateKeysResult),
    ROTATE_KEY: (RotateKeyArgs, RotateKeyResult),
    REVOKE_KEY: (RevokeKeyArgs, KeyInfo),
    ROTATION_SWEEP: (RotationSweepArgs, RotationSweepResult),
}


#: The compact form of a sign_batch is the one whose arguments name ``payloads``.
COMPACT_BATCH_FIELD = "payloads"


def is_compact_batch(kwargs: object) -> bool:
    """Whether ``kwargs`` of a sign_batch job ask for the compact form (and its result)."""
    return isinstance(kwargs, Mapping) and COMPACT_BATCH_FIELD in kwargs


@cache
def _arguments_of(task: str, compact: bool = False) -> TypeAdapter[Any]:
    if task == SIGN_BATCH:
        # One form per job, chosen by its fields: errors then name that form's fields only.
        return TypeAdapter(SignBatchCompactArgs if compact else SignBatchArgs)
    return TypeAdapter(JOBS[task][0])


def parse_arguments(task: str, kwargs: object) -> Any:
    """``kwargs`` checked against the arguments of ``task``; ``TK-INVALID-ARGUMENT`` if not.

    The message names the fields at fault and what was wrong, never their values (a value
    may be a payload).
    """
    if task not in JOBS:
        raise InvalidRequest(f"no job named {task[:80]!r}")
    try:
        compact = task == SIGN_BATCH and is_compact_batch(kwargs)
        return _arguments_of(task, compact).validate_python(kwargs)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:5]
        ]
        raise InvalidRequest(
            "bad job arguments: " + "; ".join(problems), code=ErrorCode.INVALID_ARGUMENT
        ) from None


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every job's arguments and result, by task name (for docs/contract/).

    The bounds of a ``sign_batch`` (1 to :data:`MAX_BATCH_ITEMS` items, refused otherwise
    with ``TK-INVALID-ARGUMENT`` by the runner) are added to its schema.
    """
    schemas = {
        task: {
            "arguments": TypeAdapter(args).json_schema(),
            "result": TypeAdapter(result).json_schema(),
        }
        for task, (args, result) in JOBS.items()
    }
    forms = schemas[SIGN_BATCH]["arguments"]["$defs"]
    for form, field in (("SignBatchArgs", "items"), ("SignBatchCompactArgs", "payloads")):
        forms[form]["properties"][field].update(minItems=1, maxItems=MAX_BATCH_ITEMS)
    return schemas
