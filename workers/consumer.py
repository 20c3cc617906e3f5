"""Dead letters for messages no task could take: undecodable, disallowed or unknown tasks.

Celery's consumer logs such messages -- with their body, which here would be a payload -- and
acks them, so they vanish. :class:`DeadLetterConsumer` (the ``worker_consumer`` of the app)
records each one in the dead-letter store instead, logs one redacted line, and keeps going.
Their body is sealed like any dead letter's arguments; they are not replayable as jobs.

With message signing on, an unsigned message (``ContentDisallowed``) or one whose signature does
not verify (``SecurityError``, raised as a decode error) is recorded as ``TK-MESSAGE-UNSIGNED``.

With producer scopes on (``workers/producers.py``), a job its producer may not ask for ends
here too: ``TK-SCOPE-DENIED`` is stored as the job's FAILURE (not dead-lettered: it is the
producer's mistake, like any rejected job); ``TK-JOB-ID-CONFLICT`` is dead-lettered and stores
no result, so the id keeps the first producer's.

Every task message's ``argsrepr`` / ``kwargsrepr`` headers are made redacted (payload hash and
size) before Celery builds its request from them (:func:`redact_reprs`): Celery logs them and
sends them in task-received events (Flower shows them), and a producer written from the
contract may omit them or set the arguments' plain ``repr``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import uuid
from typing import Any

from celery.exceptions import WorkerShutdown
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from tenantkeys import jobs, telemetry
from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError
from tenantkeys.jobs.deadletters import Attempt, DeadLetterStore, DeadLetterWriter
from tenantkeys.jobs.runner import Outcome
from tenantkeys.keys.runtime import redis_client
from tenantkeys.queue.config import queue_type_refused
from tenantkeys.queue.message_signing import SIGNED_CONTENT_TYPE
from workers import delayed_delivery
from workers.app import producer_scopes, settings
from workers.outcomes import Finished, ResultOnly, write_results
from workers.producers import QueueScopes, Refusal

log = logging.getLogger(__name__)
#: What the workers accept, for the reason of a refused message.
_ACCEPTED = (
    "JSON or msgpack signed by a trusted certificate"
    if settings.message_signing
    else "JSON or msgpack"
)
_writer: DeadLetterWriter | None = None
_REJECTED: tuple[telemetry.SignatureOutcome] = ("rejected",)
#: The ``argsrepr`` of :func:`tenantkeys.jobs.argsrepr` (jobs take keyword arguments only).
_REDACTED_ARGS = frozenset({"()", "(...)"})
#: A longer ``kwargsrepr`` is computed again, not parsed (a redacted one is ~100 bytes a job,
#: and shows at most 20 items of a batch).
_MAX_KWARGSREPR = 8192
#: Strings of a redacted ``kwargsrepr`` are this short (``jobs.redact`` keeps no longer one).
_MAX_SHOWN_STRING = 128
#: How deep a task message body may nest lists and maps (a sign_batch needs 4).
_MAX_NESTING = 32


def writer() -> DeadLetterWriter:
    """The parent worker process's dead-letter writer (the consumer's, and lost batches')."""
    global _writer  # noqa: PLW0603 - one per process
    if _writer is None:
        store = DeadLetterStore.from_settings(settings, redis_client(settings))
        _writer = DeadLetterWriter(store)
    return _writer


def record_message(
    message: Any, reason: str, code: ErrorCode, hostname: str
) -> tuple[str, dict[str, Any]] | None:
    """Store ``message`` as a dead letter: ``(job id, failed envelope)``, None if that failed."""
    headers = dict(message.headers or {})
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    task = str(headers.get("task") or "<no task header>")[:200]
    job_id = str(headers.get("id") or uuid.uuid4())[:200]
    where = Attempt(job_id, 0, (message.delivery_info or {}).get("routing_key"), hostname)
    try:
        envelope = writer().write(
            task,
            {
                "body": body.decode("latin-1"),
                "content_type": message.content_type,
                "content_encoding": message.content_encoding,
            },
            InvalidRequest(reason, code=code),
            where,
            arguments={
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_size": len(body),
                "content_type": message.content_type,
            },
            replayable=False,
        )
    except Exception as exc:  # the consumer must keep running whatever the store does
        log.critical("message %s could not be dead-lettered (%s)", job_id, type(exc).__name__)
        return None
    log.error("message %s (%s) dead-lettered: %s", job_id, task, reason)
    return job_id, envelope


