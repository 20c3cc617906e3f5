"""Dead letters for messages no task could take: undecodable, disallowed or unknown tasks.

Celery's consumer logs such messages -- with their body, which here would be a payload -- and
acks them, so they vanish. :class:`DeadLetterConsumer` (the ``worker_consumer`` of the app)
records each one in the dead-letter store instead, logs one redacted line, and keeps going.
Their body is sealed like any dead letter's arguments; they are not replayable as jobs.

With message signing on, an unsigned message (``ContentDisallowed``) or one whose signature does
not verify (``SecurityError``, raised as a decode error) is recorded as ``TK-MESSAGE-UNSIGNED``.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import uuid
from typing import Any

from celery.exceptions import WorkerShutdown
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from tenantkeys.errors import ErrorCode, InvalidRequest
from tenantkeys.jobs.deadletters import Attempt, DeadLetterStore, DeadLetterWriter
from tenantkeys.jobs.runner import Outcome
from tenantkeys.keys.runtime import redis_client
from tenantkeys.queue.config import queue_type_refused
from tenantkeys.queue.message_signing import SIGNED_CONTENT_TYPE
from workers import delayed_delivery
from workers.app import settings
from workers.outcomes import Finished, ResultOnly, write_results

log = logging.getLogger(__name__)
#: What the workers accept, for the reason of a refused message.
_ACCEPTED = "JSON signed by a trusted certificate" if settings.message_signing else "JSON"
_writer: DeadLetterWriter | None = None


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
        return None
    return "task message body is not [args, kwargs, embed]"


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
            error = InvalidRequest(reason, code=code)
            finished = Finished(ResultOnly(job_id), Outcome(envelope, error=error), {})
            try:
                write_results(self.app, [finished], [])
            except Exception as exc:  # best effort: the dead letter is what matters
                log.warning("result of dead-lettered job not stored (%s)", type(exc).__name__)
        # Acked either way: requeueing a message no worker can decode would loop forever.
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
