"""Metrics and tracing: names, labels, recording, multiprocess merge, the exporter, spans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tenantkeys import telemetry
from tenantkeys.errors import (
    CircuitOpenError,
    InvalidRequest,
    KmsConfigError,
    KmsPermissionError,
    TransientKmsError,
)
from tenantkeys.providers import SUPPORTED
from tenantkeys.telemetry import tracing
from tests.conftest import free_port

pytestmark = pytest.mark.unit

#: The label names the service may use; ``version`` only on tenantkeys_build_info, ``le`` is
#: the histogram bucket bound.
ALLOWED_LABELS = {"provider", "operation", "outcome", "layer", "result", "queue", "purpose"}
ALLOWED_LABELS |= {"state", "version", "le"}
#: The scope counters: a producer's name from the scopes file (bounded), queue or http.
ALLOWED_LABELS |= {"producer", "path"}

FULL_STATE = telemetry.ServiceState(
    last_sweep_timestamp=1_700_000_000.0,
    keys_overdue_rotation=2,
    oldest_active_key_age_seconds=86_400.0,
    dead_letter_depth=3,
    dead_letter_oldest_age_seconds=120.0,
    breaker_states={"aws": "open", "vault": "half-open", "local": "closed"},
    queue_depths={"tenantkeys.sign": 7, "tenantkeys.keys": 0},
)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def record_one_of_everything() -> None:
    telemetry.record_kms_call("aws", "decrypt", "ok", 0.01)
    telemetry.record_cache_lookup("l1", "hit")
    telemetry.set_l1_entries(1)
    telemetry.record_signature("ok", 0.002)
    telemetry.record_rotation("signing", "ok")
    telemetry.record_scope_refusal("billing", "queue")
    telemetry.record_job_id_conflict("billing", "http")
    telemetry.set_build_info("0.1.0", "aws")


@pytest.fixture
def default_prices() -> Iterator[None]:
    yield
    telemetry.configure_prices({})


def test_every_metric_name_starts_with_tenantkeys() -> None:
    names = [family.name for metric in telemetry.METRICS for family in metric.describe()]
    names += list(telemetry.STATE_GAUGES)
    assert len(names) == len(set(names)) == 18
    assert all(name.startswith("tenantkeys_") for name in names), names


def test_exposition_covers_every_metric_with_only_fixed_labels() -> None:
    record_one_of_everything()
    text = telemetry.render_metrics(None, lambda: FULL_STATE)
    families = {family.name: family for family in text_string_to_metric_families(text.decode())}
    # single-process mode adds a *_created family per counter and histogram; skip those
    ours = {n for n in families if n.startswith("tenantkeys_") and not n.endswith("_created")}
    expected = {f.name for m in telemetry.METRICS for f in m.describe()} | set(
        telemetry.STATE_GAUGES
    )
    assert ours == expected
    labels = {label for name in ours for s in families[name].samples for label in s.labels}
    assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS
    assert not [label for label in labels if "tenant" in label.lower()]


def test_provider_label_values_are_the_registered_providers() -> None:
    assert telemetry.PROVIDERS == SUPPORTED
    assert set(telemetry.DEFAULT_KMS_PRICES_USD) == set(SUPPORTED)


def test_record_kms_call_counts_times_and_prices(default_prices: None) -> None:
    labels = {"provider": "aws", "operation": "encrypt"}
    before = (
        value("tenantkeys_kms_requests_total", outcome="ok", **labels),
        value("tenantkeys_kms_request_duration_seconds_count", **labels),
        value("tenantkeys_kms_request_duration_seconds_sum", **labels),
        value("tenantkeys_kms_estimated_cost_usd_total", provider="aws"),
        value("tenantkeys_kms_estimated_cost_usd_total", provider="vault"),
    )
    telemetry.record_kms_call("aws", "encrypt", "ok", 0.25)
    telemetry.record_kms_call("vault", "encrypt", "ok", 0.25)
    assert value("tenantkeys_kms_requests_total", outcome="ok", **labels) == before[0] + 1
    assert value("tenantkeys_kms_request_duration_seconds_count", **labels) == before[1] + 1
    assert value("tenantkeys_kms_request_duration_seconds_sum", **labels) == pytest.approx(
        before[2] + 0.25
    )
    aws_cost = value("tenantkeys_kms_estimated_cost_usd_total", provider="aws")
    assert aws_cost == pytest.approx(before[3] + 0.000003)
    assert value("tenantkeys_kms_estimated_cost_usd_total", provider="vault") == before[4]


def test_configure_prices_overrides_one_provider_and_validates(default_prices: None) -> None:
    telemetry.configure_prices({"gcp": 0.001})
    before = value("tenantkeys_kms_estimated_cost_usd_total", provider="gcp")
    telemetry.record_kms_call("gcp", "decrypt", "ok", 0.01)
    after = value("tenantkeys_kms_estimated_cost_usd_total", provider="gcp")
    assert after == pytest.approx(before + 0.001)
    with pytest.raises(ValueError, match="must be >= 0"):
        telemetry.configure_prices({"aws": -1.0})
    with pytest.raises(ValueError, match="provider"):
        telemetry.configure_prices({"oracle": 0.1})


@pytest.mark.parametrize(
    ("call", "label"),
    [
        (lambda: telemetry.record_kms_call("oracle", "decrypt", "ok", 0.1), "provider"),
        (lambda: telemetry.record_kms_call("aws", "sign", "ok", 0.1), "operation"),  # type: ignore[arg-type]
        (lambda: telemetry.record_kms_call("aws", "decrypt", "boom", 0.1), "outcome"),  # type: ignore[arg-type]
        (lambda: telemetry.record_cache_lookup("l3", "hit"), "layer"),  # type: ignore[arg-type]
        (lambda: telemetry.record_signature("tenant-42", None), "outcome"),  # type: ignore[arg-type]
        (lambda: telemetry.record_rotation("signing", "maybe"), "outcome"),  # type: ignore[arg-type]
    ],
)
def test_label_values_outside_the_fixed_set_are_refused(call: object, label: str) -> None:
    with pytest.raises(ValueError, match=f"metric label {label}="):
        call()  # type: ignore[operator]


def test_refused_values_mint_no_series() -> None:
    with pytest.raises(ValueError):
        telemetry.record_kms_call("oracle", "decrypt", "ok", 0.1)
    assert b'provider="oracle"' not in telemetry.render_metrics(None)


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (TransientKmsError("slow"), "transient"),
        (KmsPermissionError("no kms:Decrypt"), "permission"),
        (KmsConfigError("key disabled"), "config"),
        (InvalidRequest("bad"), "error"),
        (RuntimeError("bug"), "error"),
    ],
)
def test_kms_outcome_follows_the_error_tree(exc: BaseException | None, outcome: str) -> None:
    assert telemetry.kms_outcome(exc) == outcome


def test_kms_call_counts_success_and_failure_but_not_an_open_circuit() -> None:
    def count(outcome: str) -> float:
        return value(
            "tenantkeys_kms_requests_total", provider="azure", operation="describe", outcome=outcome
        )

    ok, transient = count("ok"), count("transient")
    with telemetry.kms_call("azure", "describe"):
        pass
    with pytest.raises(TransientKmsError), telemetry.kms_call("azure", "describe"):
        raise TransientKmsError("503")
    with pytest.raises(CircuitOpenError), telemetry.kms_call("azure", "describe"):
        raise CircuitOpenError("open")
    assert (count("ok"), count("transient")) == (ok + 1, transient + 1)


def test_cache_signature_and_rotation_counters() -> None:
    hit = value("tenantkeys_cache_lookups_total", layer="l2", result="hit")
    telemetry.record_cache_lookup("l2", "hit")
    assert value("tenantkeys_cache_lookups_total", layer="l2", result="hit") == hit + 1

    ok = value("tenantkeys_signatures_total", outcome="ok")
    retry = value("tenantkeys_signatures_total", outcome="retry")
    count = value("tenantkeys_sign_latency_seconds_count")
    fastest = value("tenantkeys_sign_latency_seconds_bucket", le="0.0005")
    within_10s = value("tenantkeys_sign_latency_seconds_bucket", le="10.0")
    telemetry.record_signature("ok", -0.3)  # producer clock ahead: clamped to 0
    telemetry.record_signature("retry", None)
    assert value("tenantkeys_signatures_total", outcome="ok") == ok + 1
    assert value("tenantkeys_signatures_total", outcome="retry") == retry + 1
    assert value("tenantkeys_sign_latency_seconds_count") == count + 1
    assert value("tenantkeys_sign_latency_seconds_bucket", le="0.0005") == fastest + 1
    assert value("tenantkeys_sign_latency_seconds_bucket", le="10.0") == within_10s + 1

    failed = value("tenantkeys_rotations_total", purpose="encryption", outcome="failed")
    telemetry.record_rotation("encryption", "failed")
    assert value("tenantkeys_rotations_total", purpose="encryption", outcome="failed") == (
        failed + 1
    )


def test_state_probe_is_read_at_scrape_time() -> None:
    depth = iter([3, 0])

    def probe() -> telemetry.ServiceState:
        return telemetry.ServiceState(dead_letter_depth=next(depth), breaker_states={"aws": "open"})

    first = samples(telemetry.render_metrics(None, probe))
    second = samples(telemetry.render_metrics(None, probe))
    assert first[("tenantkeys_dead_letter_depth", ())] == 3
    assert second[("tenantkeys_dead_letter_depth", ())] == 0
    assert first[("tenantkeys_circuit_breaker_state", (("provider", "aws"),))] == 2
    assert ("tenantkeys_keys_overdue_rotation", ()) not in first  # unknown: not exported


def test_full_state_values() -> None:
    got = samples(telemetry.render_metrics(None, lambda: FULL_STATE))
    assert got[("tenantkeys_rotation_last_sweep_timestamp_seconds", ())] == 1_700_000_000
    assert got[("tenantkeys_keys_overdue_rotation", ())] == 2
    assert got[("tenantkeys_circuit_breaker_state", (("provider", "vault"),))] == 1
    assert got[("tenantkeys_circuit_breaker_state", (("provider", "local"),))] == 0
    assert got[("tenantkeys_queue_depth", (("queue", "tenantkeys.sign"),))] == 7


def redis_down() -> telemetry.ServiceState:
    raise ConnectionError("redis down")


@pytest.mark.parametrize(
    "probe",
    [
        redis_down,
        lambda: telemetry.ServiceState(dead_letter_depth=1, queue_depths={"celery": 5}),  # type: ignore[dict-item]
    ],
    ids=["probe-raises", "bad-label-value"],
)
def test_a_broken_probe_drops_state_metrics_only(probe: telemetry.StateProbe) -> None:
    telemetry.record_signature("ok", 0.01)
    got = samples(telemetry.render_metrics(None, probe))
    assert ("tenantkeys_signatures_total", (("outcome", "ok"),)) in got
    assert not [name for name, _ in got if name in telemetry.STATE_GAUGES]


RECORDER = textwrap.dedent(
    """
    import json, os, sys
    from tenantkeys import telemetry
    telemetry.record_kms_call("aws", "decrypt", "ok", 0.02)
    telemetry.record_signature("ok", 0.004)
    telemetry.set_l1_entries(int(sys.argv[1]))
    telemetry.set_build_info("0.1.0", "aws")
    print(json.dumps({"pid": os.getpid()}))
    """
)


def run_recorder(multiproc_dir: Path, l1_entries: int) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    result = subprocess.run(
        [sys.executable, "-c", RECORDER, str(l1_entries)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(json.loads(result.stdout)["pid"])


def test_multiprocess_values_are_merged_across_processes(tmp_path: Path) -> None:
    telemetry.reset_multiproc_dir(tmp_path)
    first = run_recorder(tmp_path, 5)
    run_recorder(tmp_path, 7)

    got = samples(telemetry.render_metrics(tmp_path, lambda: FULL_STATE))
    kms = (("operation", "decrypt"), ("outcome", "ok"), ("provider", "aws"))
    assert got[("tenantkeys_kms_requests_total", kms)] == 2
    assert got[("tenantkeys_sign_latency_seconds_count", ())] == 2
    assert got[("tenantkeys_l1_cache_entries", ())] == 12  # livesum
    assert got[("tenantkeys_build_info", (("provider", "aws"), ("version", "0.1.0")))] == 1
    assert got[("tenantkeys_dead_letter_depth", ())] == 3

    telemetry.process_exited(first, tmp_path)
    after = samples(telemetry.render_metrics(tmp_path))
    assert after[("tenantkeys_l1_cache_entries", ())] == 7  # the dead child's L1 is gone
    assert after[("tenantkeys_kms_requests_total", kms)] == 2  # counters survive it

    (tmp_path / f"counter_{os.getpid()}.db").write_bytes(b"")
    telemetry.reset_multiproc_dir(tmp_path)
    assert [db.name for db in tmp_path.glob("*.db")] == [f"counter_{os.getpid()}.db"]


def test_worker_exporter_serves_merged_metrics(tmp_path: Path) -> None:
    run_recorder(tmp_path, 1)
    port = free_port()
    server = telemetry.start_worker_exporter(port, tmp_path, lambda: FULL_STATE, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read()
    finally:
        server.shutdown()
        server.server_close()
    got = samples(body)
    assert got[("tenantkeys_signatures_total", (("outcome", "ok"),))] == 1
    assert got[("tenantkeys_queue_depth", (("queue", "tenantkeys.sign"),))] == 7


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    provider = tracing.setup_tracing("tenantkeys-test", exporters=[])
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def test_kms_call_and_cache_lookup_make_spans(spans: InMemorySpanExporter) -> None:
    spans.clear()
    with tracing.cache_span("l1") as span:
        span.set_attribute("tenantkeys.cache.result", "miss")
    with pytest.raises(KmsPermissionError), telemetry.kms_call("aws", "decrypt"):
        raise KmsPermissionError("missing kms:Decrypt")
    cache, kms = spans.get_finished_spans()
    assert cache.name == "cache.l1.lookup"
    assert cache.attributes == {"tenantkeys.cache.layer": "l1", "tenantkeys.cache.result": "miss"}
    assert kms.name == "kms.decrypt"
    assert kms.attributes is not None
    assert kms.attributes["tenantkeys.kms.provider"] == "aws"
    assert kms.status.status_code is StatusCode.ERROR


def test_setup_tracing_installs_one_provider_and_adds_given_exporters(
    spans: InMemorySpanExporter,
) -> None:
    late = InMemorySpanExporter()
    provider = tracing.setup_tracing("another", exporters=[late])
    assert provider is tracing.setup_tracing("tenantkeys-test")
    with tracing.kms_span("vault", "encrypt"):
        pass
    provider.force_flush()
    assert [span.name for span in late.get_finished_spans()] == ["kms.encrypt"]


@pytest.mark.parametrize(
    ("setting", "expected"), [(None, []), ("none", []), ("console", [ConsoleSpanExporter])]
)
def test_exporter_follows_otel_traces_exporter(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: list[type]
) -> None:
    if setting is None:
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", setting)
    assert [type(exporter) for exporter in tracing._env_exporters()] == expected


_INSTRUMENT_PROBE = textwrap.dedent(
    """
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from tenantkeys.queue.tracing import instrument_celery

    def instrumented():
        return CeleryInstrumentor().is_instrumented_by_opentelemetry

    # No provider: every span would be dropped, so the publish hooks are not installed.
    print(instrument_celery(), instrumented())
    trace.set_tracer_provider(TracerProvider())  # the application's, installed later
    print(instrument_celery(), instrumented(), instrument_celery())
    """
)


def test_celery_is_instrumented_once_a_tracer_provider_is_installed() -> None:
    """Without a provider the hooks would cost every publish ~70 us for nothing; a provider
    installed later (an application's own) is picked up at the next call, once."""
    assert _probe(_INSTRUMENT_PROBE) == ["False False", "True True True"]


def _probe(code: str, **otel: str) -> list[str]:
    """The lines ``code`` prints in a fresh interpreter (one tracer provider per process),
    with no ``OTEL_*`` variable but ``otel``'s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    probe = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **otel},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return probe.stdout.splitlines()


_PROVIDER_PROBE = textwrap.dedent(
    """
    from opentelemetry import trace
    from tenantkeys.telemetry import tracing
    installed = tracing.setup_tracing("probe")
    tracer = trace.get_tracer("probe")
    with tracer.start_as_current_span("job") as span:
        print(installed is not None, span.is_recording())
    """
)


@pytest.mark.parametrize(
    ("exporter", "expected"), [(None, "False False"), ("console", "True True")]
)
def test_spans_are_recorded_only_when_an_exporter_is_configured(
    exporter: str | None, expected: str
) -> None:
    otel = {} if exporter is None else {"OTEL_TRACES_EXPORTER": exporter}
    assert _probe(_PROVIDER_PROBE, **otel)[0] == expected
