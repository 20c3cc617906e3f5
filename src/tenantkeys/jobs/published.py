"""The published wire contract: the JSON Schemas of ``docs/contract/schemas/``, from the code.

The job contract (:mod:`tenantkeys.jobs.contract`) types each job's arguments and result; this
module adds the wire around them, as a producer in any language meets it: Celery's message
protocol v2 (headers, the ``[args, kwargs, embed]`` body), kombu's Redis envelope, and the
records Celery's Redis result backend stores under ``celery-task-meta-<job id>`` (SUCCESS with
the ``{"ok": true, "result": ...}`` document, FAILURE with the job's exception, whose
arguments are ``[one line, error detail]``: see :mod:`tenantkeys.jobs.messages`). The compact
``sign_batch`` (one tenant, raw payloads in msgpack) has files of its own under the name
:data:`COMPACT_BATCH`, so a producer of that form reads one body and one result.
``docs/contract/asyncapi.yaml`` refers to these files; ``tests/docs/test_contract.py`` checks
that document against this module and real messages against the files.

Run from the repository root::

    python -m tenantkeys.jobs.published           # write docs/contract/schemas/
    python -m tenantkeys.jobs.published --check   # exit 1, naming each file that differs

No Celery import: the schemas describe the wire, they do not come from the library.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from tenantkeys.errors import ErrorCode
from tenantkeys.jobs import contract

#: Where the files live, relative to the repository root.
SCHEMA_DIR = Path("docs/contract/schemas")
#: JSON Schema draft 7: what AsyncAPI 3.0's default schema format extends. The pydantic shapes
#: use nothing newer (their ``$defs`` are reached by JSON pointer, which any draft resolves).
DIALECT = "http://json-schema.org/draft-07/schema#"
#: Content type and encoding of a JSON task message (every job but a compact sign_batch).
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
#: Content type and encoding of a compact sign_batch sent as msgpack (kombu's ``msgpack``).
BINARY_CONTENT_TYPE = "application/x-msgpack"
BINARY_CONTENT_ENCODING = "binary"
#: Content type of a message signed by Celery's ``auth`` serializer (message signing on),
#: whatever the body inside it; its encoding is ``utf-8`` (the envelope is base64 text).
SIGNED_CONTENT_TYPE = "application/data"
#: The files of the compact form of ``tenantkeys.sign_batch`` are named as a task's.
COMPACT_BATCH = f"{contract.SIGN_BATCH}.compact"


def arguments_file(task: str) -> str:
    """The file of ``task``'s arguments (the body's kwargs)."""
    return f"{task}.arguments.json"


def result_file(task: str) -> str:
    """The file of ``task``'s result (inside the SUCCESS envelope)."""
    return f"{task}.result.json"


def body_file(task: str) -> str:
    """The file of a ``task`` message's body."""
    return f"{task}.body.json"


def success_file(task: str) -> str:
    """The file of a ``task`` job's stored SUCCESS."""
    return f"{task}.success.json"


HEADERS_FILE = "headers.json"
EMBED_FILE = "embed.json"
REDIS_ENVELOPE_FILE = "redis-envelope.json"
ERROR_FILE = "error.json"
ERROR_CODE_FILE = "error-code.json"
FAILURE_FILE = "failure.json"


def _nullable(kind: str, description: str) -> dict[str, Any]:
    return {"type": [kind, "null"], "description": description}


