"""The worker side of observability, with real `tenantkeys worker` processes on Redis DB 7.

* its ``/metrics`` exports every metric an alert or the dashboard names, with the pool's
  events merged (``tenantkeys worker`` sets ``PROMETHEUS_MULTIPROC_DIR`` itself);
* a trace started in the producer continues in the worker's job span (batched and not);
* ``tenantkeys worker-ready`` answers with and without a worker, and with no broker;
* ``tenantkeys flower`` asks for basic auth, and refuses a public address without it.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tenantkeys.errors import InvalidRequest
from tenantkeys.keys.rotation import RotationSweep
from tenantkeys.telemetry import tracing
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, port_open, service_missing
from tests.e2e.harness import Deployment, wait_for
from tests.integration.test_api_metrics import sample_names, used_metrics

pytestmark = pytest.mark.e2e
KMS_DECRYPT_OK = {"provider": "local", "operation": "decrypt", "outcome": "ok"}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = Deployment(  # in a Redis database of its own
        tmp_path,
        worker_metrics_port=free_port(),
        embedded_redis=False,
    )
    yield made
    made.stop()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tenantkeys", *args]


def start_worker(
    deployment: Deployment, name: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`tenantkeys worker` (prefork, 2 processes), returned once it is ready."""
    process = deployment.spawn(
        name,
        cli("worker", "--hostname", f"{name}@%h", "--concurrency", "2", "--loglevel", "INFO"),
        extra_env,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker {name} exited: {deployment.log(name)[-3000:]}")
        return "ready." in deployment.log(name)

    wait_for(ready, 60, f"worker {name} to be ready", 0.2)
    return process


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    shown = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{shown}}}" if labels else name) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# -- metrics -------------------------------------------------------------------------------


def test_worker_exports_every_metric_alerts_and_dashboard_use(deployment: Deployment) -> None:
    worker = start_worker(deployment, "metrics")
    port = deployment.settings.worker_metrics_port
    with deployment.client() as client:
        client.create_keys("acme", timeout=60)
        pending = [client.submit("acme", f"payload {i}".encode()) for i in range(6)]
        for job in pending:
            job.result(timeout=60)
        batch = client.sign_many("acme", [b"one", b"two"], timeout=60)
        assert len(batch) == 2
        with pytest.raises(InvalidRequest):
            client.sign("not a tenant!", b"x", timeout=60)
        assert client.rotate_key("acme", "signing", expected_version=1)["rotated"]
        assert not client.rotate_key("acme", "signing", expected_version=1)["rotated"]
        client.sign("acme", b"after the rotation", timeout=60)  # fills L1 again
    runtime = deployment.runtime()
    try:  # what Beat would have done: a finished sweep, for the last-sweep gauge
        RotationSweep(runtime.service.store, runtime.redis, deployment.prefix).run(lambda _: None)
    finally:
        runtime.close()

    # Each job's metrics are recorded right after its result is stored: poll, bounded.
    def counted() -> str | None:
        body = scrape(port)
        return body if sample(body, "tenantkeys_signatures_total", outcome="ok") >= 9 else None

    text: str = wait_for(counted, 30, "the worker to count 9 signatures")
    exported = sample_names(text)
    missing = {name: sorted(src) for name, src in used_metrics().items() if name not in exported}
    assert not missing, f"used but not exported by the worker: {missing}"

    assert sample(text, "tenantkeys_signatures_total", outcome="rejected") == 1
    assert sample(text, "tenantkeys_sign_latency_seconds_count") == 10
    assert sample(text, "tenantkeys_rotations_total", outcome="ok", purpose="signing") == 1
    assert sample(text, "tenantkeys_rotations_total", outcome="skipped", purpose="signing") == 1
    assert sample(text, "tenantkeys_l1_cache_entries") >= 1
    assert sample(text, "tenantkeys_cache_lookups_total", layer="l1", result="hit") >= 1
    assert sample(text, "tenantkeys_kms_requests_total", **KMS_DECRYPT_OK) >= 1
    assert sample(text, "tenantkeys_queue_depth", queue="tenantkeys.sign") == 0
    assert sample(text, "tenantkeys_circuit_breaker_state", provider="local") == 0
    assert sample(text, "tenantkeys_dead_letter_depth") == 0
    assert sample(text, "tenantkeys_keys_overdue_rotation") == 0
    assert sample(text, "tenantkeys_rotation_last_sweep_timestamp_seconds") > 0
    assert 'tenantkeys_build_info{provider="local",version=' in text
    assert "acme" not in text  # no tenant id in any label

    # The pool's values come from a per-worker multiprocess directory it created itself.
    metrics_dirs = list((deployment.tmp / "metrics").glob(f"worker-*-{worker.pid}"))
    assert len(metrics_dirs) == 1 and list(metrics_dirs[0].glob("*.db"))


def test_a_taken_metrics_port_leaves_the_worker_running(deployment: Deployment) -> None:
    with socket.socket() as taken:  # on the address the exporter binds
        taken.bind(("0.0.0.0", deployment.settings.worker_metrics_port))
        taken.listen(1)
        start_worker(deployment, "noexporter")
        with deployment.client() as client:
            client.create_keys("acme", timeout=60)
            assert client.sign("acme", b"still signing", timeout=60).kid
    assert "worker metrics not served: port" in deployment.log("noexporter")


# -- tracing -------------------------------------------------------------------------------


@pytest.fixture
def producer_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = tracing.setup_tracing("tenantkeys-producer-test", exporters=[])
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()
    exporter.shutdown()


