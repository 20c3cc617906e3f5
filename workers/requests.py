"""The worker's request class: remote-control answers show redacted arguments only.

Celery's ``inspect active``, ``reserved``, ``scheduled`` and ``query_task`` (and Flower's
worker page, which shows those answers) describe each job with ``Request.info()``, whose
default is ``safe=False``: the job's own args and kwargs, base64 payloads included. Our
requests answer with the message's ``argsrepr`` / ``kwargsrepr`` headers instead, always:
redacted by the producer, or by the consumer when it was not (``consumer.redact_reprs``).

Uses only Celery's public extension point, ``Task.Request = "module:Class"``, and the
documented ``Request.info`` / ``argsrepr`` / ``kwargsrepr``.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request


class RedactedRequest(Request):  # type: ignore[misc]
    """A request whose ``info()`` never carries a payload, whatever ``safe`` it is asked for."""

    __slots__ = ()

    def info(self, safe: bool = True) -> dict[str, Any]:
        # No payload leaves the worker through remote control: always the redacted reprs.
        info: dict[str, Any] = super().info(safe=True)
        return info