def headers() -> dict[str, Any]:
    """Celery protocol v2 headers (AMQP message headers; ``headers`` of the Redis envelope)."""
    return {
        "title": "Celery protocol v2 headers of a tenantkeys job",
        "description": "The worker needs `task` and `id`; every other header is optional and "
        "defaults as shown. Headers not listed here are carried and ignored.",
        "type": "object",
        "required": ["task", "id"],
        "properties": {
            "task": {
                "type": "string",
                "enum": sorted(contract.JOBS),
                "description": "The job's name. Any other name is dead-lettered and ends in "
                "FAILURE with TK-INVALID-ARGUMENT.",
            },
            "id": {
                "type": "string",
                "minLength": 1,
                "description": "The job id: the idempotency key, and the `<job id>` of the "
                "result key `celery-task-meta-<job id>`. A UUID, or your own record's id.",
            },
            "lang": {"type": "string", "description": "The producer's language; ignored."},
            "root_id": _nullable("string", "The job id again, or null; informational."),
            "parent_id": _nullable("string", "null: jobs have no parent."),
            "group": _nullable("string", "null: jobs are not in a Celery group."),
            "group_index": _nullable("integer", "null."),
            "retries": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "description": "Attempts already made: send 0. The worker counts its own "
                "retries here and dead-letters a job whose transient failures reach "
                "TENANTKEYS_RETRY_MAX.",
            },
            "eta": _nullable("string", "ISO 8601 time before which the job waits; null."),
            "expires": _nullable(
                "string", "ISO 8601 time after which Celery revokes the job unrun; null."
            ),
            "timelimit": {
                "type": "array",
                "items": {"type": ["number", "null"]},
                "minItems": 2,
                "maxItems": 2,
                "description": "[soft, hard] seconds; [null, null] keeps the workers' limits.",
            },
            "shadow": _nullable("string", "null."),
            "argsrepr": {
                "type": "string",
                "description": "What Flower, task events and logs show for the positional "
                "arguments: `()`.",
            },
            "kwargsrepr": {
                "type": "string",
                "description": "What Flower, task events and logs show for the arguments: "
                "tenant ids and each payload's SHA-256 and size, never the payload. Without "
                "it Celery may show a truncated repr of the arguments instead.",
            },
            "origin": {"type": "string", "description": "Who sent it (`pid@host`); shown only."},
            "ignore_result": {
                "type": "boolean",
                "default": False,
                "description": "true stores no result: leave it false.",
            },
            "replaced_task_nesting": {"type": "integer", "minimum": 0},
            "stamped_headers": {"type": ["array", "null"]},
            "stamps": {"type": "object"},
            "enqueued_at": {
                "type": ["number", "string"],
                "description": "Unix seconds when the job was sent: signing latency "
                "(tenantkeys_signature_latency_seconds) runs from it to the stored result. "
                "A decimal string where the client cannot send a float header (pika).",
            },
            "traceparent": {
                "type": "string",
                "description": "W3C trace context: the worker's span continues this trace.",
            },
            "tracestate": {"type": "string"},
        },
    }


def embed() -> dict[str, Any]:
    """The third element of a protocol v2 body: no callbacks, errbacks, chain or chord."""
    none = {"type": "null"}
    return {
        "title": "Celery protocol v2 embed of a tenantkeys job",
        "description": "Jobs use no callbacks, errbacks, chains or chords: each is null or absent.",
        "type": "object",
        "properties": {"callbacks": none, "errbacks": none, "chain": none, "chord": none},
    }


def body(task: str) -> dict[str, Any]:
    """The body of a ``task`` message: ``[[], kwargs, embed]``."""
    encoding = (
        "as msgpack (application/x-msgpack, each payload a bin) or as UTF-8 JSON (each "
        "payload base64)"
        if task == COMPACT_BATCH
        else "as UTF-8 JSON"
    )
    return {
        "title": f"Body of a {task} message",
        "description": f"Celery protocol v2: [args, kwargs, embed], {encoding}. Jobs take "
        "keyword arguments only: args is empty (anything else fails with "
        "TK-INVALID-ARGUMENT); kwargs are the job's arguments.",
        "type": "array",
        "minItems": 3,
        "maxItems": 3,
        "items": [
            {"type": "array", "maxItems": 0},
            {"$ref": arguments_file(task)},
            {"$ref": EMBED_FILE},
        ],
        "additionalItems": False,
    }


