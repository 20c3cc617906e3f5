"""How jobs travel: payload codec (base64 in JSON), redaction, the result envelope, headers.

Payloads travel base64-encoded in JSON; events and dead letters show their SHA-256 and size
only (:func:`redact`).

Results use Celery's own states. A job that succeeded ends in ``SUCCESS`` with the envelope
``{"ok": true, "result": ...}``. A job that was rejected, dead-lettered or ran out of retries
ends in ``FAILURE`` with the exception of :func:`job_failure`: its class is the error's
(``KmsPermissionError``...) and its arguments are ``[one line, detail]``, where the one line
says ``CODE: message (see doc)`` and the detail is the error as JSON (``code``, ``message``,
``doc``, ``dead_letter``...). Celery stores that as ``{"exc_type", "exc_module", "exc_message"}``,
which Flower, ``celery inspect`` and a client in any language read as a failure; Celery rebuilds
it in Python as the error's own class. Inside a worker a job's outcome is still an envelope
(``{"ok": false, "error": {...}}`` for a failure, see :func:`failed`), and the items of a
``sign_batch`` result keep that form, one per item.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from tenantkeys import errors
from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError

#: Message header with the producer's enqueue time (Unix seconds): signing latency runs from
#: it to the stored result. Retries carry it on, so the latency includes them.
ENQUEUED_AT_HEADER = "enqueued_at"


def enqueued_at(headers: Mapping[str, Any] | None) -> float | None:
    """The enqueue time stamped by the producer, or ``None`` (older producer, Beat, garbage)."""
    value = (headers or {}).get(ENQUEUED_AT_HEADER)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        stamped = float(value)
    except ValueError:
        return None
    return stamped if math.isfinite(stamped) else None


# -- payload codec and redaction ---------------------------------------------------------


def encode_payload(payload: bytes) -> str:
    """A payload as it travels in a JSON message."""
    return base64.b64encode(bytes(payload)).decode("ascii")


def decode_payload(value: object) -> bytes:
    """Reverse :func:`encode_payload`; ``TK-INVALID-ENCODING`` on anything else."""
    if not isinstance(value, str):
        raise InvalidRequest("payload must be a base64 string", code=ErrorCode.INVALID_ENCODING)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "payload is not valid base64", code=ErrorCode.INVALID_ENCODING
        ) from None


def describe_payload(value: object) -> dict[str, Any]:
    """SHA-256 and size of an encoded payload: what events and dead letters show instead."""
    try:
        data = decode_payload(value)
    except InvalidRequest:
        return {"payload": "<invalid base64>"}
    return {"payload_sha256": hashlib.sha256(data).hexdigest(), "payload_size": len(data)}


def redact(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Job arguments with every payload replaced by its hash and size."""
    shown: dict[str, Any] = {}
    for key, value in kwargs.items():
        # A msgpack map may have bin keys: shown by type only (a key could be payload bytes).
        name = key if isinstance(key, str) else f"<{type(key).__name__} key>"
        if name == "payload":
            shown.update(describe_payload(value))
        elif name == "payloads" and isinstance(value, list):  # a compact sign_batch
            # Sizes only: str() of a hostile value (nested 1,000 deep) could fail or be huge.
            sizes = [_payload_size(v) for v in value]
            shown.update(payload_count=len(value), payload_bytes=sum(sizes))
        elif name == "items" and isinstance(value, list):
            shown["items"] = [redact(i) if isinstance(i, Mapping) else "?" for i in value[:20]]
            shown["item_count"] = len(value)
        else:
            shown[name] = value if _is_small_scalar(value) else type(value).__name__
    return shown


def _payload_size(value: object) -> int:
    """Bytes of a payload, raw (msgpack) or base64 (JSON twin: the size it decodes to), so a
    job and its JSON twin show the same; 0 for anything else."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value) * 3 // 4 - len(value[-2:]) + len(value[-2:].rstrip("="))
    return 0


def json_safe(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Job arguments that JSON can carry: a msgpack job's raw payloads as base64 (the compact
    sign_batch's JSON form, which asks for the same result). For a retry or a dead letter,
    which travel and are stored as JSON whatever form the job came in."""
    safe = dict(kwargs)
    payloads = safe.get("payloads")
    if isinstance(payloads, list) and any(isinstance(p, bytes) for p in payloads):
        safe["payloads"] = [encode_payload(p) if isinstance(p, bytes) else p for p in payloads]
    return safe


def _is_small_scalar(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= 128
    if isinstance(value, list):
        return len(value) <= 8 and all(isinstance(v, str) and len(v) <= 32 for v in value)
    return value is None or isinstance(value, bool | int | float)


def argsrepr(args: Any, kwargs: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(argsrepr, kwargsrepr)`` for Celery: what Flower and task events display."""
    positional = "(...)" if args else "()"
    return positional, json.dumps(redact(kwargs or {}), sort_keys=True)


def tenant_of(kwargs: Mapping[str, Any]) -> str | None:
    value = kwargs.get("tenant_id")
    if isinstance(value, str):
        return value[:64]
    items = kwargs.get("items")
    if isinstance(items, list) and items and isinstance(items[0], Mapping):
        first = items[0].get("tenant_id")
        return first[:64] if isinstance(first, str) else None
    return None


# -- result envelope ---------------------------------------------------------------------


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def failed(error: TenantKeysError, **extra: Any) -> dict[str, Any]:
    """The envelope of a job that ended with ``error`` (never holds a payload)."""
    return {"ok": False, "error": {**error.to_dict(), **extra}}


def error_from(detail: Mapping[str, Any]) -> TenantKeysError:
    """Rebuild the error a worker reported, as the most specific tenantkeys class."""
    cls: type[TenantKeysError] = TenantKeysError
    found = getattr(errors, str(detail.get("error", "")), None)
    if isinstance(found, type) and issubclass(found, TenantKeysError):
        cls = found
    try:
        code: ErrorCode | None = ErrorCode(str(detail.get("code")))
    except ValueError:
        code = None
    message = str(detail.get("message", "the job failed"))
    if detail.get("dead_letter"):
        message += f" (dead-lettered as {detail['dead_letter']}; see tenantkeys dlq show)"
    provider, provider_code = detail.get("provider"), detail.get("provider_code")
    return cls(
        message,
        code=code,
        provider=str(provider) if provider else None,
        provider_code=str(provider_code) if provider_code else None,
    )


def job_failure(detail: Mapping[str, Any]) -> TenantKeysError:
    """The exception a failed job ends with (Celery's FAILURE): the error's class, with the
    arguments ``[one line, detail]`` that Celery stores as JSON and rebuilds the class from."""
    error = error_from(detail)
    error.detail = dict(detail)
    error.args = (error.one_line(), error.detail)
    return error


def failure_detail(stored: object) -> Mapping[str, Any] | None:
    """The detail of a failed job's stored exception: rebuilt by Celery, or as raw JSON.

    ``None`` when the failure is not one of ours (a worker's own crash, a time limit).
    """
    if isinstance(stored, TenantKeysError):
        return stored.detail
    if isinstance(stored, Mapping):
        arguments = stored.get("exc_message")
        if isinstance(arguments, list) and len(arguments) == 2:
            found = arguments[1]
            return found if isinstance(found, Mapping) and "code" in found else None
    return None


def unwrap(envelope: object) -> Any:
    """The result of an ``ok`` envelope; raise the reported error otherwise."""
    if not isinstance(envelope, Mapping) or "ok" not in envelope:
        raise TenantKeysError(f"unexpected job result of type {type(envelope).__name__}")
    if envelope["ok"]:
        return envelope.get("result")
    raise error_from(envelope.get("error") or {})
