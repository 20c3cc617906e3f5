"""Celery's OpenTelemetry instrumentation: trace context travels in each message's headers.

It lives in the queue package because the instrumentation imports Celery; the tracer provider
itself is set up by :mod:`tenantkeys.telemetry.tracing`.
"""

from __future__ import annotations

from opentelemetry import trace

#: Set once this process has instrumented Celery (the fast path of every publish).
_instrumented = False


def instrument_celery() -> bool:
    """Trace Celery publish and execution; carries trace context from producer to worker.

    Only once a tracer provider is installed (ours, or the application's own): before that
    every span is a no-op and nothing would be carried, while the hooks cost ~70 us of a
    producer's ~600 us per published job (docs/performance.md). Call in every process that
    sends or runs tasks: in workers from ``worker_process_init`` (after the fork), in
    producers at start and before each publish (a provider installed later is picked up
    then). Idempotent and cheap once done; returns whether Celery is instrumented.
    """
    global _instrumented  # noqa: PLW0603 - one instrumentation per process
    if _instrumented:
        return True
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False  # no provider: OpenTelemetry's default, every span dropped
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
    _instrumented = True
    return True