def redis_envelope() -> dict[str, Any]:
    """kombu's Redis envelope: the JSON text a producer LPUSHes onto the queue's list."""
    return {
        "title": "kombu Redis envelope of a task message",
        "description": "On a Redis broker a message is this JSON object, pushed with LPUSH "
        "onto the list named as the queue (`tenantkeys.sign`...). Workers take from the "
        "other end, so jobs run in the order they were pushed.",
        "type": "object",
        "required": ["body", "content-encoding", "content-type", "headers", "properties"],
        # Each content type with its own encoding: JSON, msgpack (a compact sign_batch), or
        # Celery's signed envelope around either (message signing on).
        "anyOf": [
            {
                "properties": {
                    "content-type": {"const": kind},
                    "content-encoding": {"const": encoding},
                }
            }
            for kind, encoding in (
                (CONTENT_TYPE, CONTENT_ENCODING),
                (BINARY_CONTENT_TYPE, BINARY_CONTENT_ENCODING),
                (SIGNED_CONTENT_TYPE, CONTENT_ENCODING),
            )
        ],
        "properties": {
            "body": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "The body (a `*.body.json` array) base64 (standard alphabet, "
                "padded): its UTF-8 JSON, or its msgpack bytes for a compact sign_batch "
                "(content-type application/x-msgpack, content-encoding binary).",
            },
            "content-encoding": {"enum": [CONTENT_ENCODING, BINARY_CONTENT_ENCODING]},
            "content-type": {
                "enum": [CONTENT_TYPE, BINARY_CONTENT_TYPE, SIGNED_CONTENT_TYPE],
            },
            "headers": {"$ref": HEADERS_FILE},
            "properties": {
                "type": "object",
                "required": ["body_encoding", "delivery_tag", "delivery_info"],
                "properties": {
                    "body_encoding": {"const": "base64"},
                    "delivery_tag": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Unique per message (a UUID): the worker records the "
                        "message as unacked under it. A message without one is dropped.",
                    },
                    "delivery_info": {
                        "type": "object",
                        "required": ["exchange", "routing_key"],
                        "properties": {
                            "exchange": {"enum": ["", contract.EXCHANGE]},
                            "routing_key": {"enum": list(contract.QUEUES)},
                        },
                        "description": "Where an unacked message goes back to when its "
                        "worker dies: the queue it was pushed to.",
                    },
                    "priority": {
                        "const": 0,
                        "description": "0: the list named exactly as the queue.",
                    },
                    "delivery_mode": {"enum": [1, 2]},
                    "correlation_id": {"type": "string"},
                    "reply_to": {"type": "string"},
                },
            },
        },
    }


def error() -> dict[str, Any]:
    """The error detail of a failed job or ``sign_batch`` item (:class:`contract.ErrorDetail`)."""
    schema: dict[str, Any] = TypeAdapter(contract.ErrorDetail).json_schema()
    properties = schema["properties"]
    properties["code"] = {"$ref": ERROR_CODE_FILE}
    properties["retryable"]["description"] = (
        "true: the failure was transient (a dependency did not answer); sending the job "
        "again later may succeed. false: sent again unchanged, it fails again."
    )
    properties["doc"]["description"] = "The code's section in the troubleshooting page."
    properties["dead_letter"]["description"] = (
        "The dead-letter entry holding the job (`tenantkeys dlq show <id>`)."
    )
    properties["results"] = {
        "type": "array",
        "description": "sign_batch given up after transient failures: each item's outcome "
        "so far, as in a sign_batch result.",
    }
    return schema


def error_code() -> dict[str, Any]:
    """Every ``TK-*`` code; each has a section in docs/setup/KMS_TROUBLESHOOTING.md."""
    return {
        "title": "tenantkeys error code",
        "description": "A stable code. Its section in docs/setup/KMS_TROUBLESHOOTING.md "
        "says what it means and what to do; new codes may be added.",
        "type": "string",
        "enum": [str(code) for code in ErrorCode],
    }


def _record(state: str, result: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "title": f"Stored {state} result",
        "description": description,
        "type": "object",
        "required": ["status", "result", "task_id"],
        "properties": {
            "status": {"const": state},
            "result": result,
            "traceback": {"type": ["string", "null"]},
            "children": {"type": "array"},
            "date_done": {"type": ["string", "null"], "description": "ISO 8601, UTC."},
            "task_id": {"type": "string", "description": "The job id."},
        },
    }


def success(task: str) -> dict[str, Any]:
    """What ``celery-task-meta-<id>`` holds once a ``task`` job (or a compact sign_batch,
    :data:`COMPACT_BATCH`) succeeded."""
    job = f"compact {contract.SIGN_BATCH}" if task == COMPACT_BATCH else task
    envelope = {
        "type": "object",
        "required": ["ok", "result"],
        "properties": {"ok": {"const": True}, "result": {"$ref": result_file(task)}},
        "additionalProperties": False,
    }
    return _record(
        "SUCCESS",
        envelope,
        f"The result of a {job} job that succeeded, stored as JSON under "
        "celery-task-meta-<job id>. A success is final: a job sent again under the same "
        "id never replaces it.",
    )