def shape_problem(message: Any) -> str | None:
    """Why a task message cannot reach a task strategy, or None if its shape is sound.

    Celery's strategies unpack protocol-2 bodies as ``[args, kwargs, embed]`` before any task
    code runs, and an exception there stops the whole worker ("Unrecoverable error"). So the
    shape is checked first: one crafted message must not stop every worker in turn.
    """
    headers = message.headers
    if not isinstance(headers, dict):
        return "message headers are not a mapping"
    task = headers.get("task")
    if task is None:
        return None  # not protocol 2: Celery's own checks route it to on_unknown_message
    if not isinstance(task, str):
        return "the task header is not a string"
    try:
        body = message.decode()
    except Exception:  # undecodable: Celery's own decode-error path records it
        return None
    if (
        isinstance(body, list | tuple)
        and len(body) == 3
        and isinstance(body[0], list | tuple)
        and isinstance(body[1], dict)
        and isinstance(body[2], dict)
    ):
        # msgpack maps may have bin keys: Celery's call ``task(**kwargs)`` (and the redacted
        # reprs) would fail on them outside any task, uncoded.
        if not all(isinstance(name, str) for name in (*body[1], *body[2])):
            return "task message kwargs and embed must have string keys"
        if _deeper_than(body, _MAX_NESTING):
            # The pool's pipe (pickle) and JSON recurse: a body nested ~1,000 deep would stop
            # the worker process that hands it on, not fail the job.
            return f"task message body is nested deeper than {_MAX_NESTING} levels"
        return None
    return "task message body is not [args, kwargs, embed]"


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests lists and maps more than ``limit`` deep (iterative: a hostile
    body must not exhaust the stack of the check meant to refuse it)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
    return False


def redact_reprs(message: Any) -> None:
    """Make a protocol-2 task message's ``argsrepr`` / ``kwargsrepr`` headers redacted.

    Kept when the producer's are redacted already (ours, the contract's examples): JSON with
    no ``payload`` and no long string in it, checked without decoding a payload. Otherwise
    computed from the decoded body, so no log line or task event shows a payload byte.
    """
    headers = message.headers  # a dict: shape_problem checked it
    if not isinstance(headers.get("task"), str):
        return  # protocol 1: Celery 5.6 shows its arguments as None (tests/e2e/test_redaction.py)
    if _redacted_reprs(headers.get("argsrepr"), headers.get("kwargsrepr")):
        return
    try:
        args, kwargs, _embed = message.decode()  # memoized: decoded once already
    except Exception:  # undecodable: Celery's decode-error path records it
        return
    try:
        headers["argsrepr"], headers["kwargsrepr"] = jobs.argsrepr(args, kwargs)
    except (TypeError, ValueError, RecursionError):
        # Arguments no redaction can show (msgpack oddities): shown as nothing, never raw.
        headers["argsrepr"], headers["kwargsrepr"] = "(...)", "{}"


def _redacted_reprs(args: object, kwargs: object) -> bool:
    if args not in _REDACTED_ARGS or not isinstance(kwargs, str):
        return False
    if len(kwargs) > _MAX_KWARGSREPR:
        return False
    try:
        shown = json.loads(kwargs)
    except (ValueError, RecursionError):  # not JSON: the arguments' repr, say
        return False
    return isinstance(shown, dict) and _shows_no_payload(shown)


def _shows_no_payload(shown: object) -> bool:
    if isinstance(shown, dict):
        return "payload" not in shown and all(_shows_no_payload(v) for v in shown.values())
    if isinstance(shown, list):
        return all(_shows_no_payload(v) for v in shown)
    return not isinstance(shown, str) or len(shown) <= _MAX_SHOWN_STRING


class DeadLetterConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, with every "cannot run this message" path ending in the store."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        # Quorum queues' delay set-up through the first node that answers, not every node.
        default_steps = [
            delayed_delivery.STEP if step == delayed_delivery.CELERY_STEP else step
            for step in Consumer.Blueprint.default_steps
        ]

    def start(self) -> None:
        try:
            super().start()
        except Exception as exc:
            # Queues that exist with another type stop the worker with one coded line, not
            # Celery's "Unrecoverable error" traceback: retrying cannot help.
            refused = queue_type_refused(exc, self.app.conf.task_default_queue_type)
            if refused is None:
                raise
            log.critical("%s", refused.one_line())
            raise WorkerShutdown(78) from exc  # EX_CONFIG

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handler = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            problem = shape_problem(message)
            if problem is not None:
                return self._dead_letter(message, problem, ErrorCode.INVALID_ARGUMENT)
            refusal = producer_scopes.refusal(message) if producer_scopes is not None else None
            if refusal is not None:
                return self._refuse(message, refusal)
            redact_reprs(message)
            try:
                return handler(message)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # Anything else malformed that Celery's strategies choke on: record, go on.
                return self._dead_letter(
                    message,
                    f"malformed task message ({type(exc).__name__})",
                    ErrorCode.INVALID_ARGUMENT,
                )

        return on_task_received

    def _dead_letter(self, message: Any, reason: str, code: ErrorCode) -> None:
        recorded = record_message(message, reason, code, self.hostname or socket.gethostname())
        if isinstance((message.headers or {}).get("id"), str) and recorded is not None:
            # A caller waiting on this job gets the error now instead of a timeout.
            job_id, envelope = recorded
            self._store_failure(job_id, envelope, InvalidRequest(reason, code=code))
        # Acked either way: requeueing a message no worker can decode would loop forever.
        message.ack()

    def _store_failure(
        self,
        job_id: str,
        envelope: dict[str, Any],
        error: TenantKeysError,
        signatures: tuple[telemetry.SignatureOutcome, ...] = (),
    ) -> None:
        finished = Finished(
            ResultOnly(job_id), Outcome(envelope, error=error, signatures=signatures), {}
        )
        try:
            write_results(self.app, [finished], [])
        except Exception as exc:  # best effort: the dead letter or log line is what matters
            log.warning("result of refused job not stored (%s)", type(exc).__name__)

    def _refuse(self, message: Any, refusal: Refusal) -> None:
        """A job its producer may not send: counted, never run, and acked."""
        error = refusal.error
        if error.code not in (ErrorCode.SCOPE_DENIED, ErrorCode.JOB_ID_CONFLICT):
            self._dead_letter(message, error.message, error.code)
            return
        QueueScopes.count(refusal)
        headers = message.headers or {}
        job_id = headers.get("id")
        shown = str(job_id)[:200]
        if refusal.keeps_result:
            # Dead-lettered for review, and no result: the id's result is the first producer's.
            record_message(
                message, error.message, error.code, self.hostname or socket.gethostname()
            )
            message.ack()
            return
        log.warning("job %s (%s) refused: %s", shown, str(headers.get("task"))[:200], error.message)
        if isinstance(job_id, str):
            self._store_failure(job_id, jobs.failed(error), error, _REJECTED * _signatures(message))
        message.ack()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if settings.message_signing and message.content_type == SIGNED_CONTENT_TYPE:
            # Celery's auth serializer raised SecurityError (kombu wraps it as DecodeError).
            self._dead_letter(
                message,
                "task message signature could not be verified (unknown signer certificate, "
                "bad signature or altered body)",
                ErrorCode.MESSAGE_UNSIGNED,
            )
            return
        self._dead_letter(
            message,
            f"message could not be decoded ({type(exc).__name__}, content type "
            f"{message.content_type!r}); only {_ACCEPTED} is accepted",
            ErrorCode.INVALID_ENCODING,
        )

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(
            message, "message is not a Celery task message", ErrorCode.INVALID_ARGUMENT
        )

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = str((message.headers or {}).get("task", "?"))[:200]
        self._dead_letter(
            message, f"no task named {name!r} is registered", ErrorCode.INVALID_ARGUMENT
        )

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if settings.message_signing and isinstance(exc, ContentDisallowed):
            self._dead_letter(
                message,
                f"task message is not signed (content type {message.content_type!r}); only "
                f"{_ACCEPTED} is accepted",
                ErrorCode.MESSAGE_UNSIGNED,
            )
            return
        self._dead_letter(
            message,
            f"invalid task message ({type(exc).__name__}); only {_ACCEPTED} is accepted",
            ErrorCode.INVALID_ENCODING,
        )


def _signatures(message: Any) -> int:
    """How many signatures a refused job asked for: one per sign, one per batch item."""
    task = (message.headers or {}).get("task")
    if task == jobs.SIGN:
        return 1
    if task != jobs.SIGN_BATCH:
        return 0
    try:
        kwargs = message.decode()[1]
        items = kwargs.get(jobs.COMPACT_BATCH_FIELD if jobs.is_compact_batch(kwargs) else "items")
    except Exception:  # its shape was checked; anything odd counts as one
        return 1
    return min(len(items), jobs.MAX_BATCH_ITEMS) if isinstance(items, list) and items else 1
