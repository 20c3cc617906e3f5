"""OpenTelemetry tracing: provider set-up, the tracer, and spans for KMS calls and cache lookups.

The exporter is chosen by the standard ``OTEL_*`` variables, read by the OpenTelemetry SDK itself
(``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_RESOURCE_ATTRIBUTES``, sampler and
limits); these are the SDK's settings, not ours, so ``config.py`` does not duplicate them.
Unlike the SDK's auto-instrumentation, an unset ``OTEL_TRACES_EXPORTER`` means *no* exporter:
a service started without tracing configured sends nothing anywhere.

Under Celery's prefork pool call :func:`setup_tracing` (and
:func:`tenantkeys.queue.tracing.instrument_celery`) in each child after the fork
(``worker_process_init``): exporter threads and sockets do not survive a fork.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

INSTRUMENTATION_NAME = "tenantkeys"

_provider: TracerProvider | None = None


def setup_tracing(
    service_name: str, *, exporters: Sequence[SpanExporter] | None = None
) -> TracerProvider | None:
    """Install the global tracer provider once per process and return it.

    ``exporters`` overrides the ``OTEL_TRACES_EXPORTER`` choice (tests pass an in-memory
    exporter). ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` win over ``service_name``.
    OpenTelemetry allows one provider per process: a second call returns the one installed,
    adding only the ``exporters`` it is given explicitly.

    With no exporter configured (``OTEL_TRACES_EXPORTER`` unset or ``none``) nothing is
    installed and ``None`` is returned: OpenTelemetry's default no-op provider stays, so no
    span is recorded only to be dropped (what that cost: docs/performance.md).
    """
    global _provider  # noqa: PLW0603 - one provider per process is OpenTelemetry's own rule
    if _provider is not None:
        for exporter in exporters or ():
            _provider.add_span_processor(BatchSpanProcessor(exporter))
        return _provider
    chosen = _env_exporters() if exporters is None else list(exporters)
    if exporters is None and not chosen:
        return None
    resource = Resource.create({SERVICE_NAME: service_name})
    provider = TracerProvider(resource=resource)
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def _env_exporters() -> list[SpanExporter]:
    """Exporters named by ``OTEL_TRACES_EXPORTER``; none when unset or ``none``.

    Uses the SDK's own parsing (including the OTLP gRPC / HTTP protocol choice) and its entry
    points, so ``otlp``, ``console`` and any installed exporter package work as documented.
    """
    names = _get_exporter_names("traces")
    if not names:
        return []
    classes, _, _ = _import_exporters(names, [], [])
    return [cls() for cls in classes.values()]


def ensure_tracing(service_name: str) -> None:
    """:func:`setup_tracing` unless this process already has a tracer provider (ours or its own).

    For libraries such as the producer client: an application that set up OpenTelemetry
    keeps its provider; one that did not gets ours, with the ``OTEL_*`` exporter choice.
    """
    if _provider is None and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        setup_tracing(service_name)


def shutdown_tracing() -> None:
    """Flush and stop the exporters (call at process exit)."""
    if _provider is not None:
        _provider.shutdown()


def tracer() -> trace.Tracer:
    """The tenantkeys tracer; a no-op until :func:`setup_tracing` has run."""
    return trace.get_tracer(INSTRUMENTATION_NAME)


@contextmanager
def kms_span(provider: str, operation: str) -> Iterator[trace.Span]:
    """A client span around one KMS request; an exception is recorded and re-raised."""
    with tracer().start_as_current_span(
        f"kms.{operation}",
        kind=trace.SpanKind.CLIENT,
        attributes={"tenantkeys.kms.provider": provider, "tenantkeys.kms.operation": operation},
    ) as span:
        yield span


@contextmanager
def cache_span(layer: Literal["l1", "l2"]) -> Iterator[trace.Span]:
    """A span around one cache lookup; set ``tenantkeys.cache.result`` on it when known."""
    with tracer().start_as_current_span(
        f"cache.{layer}.lookup", attributes={"tenantkeys.cache.layer": layer}
    ) as span:
        yield span


@contextmanager
def job_span(
    task_name: str, job_id: str, headers: Mapping[str, Any] | None
) -> Iterator[trace.Span]:
    """A consumer span for one job of a batched task, continuing its producer's trace.

    celery-batches hands many messages to one task call, so the Celery instrumentation sees
    only the batch (a trace of its own) and none of the jobs' contexts. Each job gets this
    span instead: a child of the context its message carries (the W3C ``traceparent``
    header), linked to the batch span. A message without one makes a child of the batch.
    """
    carrier = {key: value for key, value in (headers or {}).items() if isinstance(value, str)}
    incoming = extract(carrier)
    from_message = trace.get_current_span(incoming).get_span_context().is_valid
    batch = trace.get_current_span().get_span_context()
    links = [trace.Link(batch)] if from_message and batch.is_valid else None
    with tracer().start_as_current_span(
        f"run/{task_name}",
        context=incoming if from_message else None,
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "celery.action": "run",
            "celery.task_name": task_name,
            "messaging.message.id": job_id,
        },
    ) as span:
        yield span
