"""Fleet-wide status: two worker processes (two "hosts", each its own Prometheus multiprocess
directory) count cache lookups and KMS calls into Redis; ``tenantkeys admin status`` in a third
process and ``GET /api/admin/kms/status`` report their sum, which must equal what the two
hosts' own Prometheus counters say, and must include a worker that has since exited."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from tenantkeys.api import create_app
from tenantkeys.telemetry import fleet
from tests.conftest import REDIS_HOST, REDIS_PORT, port_open, service_missing
from tests.e2e.harness import Deployment
from tests.integration.test_api_support import ADMIN_TOKEN, READER, READER_TOKEN, sha256_hex

pytestmark = pytest.mark.integration

TENANTS = [f"fleet{n}" for n in range(4)]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing("Redis")
    made = Deployment(
        tmp_path,
        admin_token_sha256=sha256_hex(ADMIN_TOKEN),
        reader_token_sha256=sha256_hex(READER_TOKEN),
    )
    yield made
    made.stop()


def host_counters(directory: Path) -> dict[str, dict[tuple[tuple[str, str], ...], int]]:
    """One host's Prometheus counters (its multiprocess directory), by metric and labels."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    found: dict[str, dict[tuple[tuple[str, str], ...], int]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in ("tenantkeys_cache_lookups_total", "tenantkeys_kms_requests_total"):
                labels = tuple(sorted(sample.labels.items()))
                found.setdefault(sample.name, {})[labels] = int(sample.value)
    return found


