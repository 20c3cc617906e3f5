"""Celery's OpenTelemetry instrumentation: trace context travels in each message's headers.

It lives in the queue package because the instrumentation imports Celery; the tracer provider
itself is set up by :mod:`tenantkeys.telemetry.tracing`.
"""

from __future__ import annotations


def instrument_celery() -> None:
    """Trace Celery publish and execution; carries trace context from producer to worker.

    Call in every process that sends or runs tasks: in workers from ``worker_process_init``
    (after the fork), in producers once at start. Idempotent.
    """
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