def failure() -> dict[str, Any]:
    """What ``celery-task-meta-<id>`` holds once a job failed with a tenantkeys error."""
    exception = {
        "type": "object",
        "required": ["exc_type", "exc_module", "exc_message"],
        "properties": {
            "exc_type": {
                "type": "string",
                "description": "The error's class (InvalidRequest, KeyNotFound, "
                "TransientKmsError...).",
            },
            "exc_module": {"const": "tenantkeys.errors"},
            "exc_message": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "items": [
                    {"type": "string", "description": "CODE: message (see doc)"},
                    {"$ref": ERROR_FILE},
                ],
                "additionalItems": False,
            },
        },
    }
    return _record(
        "FAILURE",
        exception,
        "A job that was refused (bad input), dead-lettered or out of retries, stored under "
        "celery-task-meta-<job id> as Celery stores an exception: exc_message is [one line, "
        "error detail] and the detail's `code` is stable. A FAILURE of another shape (a "
        "worker crash, a time limit) is not a tenantkeys error: see the worker's log.",
    )


def compact_batch() -> dict[str, dict[str, Any]]:
    """The arguments and result of the compact ``sign_batch``, each a document of its own.

    Its payloads are msgpack bin (raw bytes) or, in its JSON twin, base64 strings; the job's
    own form decides its result's form (:func:`tenantkeys.jobs.contract.is_compact_batch`).
    """
    shapes = contract.json_schemas()[contract.SIGN_BATCH]  # fresh dicts on every call
    arguments = shapes["arguments"]["$defs"]["SignBatchCompactArgs"]
    arguments["properties"]["payloads"]["items"] = {
        "anyOf": [
            {
                "type": "string",
                "format": "binary",
                "description": "In msgpack (application/x-msgpack): the payload's raw "
                "bytes, as a bin.",
            },
            {
                "type": "string",
                "contentEncoding": "base64",
                "description": "In JSON: the payload in base64 (standard alphabet, padded), "
                "as in a sign job. Invalid base64 fails this payload alone "
                "(TK-INVALID-ENCODING).",
            },
        ]
    }
    result: dict[str, Any] = TypeAdapter(contract.SignBatchCompactResult).json_schema()
    return {"arguments": arguments, "result": result}


def _document(schema: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": DIALECT, **schema}


def schemas() -> dict[str, dict[str, Any]]:
    """Every file of ``docs/contract/schemas/`` by name, as the code defines it now."""
    files: dict[str, dict[str, Any]] = {}
    for task, shapes in contract.json_schemas().items():
        files[arguments_file(task)] = shapes["arguments"]
        files[result_file(task)] = shapes["result"]
        files[body_file(task)] = body(task)
        files[success_file(task)] = success(task)
    compact = compact_batch()
    files[arguments_file(COMPACT_BATCH)] = compact["arguments"]
    files[result_file(COMPACT_BATCH)] = compact["result"]
    files[body_file(COMPACT_BATCH)] = body(COMPACT_BATCH)
    files[success_file(COMPACT_BATCH)] = success(COMPACT_BATCH)
    files[HEADERS_FILE] = headers()
    files[EMBED_FILE] = embed()
    files[REDIS_ENVELOPE_FILE] = redis_envelope()
    files[ERROR_FILE] = error()
    files[ERROR_CODE_FILE] = error_code()
    files[FAILURE_FILE] = failure()
    return {name: _document(schema) for name, schema in sorted(files.items())}


def render(schema: dict[str, Any]) -> str:
    """A schema as its file holds it (stable: 2-space JSON, UTF-8, one final newline)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def differences(directory: Path) -> list[str]:
    """What in ``directory`` differs from :func:`schemas`: one line per file, empty if none."""
    wanted = {name: render(schema) for name, schema in schemas().items()}
    found = {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.json"))}
    problems = [f"{name}: missing" for name in wanted if name not in found]
    problems += [
        f"{name}: differs" for name in wanted if name in found and found[name] != wanted[name]
    ]
    problems += [f"{name}: not generated (stale)" for name in found if name not in wanted]
    return problems


def write(directory: Path) -> list[str]:
    """Write every schema into ``directory`` and remove stale ones; returns what changed."""
    changed = differences(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = schemas()
    for stale in directory.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    for name, schema in wanted.items():
        (directory / name).write_text(render(schema), encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: write the schemas, or ``--check`` them (exit status 1 if stale)."""
    parser = argparse.ArgumentParser(
        prog="python -m tenantkeys.jobs.published",
        description="Write or check docs/contract/schemas/.",
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help=f"default: {SCHEMA_DIR}")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences(args.dir)
        for line in problems:
            print(f"{args.dir}/{line}", file=sys.stderr)
        if problems:
            print("run: python -m tenantkeys.jobs.published", file=sys.stderr)
        return 1 if problems else 0
    for line in write(args.dir):
        print(f"{args.dir}/{line}: written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