def expected_fleet(hosts: list[Path]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """(cache ``layer -> {hits, misses}``, KMS calls ``outcome -> n``) summed over the hosts."""
    cache = {layer: {"hits": 0, "misses": 0} for layer in ("l1", "l2")}
    kms: dict[str, int] = {}
    for host in hosts:
        counters = host_counters(host)
        for labels, value in counters.get("tenantkeys_cache_lookups_total", {}).items():
            found = dict(labels)
            cache[found["layer"]]["hits" if found["result"] == "hit" else "misses"] += value
        for labels, value in counters.get("tenantkeys_kms_requests_total", {}).items():
            if value:
                outcome = dict(labels)["outcome"]
                kms[outcome] = kms.get(outcome, 0) + value
    return cache, kms


def lookups(host: Path) -> int:
    return sum(host_counters(host).get("tenantkeys_cache_lookups_total", {}).values())


def test_admin_status_reports_the_sum_of_every_worker(deployment: Deployment) -> None:
    hosts = [deployment.tmp / "host-a", deployment.tmp / "host-b"]
    for host in hosts:
        host.mkdir()
    settings = deployment.settings
    client = redis.Redis.from_url(settings.redis_url)
    before = fleet.read(client, settings.redis_prefix)
    assert before.cache == {} and before.kms == {}  # a fresh prefix: nothing counted yet

    def worker(name: str, host: Path) -> subprocess.Popen[bytes]:
        return deployment.worker(
            name, concurrency=1, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(host)}
        )

    first = worker("w1", hosts[0])
    with deployment.client() as producer:
        for tenant in TENANTS:
            producer.create_keys(tenant, ["signing"], timeout=60)
        for _ in range(2):  # an L1 miss (a KMS unwrap), then a hit
            producer.sign_many(TENANTS[0], [b"a", b"b"])
            for tenant in TENANTS:
                producer.sign(tenant, b"first host", timeout=60)
        # The second host takes over; the first exits, its counts must stay in the fleet's.
        worker("w2", hosts[1])
        deployment.kill(first, signal.SIGTERM)
        for tenant in TENANTS:
            producer.sign(tenant, b"second host", timeout=60)
        producer.sign_many(TENANTS[1], [b"c"])
    assert lookups(hosts[0]) > 0 and lookups(hosts[1]) > 0, "both workers must have counted"

    cache, kms = expected_fleet(hosts)
    assert cache["l1"]["misses"] >= len(TENANTS) * 2  # each host unwrapped every tenant once
    assert kms.get("ok", 0) >= len(TENANTS) * 3  # wraps at creation, unwraps on both hosts

    # A third process: the CLI, with the deployment's settings and no worker state of its own.
    shown = subprocess.run(
        [sys.executable, "-m", "tenantkeys", "admin", "status"],
        env=deployment.env(),
        cwd=deployment.tmp,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    status = json.loads(shown.stdout)
    assert status["errors"] == {}
    check_fleet(status, cache, kms)
    assert status["kms"]["calls_total_this_process"] == 0  # the CLI itself called no KMS

    with TestClient(create_app(settings)) as api:
        answer = api.get("/api/admin/kms/status", headers=READER)
    assert answer.status_code == 200, answer.text
    check_fleet(answer.json(), cache, kms)
    client.close()


def check_fleet(status: dict[str, Any], cache: dict[str, Any], kms: dict[str, int]) -> None:
    for layer in ("l1", "l2"):
        shown = status["cache"]["fleet"][layer]
        assert {k: shown[k] for k in ("hits", "misses")} == cache[layer], layer
        total = cache[layer]["hits"] + cache[layer]["misses"]
        assert shown["hit_rate"] == pytest.approx(cache[layer]["hits"] / total, abs=1e-4)
    assert status["cache"]["fleet"]["since"] is not None
    calls = status["kms"]["fleet"]
    assert calls["by_provider"] == {"local": kms}
    assert calls["requests_by_outcome"] == kms
    assert calls["requests_total"] == sum(kms.values())
    assert calls["estimated_cost_usd"] == 0.0  # the local provider costs nothing per call


def test_a_flush_that_fails_keeps_its_counts(redis_url: str, redis_prefix: str) -> None:
    """Redis not answering: the tally stays in the process and arrives with the next flush."""
    fleet.discard()
    for _ in range(3):
        fleet.count(fleet.CACHE, "l1:hit")
    fleet.count(fleet.KMS, "local:decrypt:ok")
    gone = redis.Redis(host=REDIS_HOST, port=1, socket_connect_timeout=0.2)
    assert fleet.flush(gone, redis_prefix) is False
    assert fleet.pending() == {(fleet.CACHE, "l1:hit"): 3, (fleet.KMS, "local:decrypt:ok"): 1}
    client = redis.Redis.from_url(redis_url)
    try:
        assert fleet.flush(client, redis_prefix) is True
        assert fleet.pending() == {}
        totals = fleet.read(client, redis_prefix)
    finally:
        client.close()
    assert totals.cache == {("l1", "hit"): 3}
    assert totals.kms == {"local": {"decrypt": {"ok": 1}}}
    assert totals.hit_rate("l1") == {"hits": 3, "misses": 0, "hit_rate": 1.0}


def _results_app(redis_url: str, prefix: str) -> Any:
    from celery import Celery

    app = Celery("fleet-results", set_as_current=False)
    app.conf.update(
        result_backend=redis_url,
        result_backend_transport_options={"global_keyprefix": f"{prefix}:"},
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=60,
    )
    return app


def _finished(job_id: str, ignore_result: bool = False) -> Any:
    from celery_batches import SimpleRequest

    from tenantkeys import jobs
    from tenantkeys.jobs.runner import Outcome
    from workers.outcomes import Finished

    request = SimpleRequest(job_id, "tenantkeys.sign", (), {}, {}, "w1", False, None, None, {})
    request.ignore_result = ignore_result
    return Finished(request, Outcome(jobs.ok({"n": 1})), {})


@pytest.mark.parametrize("ignored", [False, True], ids=["results stored", "results ignored"])
def test_a_batch_counts_travel_ahead_of_its_results(
    redis_url: str, redis_prefix: str, ignored: bool
) -> None:
    """Counts and results in one round trip (counts alone when no result is stored): whoever
    reads a result finds its lookups counted, and counts sent are never sent again."""
    from workers.fastpath import results
    from workers.outcomes import write_results

    app = _results_app(redis_url, redis_prefix)
    client = redis.Redis.from_url(redis_url)
    sent: list[list[bytes]] = []
    real_pipeline = app.backend.client.pipeline

    def watched(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        def execute(*a: Any, **k: Any) -> Any:
            sent.append([str(c[0][0]).encode() for c in pipe.command_stack])
            return real_execute(*a, **k)

        pipe.execute = execute
        return pipe

    app.backend.client.pipeline = watched  # type: ignore[method-assign]
    try:
        fleet.discard()
        fleet.count(fleet.CACHE, "l1:hit")
        fleet.count(fleet.CACHE, "l1:hit")
        write_results(
            app,
            [_finished("job-a", ignored), _finished("job-b", ignored)],
            [],
            fleet_client=client,
            fleet_prefix=redis_prefix,
        )
        assert fleet.pending() == {}
        assert fleet.read(client, redis_prefix).cache == {("l1", "hit"): 2}
        first = sent[0]
        assert first[0] == b"HINCRBY" and b"SETNX" in first  # the counts came first
        if ignored:
            assert first[-1] == b"SETNX"  # alone: there is no result round trip
            assert app.backend.get_task_meta("job-a")["status"] == "PENDING"
        else:
            assert first[-1] == b"MGET"  # ... in the results' own first round trip
            assert app.backend.get_task_meta("job-a")["status"] == "SUCCESS"

        # A store that fails after the counts were sent keeps nothing to send again.
        prelude = results.Prelude(lambda pipe: fleet.queue(pipe, redis_prefix, {}))
        prelude.sent = True
        results.store(app.backend, [], prelude)
        assert fleet.read(client, redis_prefix).cache == {("l1", "hit"): 2}
    finally:
        client.close()


def test_counts_of_a_batch_whose_results_failed_are_kept(redis_prefix: str) -> None:
    from workers.outcomes import write_results

    down = "redis://127.0.0.1:1/0"
    app = _results_app(down, redis_prefix)
    app.conf.result_backend_transport_options["retry_policy"] = {"max_retries": 0}
    fleet.discard()
    fleet.count(fleet.KMS, "local:decrypt:ok")
    gone = redis.Redis(host=REDIS_HOST, port=1, socket_connect_timeout=0.2)
    app.backend.__dict__["client"] = gone
    with pytest.raises(redis.ConnectionError):
        write_results(app, [_finished("job-c")], [], fleet_client=gone, fleet_prefix=redis_prefix)
    assert fleet.pending() == {(fleet.KMS, "local:decrypt:ok"): 1}  # kept for the next flush
    fleet.discard()
