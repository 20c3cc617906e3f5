"""A tenantkeys job as Celery's message protocol v2, and its result, without Celery.

Shared by python_redis.py and python_amqp.py. The standard library, and ``msgpack`` for the
compact sign_batch (``pip install msgpack``); a producer in another language builds the same
three parts: headers, properties and the body (JSON, or msgpack for a compact sign_batch).
https://docs.celeryq.dev/en/stable/internals/protocol.html (version 2)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

#: The queue of both signing jobs (sign and sign_batch).
SIGN_QUEUE = "tenantkeys.sign"
#: The exchange every queue is bound to, each under its own name as routing key.
EXCHANGE = "tenantkeys"
#: Where Celery's Redis result backend keeps a job's result (no key prefix).
RESULT_KEY = "celery-task-meta-{job_id}"
#: States after which a job's result no longer changes (Celery's READY_STATES).
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
#: Content type and encoding of a JSON message, and of a msgpack one (a compact sign_batch).
JSON = ("application/json", "utf-8")
MSGPACK = ("application/x-msgpack", "binary")


@dataclass(frozen=True)
class TaskMessage:
    """One job: Celery v2 headers, the message properties, the body (UTF-8 JSON or msgpack)."""

    job_id: str
    queue: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    content_type: str = JSON[0]
    content_encoding: str = JSON[1]


def encode_payload(data: bytes) -> str:
    """A payload as a job carries it: base64, standard alphabet, padded (RFC 4648 section 4)."""
    return base64.b64encode(data).decode("ascii")


def sign_job(tenant_id: str, data: bytes, *, canonical_json: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``tenantkeys.sign`` (one item of ``tenantkeys.sign_batch``)."""
    kwargs: dict[str, Any] = {"tenant_id": tenant_id, "payload": encode_payload(data)}
    if canonical_json:
        kwargs["canonical_json"] = True
    return kwargs


def compact_batch_job(
    tenant_id: str, payloads: list[bytes], *, canonical_json: bool = False
) -> dict[str, Any]:
    """The keyword arguments of a compact ``tenantkeys.sign_batch``: one tenant, 1 to 1,000
    payloads as raw bytes. Send it with ``task_message(..., binary=True)`` (msgpack: each
    payload a bin); its result is one array of JWS, ``jws[i]`` for ``payloads[i]``."""
    kwargs: dict[str, Any] = {"tenant_id": tenant_id, "payloads": list(payloads)}
    if canonical_json:
        kwargs["canonical_json"] = True
    return kwargs


def _shown(kwargs: dict[str, Any]) -> str:
    """What monitoring tools (Flower, task events) display: hashes and sizes, never payloads."""

    def item(job: dict[str, Any]) -> dict[str, Any]:
        data = base64.b64decode(job["payload"])
        digest = hashlib.sha256(data).hexdigest()
        return {"tenant_id": job["tenant_id"], "payload_sha256": digest, "payload_size": len(data)}

    if "items" in kwargs:
        return json.dumps({"item_count": len(kwargs["items"])})
    if "payloads" in kwargs:  # the compact sign_batch: how many payloads, how many bytes
        sizes = [len(p) for p in kwargs["payloads"]]
        shown = {"payload_bytes": sum(sizes), "payload_count": len(sizes)}
        return json.dumps({**shown, "tenant_id": kwargs["tenant_id"]}, sort_keys=True)
    return json.dumps(item(kwargs), sort_keys=True)


def task_message(
    task: str,
    kwargs: dict[str, Any],
    *,
    job_id: str | None = None,
    queue: str = SIGN_QUEUE,
    binary: bool = False,
) -> TaskMessage:
    """The message of job ``task`` with keyword arguments ``kwargs``.

    ``job_id`` is the idempotency key: a job sent again under the same id lands on the same
    result. Positional arguments are always empty: tenantkeys jobs take keyword arguments only.
    ``binary`` encodes the body as msgpack, bytes as bin (a compact sign_batch's payloads);
    otherwise it is UTF-8 JSON.
    """
    job_id = job_id or str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": job_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": job_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": _shown(kwargs),
        "origin": f"{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        # Optional: the enqueue time (Unix seconds) the worker measures signing latency from.
        "enqueued_at": time.time(),
    }
    properties = {
        "correlation_id": job_id,
        "reply_to": "",
        "delivery_mode": 2,  # persistent
        "priority": 0,
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    if binary:
        body = msgpack.packb([[], kwargs, embed], use_bin_type=True)
        return TaskMessage(job_id, queue, headers, properties, body, *MSGPACK)
    body = json.dumps([[], kwargs, embed]).encode("utf-8")
    return TaskMessage(job_id, queue, headers, properties, body)


def parse_result(stored: bytes | str | None) -> dict[str, Any] | None:
    """A job's stored result document once it is final (``None`` while pending or running).

    ``status`` is ``SUCCESS`` or ``FAILURE``, ``task_id`` the job id. On ``SUCCESS``,
    ``result`` is ``{"ok": true, "result": ...}`` (a compact sign_batch's holds ``jws``, one
    detached JWS or null per payload, and ``errors``: see :func:`outcomes`). On ``FAILURE``
    it is ``{"exc_type", "exc_module", "exc_message"}`` where ``exc_message`` is ``[one line,
    detail]`` and the detail holds the stable ``code`` (``TK-KEY-NOT-FOUND``...),
    ``message``, ``retryable`` and ``doc``.
    """
    if stored is None:
        return None
    document: dict[str, Any] = json.loads(stored)
    return document if document.get("status") in FINAL_STATES else None


def outcomes(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A compact sign_batch's result as one outcome per payload, in order: ``{"ok": true,
    "jws": ...}`` or ``{"ok": false, "error": detail}`` (the detail's ``code`` is stable)."""
    failed = {entry["index"]: entry["error"] for entry in result["errors"]}
    return [
        {"ok": False, "error": failed[index]} if jws is None else {"ok": True, "jws": jws}
        for index, jws in enumerate(result["jws"])
    ]


def wait_result(
    get: Callable[[str], bytes | str | None], job_id: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll ``get(key)`` (a Redis GET) for the job's final result; ``TimeoutError`` if none."""
    deadline = time.monotonic() + timeout
    while True:
        found = parse_result(get(RESULT_KEY.format(job_id=job_id)))
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result for job {job_id} within {timeout:g} s")
        time.sleep(0.05)
