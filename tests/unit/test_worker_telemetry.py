"""What the workers record: signature and rotation outcomes, enqueue latency, primed series,
per-job trace spans, the lazy state probe, and the worker's settings and metrics directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from tenantkeys import jobs, telemetry
from tenantkeys.admin.status import LazyStateProbe
from tenantkeys.cli.processes import _remove_stale_metrics
from tenantkeys.config import environment_with, load_settings
from tenantkeys.errors import ConfigurationError, KmsPermissionError, TransientKmsError
from tenantkeys.jobs.runner import JobRunner, Outcome
from tenantkeys.keys.store import KeyStore
from tenantkeys.telemetry import tracing
from tests.helpers import FlakyLocal, make_runner

pytestmark = pytest.mark.unit


@pytest.fixture
def provider(tmp_path: Path) -> FlakyLocal:
    return FlakyLocal(tmp_path / "master.key")


@pytest.fixture
def runner(tmp_path: Path, provider: FlakyLocal) -> JobRunner:
    return make_runner(tmp_path, provider, max_retries=1)


def sign(payload: bytes = b"hello", tenant: str = "acme") -> dict[str, object]:
    return {"tenant_id": tenant, "payload": jobs.encode_payload(payload)}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- outcome labels ------------------------------------------------------------------------


def test_sign_outcomes_are_labelled(runner: JobRunner, provider: FlakyLocal) -> None:
    assert runner.sign(sign(), job_id="a").signatures == ("ok",)
    assert runner.sign(sign(tenant="bad tenant!"), job_id="b").signatures == ("rejected",)
    provider.fail_with = TransientKmsError("slow", provider="local")
    assert runner.sign(sign(), job_id="c").signatures == ("retry",)
    assert runner.sign(sign(), job_id="c", retries=1).signatures == ("failed",)
    provider.fail_with = KmsPermissionError("needs kms:Decrypt", provider="local")
    assert runner.sign(sign(), job_id="d").signatures == ("failed",)


def test_sign_batch_gets_one_label_per_item(runner: JobRunner, provider: FlakyLocal) -> None:
    items = [sign(b"one"), sign(tenant="bad tenant!"), sign(b"three")]
    outcome = runner.sign_batch({"items": items}, job_id="e")
    assert outcome.signatures == ("ok", "rejected", "ok")

    provider.fail_with = TransientKmsError("slow", provider="local")
    assert runner.sign_batch({"items": items}, job_id="f").signatures == ("retry",) * 3
    # Retries spent: dead-lettered with partial results, each item labelled by its own error.
    spent = runner.sign_batch({"items": items}, job_id="f", retries=1)
    assert spent.signatures == ("failed", "rejected", "failed")

    refused = runner.sign_batch({"items": "not a list"}, job_id="g")
    assert refused.signatures == ("rejected",)


def test_rotation_outcomes_are_labelled(runner: JobRunner) -> None:
    first = runner.rotate_key(
        {"tenant_id": "acme", "purpose": "signing", "expected_version": 1},
        job_id="h",
    )
    assert first.rotation == ("signing", "ok")
    again = runner.rotate_key(
        {"tenant_id": "acme", "purpose": "signing", "expected_version": 1},
        job_id="i",
    )
    assert again.rotation == ("signing", "skipped")
    missing = runner.rotate_key({"tenant_id": "nokeys", "purpose": "encryption"}, job_id="j")
    assert missing.rotation == ("encryption", "failed")
    bogus = runner.rotate_key({"tenant_id": "acme", "purpose": "bogus"}, job_id="k")
    assert bogus.rotation is None  # no valid label value: not counted
    assert runner.create_keys({"tenant_id": "x1"}, job_id="l").signatures == ()


def test_record_metrics_counts_with_enqueue_latency() -> None:
    ok, retry = (
        value("tenantkeys_signatures_total", outcome="ok"),
        value("tenantkeys_signatures_total", outcome="retry"),
    )
    count = value("tenantkeys_sign_latency_seconds_count")
    total = value("tenantkeys_sign_latency_seconds_sum")
    rotated = value("tenantkeys_rotations_total", purpose="signing", outcome="skipped")

    Outcome(None, signatures=("ok", "ok")).record_metrics(100.0, now=102.5)
    Outcome(None, retry_in=1.0, signatures=("retry",)).record_metrics(100.0, now=103.0)
    Outcome(None, signatures=("ok",)).record_metrics(None)  # no stamp: counted, no latency
    Outcome(None, rotation=("signing", "skipped")).record_metrics(None)

    assert value("tenantkeys_signatures_total", outcome="ok") == ok + 3
    assert value("tenantkeys_signatures_total", outcome="retry") == retry + 1
    assert value("tenantkeys_sign_latency_seconds_count") == count + 2
    assert value("tenantkeys_sign_latency_seconds_sum") == pytest.approx(total + 5.0)
    assert value("tenantkeys_rotations_total", purpose="signing", outcome="skipped") == (
        rotated + 1
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({jobs.ENQUEUED_AT_HEADER: 1_700_000_000.25}, 1_700_000_000.25),
        ({jobs.ENQUEUED_AT_HEADER: "1700000000.5"}, 1_700_000_000.5),
        ({jobs.ENQUEUED_AT_HEADER: True}, None),
        ({jobs.ENQUEUED_AT_HEADER: "nan"}, None),
        ({jobs.ENQUEUED_AT_HEADER: "soon"}, None),
        ({jobs.ENQUEUED_AT_HEADER: [1]}, None),
        ({}, None),
        (None, None),
    ],
)
def test_enqueued_at_header(headers: dict[str, object] | None, expected: float | None) -> None:
    assert jobs.enqueued_at(headers) == expected


# -- primed series -------------------------------------------------------------------------


def test_prime_exports_every_label_set_at_zero() -> None:
    telemetry.prime("gcp")
    text = telemetry.render_metrics(None).decode()
    for outcome in ("ok", "rejected", "retry", "failed"):
        assert f'tenantkeys_signatures_total{{outcome="{outcome}"}}' in text
    for purpose in ("signing", "encryption"):
        for outcome in ("ok", "skipped", "failed"):
            assert f'tenantkeys_rotations_total{{outcome="{outcome}",purpose="{purpose}"}}' in text
    assert (
        'tenantkeys_kms_requests_total{operation="decrypt",outcome="transient",provider="gcp"}'
        in text
    )
    assert 'tenantkeys_cache_lookups_total{layer="l2",result="miss"}' in text
    with pytest.raises(ValueError, match="provider"):
        telemetry.prime("oracle")


# -- per-job spans -------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("tenantkeys-test", exporters=[]).add_span_processor(
        SimpleSpanProcessor(exporter)
    )
    yield exporter
    exporter.clear()


def test_job_span_continues_the_message_trace_and_links_the_batch(
    spans: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("tests")
    headers: dict[str, object] = {"enqueued_at": 1.0, "retries": 0}
    with tracer.start_as_current_span("apply_async/tenantkeys.sign") as publish:
        carrier: dict[str, str] = {}
        inject(carrier)
    headers.update(carrier)
    with tracer.start_as_current_span("run/tenantkeys.sign") as batch:
        with tracing.job_span(jobs.SIGN, "job-1", headers), tracing.cache_span("l2"):
            pass
        with tracing.job_span(jobs.SIGN, "job-2", {"retries": 0}):  # no trace context
            pass
    by_id = {
        span.attributes["messaging.message.id"]: span
        for span in spans.get_finished_spans()
        if span.attributes and "messaging.message.id" in span.attributes
    }
    job, orphan = by_id["job-1"], by_id["job-2"]
    assert job.context is not None and job.parent is not None
    assert job.context.trace_id == publish.get_span_context().trace_id
    assert job.parent.span_id == publish.get_span_context().span_id
    assert [link.context.span_id for link in job.links] == [batch.get_span_context().span_id]
    assert job.kind is trace.SpanKind.CONSUMER
    cache = next(s for s in spans.get_finished_spans() if s.name == "cache.l2.lookup")
    assert cache.parent is not None and cache.parent.span_id == job.context.span_id
    assert orphan.parent is not None
    assert orphan.parent.span_id == batch.get_span_context().span_id
    assert not orphan.links


def test_ensure_tracing_keeps_an_installed_provider(spans: InMemorySpanExporter) -> None:
    installed = trace.get_tracer_provider()
    tracing.ensure_tracing("tenantkeys-client")
    assert trace.get_tracer_provider() is installed


# -- lazy state probe ----------------------------------------------------------------------


def test_lazy_state_probe_opens_nothing_until_the_first_scrape(tmp_path: Path) -> None:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'keys.db'}",
        local_master_key_file=tmp_path / "master.key",
        dead_letter_key_file=tmp_path / "deadletter.key",
        redis_url="redis://127.0.0.1:1/0",  # nothing answers: those parts are unknown
        embedded_redis=False,
    )
    KeyStore.from_url(settings.database_url).migrate()
    probe = LazyStateProbe(settings)
    assert probe._sources is None
    try:
        state = probe()
        assert probe._sources is not None
        assert state.keys_overdue_rotation == 0  # the key store still answers
        assert state.dead_letter_depth is None and not state.queue_depths
    finally:
        probe.close()
    assert probe._sources is None


# -- settings and the metrics directory ---------------------------------------------------


def test_worker_and_flower_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    monkeypatch.delenv("TENANTKEYS_FLOWER_BASIC_AUTH", raising=False)
    monkeypatch.delenv("TENANTKEYS_WORKER_METRICS_PORT", raising=False)
    settings = load_settings()
    assert settings.worker_metrics_port == 9808 and settings.flower_basic_auth is None
    assert load_settings(worker_metrics_port=0).worker_metrics_port == 0
    auth = load_settings(flower_basic_auth="ops:pw,second:pw2").flower_basic_auth
    assert auth is not None and auth.get_secret_value() == "ops:pw,second:pw2"
    assert "pw" not in str(load_settings(flower_basic_auth="ops:pw").masked())
    for bad in ("nopassword", "ops:", ":pw", "ops:pw,"):
        with pytest.raises(ConfigurationError, match="user:password"):
            load_settings(flower_basic_auth=bad)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "flower:own")  # Flower's own variable works too
    found = load_settings().flower_basic_auth
    assert found is not None and found.get_secret_value() == "flower:own"
    with pytest.raises(ConfigurationError):
        load_settings(worker_metrics_port=70_000)


def test_environment_with_adds_to_this_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TK_TEST_MARKER", "kept")
    env = environment_with(PROMETHEUS_MULTIPROC_DIR="/tmp/x")
    assert env["TK_TEST_MARKER"] == "kept" and env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/x"
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") != "/tmp/x"  # a copy, not os.environ


def test_stale_worker_metrics_directories_are_removed(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = tmp_path / f"worker-host-{int(finished.stdout)}"
    alive = tmp_path / f"worker-host-{os.getpid()}"
    other_host = tmp_path / f"worker-elsewhere-{int(finished.stdout)}"
    for directory in (dead, alive, other_host):
        directory.mkdir()
    _remove_stale_metrics(tmp_path, "host")
    assert not dead.exists() and alive.exists() and other_host.exists()