def console_spans(log: str) -> list[dict[str, Any]]:
    """Spans the worker's console exporter wrote into its log (as JSON objects)."""
    decoder = json.JSONDecoder()
    spans = []
    for start in (m.start() for m in re.finditer(r'\{\s*"name": ', log)):
        try:
            found, _ = decoder.raw_decode(log, start)
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict) and "context" in found:
            spans.append(found)
    return spans


def hex_id(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def publish_span(spans: tuple[ReadableSpan, ...], task: str) -> ReadableSpan:
    matching = [s for s in spans if s.name == f"apply_async/{task}"]
    assert len(matching) == 1, [s.name for s in spans]
    return matching[0]


def test_a_producer_trace_continues_in_the_worker_span(
    deployment: Deployment, producer_spans: InMemorySpanExporter
) -> None:
    start_worker(
        deployment,
        "traced",
        # The worker's spans go to its log (console exporter), exported every 50 ms; L1 off,
        # so every job makes cache and KMS spans.
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "TENANTKEYS_CACHE_TTL_SECONDS": "0",
        },
    )
    tracer = trace.get_tracer("tests")
    with deployment.client() as client:
        client.create_keys("acme", timeout=60)
        producer_spans.clear()
        with tracer.start_as_current_span("upstream request") as upstream:
            client.sign("acme", b"traced payload", timeout=60)  # batched on the worker
            client.sign_many("acme", [b"one", b"two"], timeout=60)  # a regular task
    finished = producer_spans.get_finished_spans()
    trace_id = upstream.get_span_context().trace_id
    for task in ("tenantkeys.sign", "tenantkeys.sign_batch"):
        published = publish_span(finished, task)
        assert published.context is not None and published.parent is not None
        assert published.context.trace_id == trace_id
        assert published.parent.span_id == upstream.get_span_context().span_id

        def worker_span(task: str = task, published: ReadableSpan = published) -> Any:
            assert published.context is not None
            parent = hex_id(published.context.span_id, 16)
            return next(
                (
                    span
                    for span in console_spans(deployment.log("traced"))
                    if span["name"] == f"run/{task}" and span["parent_id"] == parent
                ),
                None,
            )

        run = wait_for(worker_span, 30, f"the worker's run/{task} span")
        assert run["context"]["trace_id"] == hex_id(trace_id, 32)
        assert run["kind"] == "SpanKind.CONSUMER"

    # The worker's own spans (L2 lookup, KMS unwrap) nest under the batched job's span.
    sign_run = next(
        span
        for span in console_spans(deployment.log("traced"))
        if span["name"] == "run/tenantkeys.sign"
        and span["context"]["trace_id"] == hex_id(trace_id, 32)
    )
    children = [
        span["name"]
        for span in console_spans(deployment.log("traced"))
        if span["parent_id"] == sign_run["context"]["span_id"]
    ]
    assert {"cache.l2.lookup", "kms.decrypt"} <= set(children), children


# -- readiness probe -----------------------------------------------------------------------


def run_cli(deployment: Deployment, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the return code is what we test
        cli(*args),
        env=deployment.env(env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=deployment.tmp,
    )


def test_worker_ready_answers_with_and_without_a_worker(deployment: Deployment) -> None:
    node = f"probe{free_port()}@%h"
    absent = run_cli(deployment, "worker-ready", "--hostname", node, "--timeout", "1")
    assert absent.returncode == 1, absent.stderr
    assert "not ready" in absent.stderr

    worker = start_worker(deployment, node.partition("@")[0])
    ready = run_cli(deployment, "worker-ready", "--hostname", node, "--timeout", "5")
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.startswith(f"ready: {node.partition('@')[0]}@")

    # Another node name on the same broker is not this worker.
    other = run_cli(deployment, "worker-ready", "--hostname", "other@%h", "--timeout", "1")
    assert other.returncode == 1

    no_broker = run_cli(
        deployment,
        "worker-ready",
        "--hostname",
        node,
        "--timeout",
        "2",
        TENANTKEYS_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    assert no_broker.returncode == 2
    assert "TK-BROKER-UNAVAILABLE" in no_broker.stderr
    assert worker.poll() is None


# -- Flower --------------------------------------------------------------------------------


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_flower_asks_for_basic_auth(deployment: Deployment) -> None:
    port = free_port()
    credentials = "operator:s3cret-flower"
    flower = deployment.spawn(
        "flower",
        cli("flower", "--port", str(port)),
        {"TENANTKEYS_FLOWER_BASIC_AUTH": credentials},
    )
    url = f"http://127.0.0.1:{port}/workers"

    def answering() -> bool:
        if flower.poll() is not None:
            raise AssertionError(f"flower exited: {deployment.log('flower')[-3000:]}")
        return port_open("127.0.0.1", port)

    wait_for(answering, 60, "Flower to listen")
    token = base64.b64encode(credentials.encode()).decode()
    assert http_status(url) == 401
    wrong = base64.b64encode(b"operator:wrong").decode()
    assert http_status(url, {"Authorization": f"Basic {wrong}"}) == 401
    assert http_status(url, {"Authorization": f"Basic {token}"}) == 200
    # Passed to Flower in-process, never on a command line `ps` shows.
    assert b"s3cret-flower" not in Path(f"/proc/{flower.pid}/cmdline").read_bytes()


def test_flower_without_auth_refuses_a_public_address(deployment: Deployment) -> None:
    refused = run_cli(deployment, "flower", "--address", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "TENANTKEYS_FLOWER_BASIC_AUTH" in refused.stderr
    assert "TK-CONFIG" in refused.stderr
