"""End-to-end scenarios through real Celery workers: 3, 4, 10 and the worker side of 11.

Every job is timed from just before it is published to when its result is stored (seen on the
backend's publication). The producer is one thread of this process, on the same 2 cores as the
workers and Redis, as an upstream service on the same host would be.
"""

from __future__ import annotations

import dataclasses
import socket
import statistics
import time
import uuid
from typing import Any

from bench.celery_stack import RABBITMQ_URL, Collector, Workers, rabbitmq_vhost, workers
from bench.env import BenchEnv
from bench.harness import PAYLOAD, Mode, ScenarioResult, percentiles, thin
from bench.library import scenario_11_library
from bench.plain_worker import TASK as PLAIN_TASK
from tenantkeys import jobs

TENANTS = 10
ENCODED = jobs.encode_payload(PAYLOAD)
#: Longest wait for one burst's results; a worker that stops answering fails the scenario.
RESULT_TIMEOUT = 600.0


def _need_redis(env: BenchEnv, result: ScenarioResult) -> bool:
    if not env.redis_ok:
        result.status, result.reason = "skipped", f"Redis does not answer at {env.redis_url}"
    return env.redis_ok


def _send(w: Workers, tenant: str, plain_queue: str | None) -> str:
    if plain_queue is None:
        return str(w.client.submit(tenant, PAYLOAD).job_id)
    job_id = str(uuid.uuid4())
    w.client.app.send_task(
        PLAIN_TASK,
        kwargs={"tenant_id": tenant, "payload": ENCODED},
        task_id=job_id,
        queue=plain_queue,
    )
    return job_id


def _ready(w: Workers, tenants: list[str], plain_queue: str | None = None) -> None:
    """Wait for the worker (first job), then warm the L1 of every pool process."""

    def wait(job_id: str, timeout: float) -> None:
        if plain_queue is None:
            w.client.wait(job_id, timeout)
        else:  # plain results are not envelopes
            w.client.app.AsyncResult(job_id).get(timeout=timeout)

    wait(_send(w, tenants[0], plain_queue), 120)
    for job in [_send(w, t, plain_queue) for t in tenants * 8]:
        wait(job, 60)


def single_burst(
    w: Workers, collector: Collector, tenants: list[str], count: int, plain_queue: str | None = None
) -> dict[str, Any]:
    """Publish ``count`` single-payload jobs as fast as one thread can; time until all are done."""
    return _burst(w, collector, tenants, count, plain_queue, chunk=1)


#: Jobs per ``submit_many`` call in the pipelined bursts: what an upstream service holding a
#: queue of evidence records would hand over at once (one Redis round trip for all of them).
PIPELINE_CHUNK = 100


def pipelined_burst(
    w: Workers, collector: Collector, tenants: list[str], count: int, plain_queue: str | None = None
) -> dict[str, Any]:
    """Like :func:`single_burst`, but each single-payload job is published in a pipeline of
    ``PIPELINE_CHUNK`` (``SigningClient.submit_many``): one job, one payload, one result each."""
    return _burst(w, collector, tenants, count, plain_queue, chunk=PIPELINE_CHUNK)


def _burst(
    w: Workers,
    collector: Collector,
    tenants: list[str],
    count: int,
    plain_queue: str | None,
    chunk: int,
) -> dict[str, Any]:
    ids: list[str] = []
    started = time.perf_counter()
    for first in range(0, count, chunk):
        pairs = [
            (tenants[i % len(tenants)], PAYLOAD) for i in range(first, min(count, first + chunk))
        ]
        sent_at = time.perf_counter()
        if chunk == 1:
            sent = [_send(w, pairs[0][0], plain_queue)]
        else:
            sent = _send_many(w, pairs, plain_queue)
        for job_id in sent:
            collector.track(job_id, sent_at)
            ids.append(job_id)
    published = time.perf_counter()
    if not collector.wait(ids, RESULT_TIMEOUT):
        raise TimeoutError(f"results of {count} jobs did not all arrive")
    elapsed = collector.last_done(ids) - started
    return {
        "jobs": count,
        "jobs_per_s": round(count / elapsed, 1),
        "producer_publish_per_s": round(count / (published - started), 1),
        "failed": collector.failed,
        **percentiles(collector.latencies_ms(ids)),
    }


def _send_many(w: Workers, pairs: list[tuple[str, bytes]], plain_queue: str | None) -> list[str]:
    if plain_queue is None:
        return [p.job_id for p in w.client.submit_many(pairs)]
    # The baseline gets the same pipelined publish: kombu's producer batch around send_task.
    ids = [str(uuid.uuid4()) for _ in pairs]
    app = w.client.app
    with app.producer_or_acquire() as producer, producer.batch(max_size=len(pairs)):
        for (tenant, payload), job_id in zip(pairs, ids, strict=True):
            app.send_task(
                PLAIN_TASK,
                kwargs={"tenant_id": tenant, "payload": jobs.encode_payload(payload)},
                task_id=job_id,
                queue=plain_queue,
                producer=producer,
            )
    return ids


def drain(w: Workers, collector: Collector, tenants: list[str], count: int) -> dict[str, Any]:
    """The worker's own single-job rate: queue ``count`` jobs while it does not consume, then
    time it through them. Unlike :func:`single_burst`, the producer does not bound it."""
    control = w.client.app.control
    control.cancel_consumer(jobs.SIGN_QUEUE, reply=True, limit=1, timeout=10)
    try:
        ids = [_send(w, tenants[i % len(tenants)], None) for i in range(count)]
    finally:
        started = time.perf_counter()
        control.add_consumer(jobs.SIGN_QUEUE, reply=True, limit=1, timeout=10)
    for job_id in ids:
        collector.track(job_id, started)
    if not collector.wait(ids, RESULT_TIMEOUT):
        raise TimeoutError(f"results of {count} queued jobs did not all arrive")
    return {"jobs": count, "jobs_per_s": round(count / (collector.last_done(ids) - started), 1)}


def batch_sweep(
    w: Workers, collector: Collector, tenants: list[str], mode: Mode, *, compact: bool = False
) -> list[dict[str, Any]]:
    """``sign_batch`` jobs of each size: signatures per second, end to end.

    ``compact``: the compact form in msgpack (``SigningClient.submit_batch``: raw payloads, one
    array of JWS back); otherwise the JSON ``items`` form, one base64 payload per item.
    """
    rows = []
    for size in mode.batch_sweep:
        count = max(2, min(mode.sweep_max_jobs, mode.sweep_signatures // size))
        ids: list[str] = []
        failed_before = collector.failed
        started = time.perf_counter()
        for i in range(count):
            tenant = tenants[i % len(tenants)]
            sent_at = time.perf_counter()
            if compact:
                job_id = w.client.submit_batch(tenant, [PAYLOAD] * size).job_id
            else:
                items = [{"tenant_id": tenant, "payload": ENCODED}] * size
                job_id = w.client.send(jobs.SIGN_BATCH, {"items": items})
            collector.track(job_id, sent_at)
            ids.append(job_id)
        if not collector.wait(ids, RESULT_TIMEOUT):
            raise TimeoutError(f"results of {count} batch jobs did not all arrive")
        elapsed = collector.last_done(ids) - started
        latency = percentiles(collector.latencies_ms(ids))
        rows.append(
            {
                "batch_size": size,
                "jobs": count,
                "signatures_per_s": round(count * size / elapsed, 1),
                "job_p50_ms": latency["p50_ms"],
                "job_p99_ms": latency["p99_ms"],
                "failed": collector.failed - failed_before,
            }
        )
    return rows


def _broker_run(env: BenchEnv, mode: Mode, tenants: list[str], url: str | None) -> dict[str, Any]:
    with workers(env, broker_url=url) as w:
        _ready(w, tenants)
        collector = Collector(w)
        try:
            single = single_burst(w, collector, tenants, mode.single_jobs)
            pipelined = pipelined_burst(w, collector, tenants, mode.single_jobs)
            single["pipelined_jobs_per_s"] = pipelined["jobs_per_s"]
            single["pipelined_publish_per_s"] = pipelined["producer_publish_per_s"]
            single["pipelined_p50_ms"] = pipelined.get("p50_ms")
            single["pipelined_p99_ms"] = pipelined.get("p99_ms")
            single["drain_jobs_per_s"] = drain(w, collector, tenants, mode.single_jobs)[
                "jobs_per_s"
            ]
            sweep = batch_sweep(w, collector, tenants, mode)
            compact = batch_sweep(w, collector, tenants, mode, compact=True)
        finally:
            collector.close()
    return {"single": single, "sweep": sweep, "sweep_compact": compact}


def _rabbitmq_up() -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", 5672)) == 0


def scenario_3(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """Single-payload jobs and a batch-size sweep, on Redis and then on RabbitMQ."""
    result = ScenarioResult("3", "End to end through Celery: single jobs and batch sweep")
    if not _need_redis(env, result):
        return result
    tenants = env.tenants(TENANTS)
    redis_run = _broker_run(env, mode, tenants, None)
    result.metrics["redis"] = redis_run["single"]
    result.series["sweep_redis"] = redis_run["sweep"]
    result.series["sweep_redis_compact"] = redis_run["sweep_compact"]
    if _rabbitmq_up():
        try:
            with rabbitmq_vhost() as vhost:
                rabbit = _broker_run(env, mode, tenants, RABBITMQ_URL.format(vhost=vhost))
            result.metrics["rabbitmq"] = rabbit["single"]
            result.series["sweep_rabbitmq"] = rabbit["sweep"]
            result.series["sweep_rabbitmq_compact"] = rabbit["sweep_compact"]
        except Exception as exc:  # RabbitMQ is optional; Redis numbers stand alone
            result.notes.append(f"RabbitMQ part failed: {type(exc).__name__}: {exc}"[:300])
    else:
        result.notes.append("RabbitMQ does not answer on 127.0.0.1:5672; its part was skipped")
    single_rate = redis_run["single"]["jobs_per_s"]
    best_items = max(redis_run["sweep"], key=lambda row: row["signatures_per_s"])
    best_compact = max(redis_run["sweep_compact"], key=lambda row: row["signatures_per_s"])
    best = max(best_items, best_compact, key=lambda row: row["signatures_per_s"])
    result.metrics.update(
        single_jobs_per_s=single_rate,
        # The same single-payload jobs, published 100 at a time by SigningClient.submit_many.
        single_jobs_pipelined_per_s=redis_run["single"]["pipelined_jobs_per_s"],
        # Queued first, then consumed: the worker's rate without the producer in the way.
        worker_single_jobs_per_s=redis_run["single"]["drain_jobs_per_s"],
        batched_best_per_s=best["signatures_per_s"],
        batched_best_size=best["batch_size"],
        batched_best_form="compact" if best is best_compact else "items",
        # The JSON items form alone (what a producer that has not moved to msgpack gets).
        batched_items_best_per_s=best_items["signatures_per_s"],
        p50_ms=redis_run["single"].get("p50_ms"),
        p99_ms=redis_run["single"].get("p99_ms"),
    )
    # Scenario 10 paces one job at a time, so its maximum is the one-at-a-time rate.
    env.shared["max_single_job_rate"] = single_rate
    result.headline = best["signatures_per_s"]
    result.notes.append(
        "headline = best batched rate on Redis (either sign_batch form); single jobs in metrics"
    )
    return result


def scenario_4(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """Plain Celery: one ordinary task per payload (same KeyService, no aggregation)."""
    result = ScenarioResult(
        "4", "Plain Celery baseline: one ordinary task per payload", unit="jobs/s"
    )
    if not _need_redis(env, result):
        return result
    tenants = env.tenants(TENANTS)
    queue = f"{env.prefix}.plain"
    with workers(env, plain_queue=queue) as w:
        _ready(w, tenants, queue)
        collector = Collector(w)
        try:
            burst = single_burst(w, collector, tenants, mode.plain_jobs, queue)
            pipelined = pipelined_burst(w, collector, tenants, mode.plain_jobs, queue)
        finally:
            collector.close()
    result.metrics = {
        **burst,
        "one_at_a_time_jobs_per_s": burst["jobs_per_s"],
        "pipelined_jobs_per_s": pipelined["jobs_per_s"],
        "pipelined_publish_per_s": pipelined["producer_publish_per_s"],
    }
    # The baseline's best showing is the reference the ratios are taken against.
    result.headline = max(burst["jobs_per_s"], pipelined["jobs_per_s"])
    result.notes.append("headline = the better of one-at-a-time and pipelined publishing")
    return result


def _paced(
    w: Workers, collector: Collector, tenants: list[str], rate: float, seconds: float
) -> list[float]:
    """Open loop: publish at ``rate`` jobs/s for ``seconds``; enqueue-to-result latencies."""
    ids: list[str] = []
    started = time.perf_counter()
    count = max(10, int(rate * seconds))
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent_at = time.perf_counter()
        job_id = w.client.submit(tenants[i % len(tenants)], PAYLOAD).job_id
        collector.track(job_id, sent_at)
        ids.append(job_id)
    if not collector.wait(ids, RESULT_TIMEOUT):
        raise TimeoutError("paced results did not all arrive")
    return collector.latencies_ms(ids)


def _latency_run(
    env: BenchEnv, mode: Mode, tenants: list[str], maximum: float | None
) -> dict[str, Any]:
    """One run of scenario 10 on a fresh worker: the three load levels, and what it saw."""
    with workers(env) as w:
        _ready(w, tenants)
        collector = Collector(w)
        try:
            if not maximum:
                maximum = single_burst(w, collector, tenants, mode.single_jobs)["jobs_per_s"]
            levels = []
            for fraction in (0.25, 0.5, 0.75):
                latencies = _paced(w, collector, tenants, maximum * fraction, mode.latency_seconds)
                levels.append(
                    {
                        "fraction": fraction,
                        "rate_per_s": round(maximum * fraction, 1),
                        **percentiles(latencies),
                        "over_50_ms": sum(1 for ms in latencies if ms > 50),
                        "samples_ms": thin(latencies, 1_000),
                    }
                )
        finally:
            collector.close()
    half = next(level for level in levels if level["fraction"] == 0.5)
    return {"max_single_job_rate": maximum, "levels": levels, **_summary(half)}


def _summary(level: dict[str, Any]) -> dict[str, Any]:
    return {k: level[k] for k in ("rate_per_s", "p50_ms", "p99_ms", "max_ms", "over_50_ms")}


def scenario_10(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """p50 / p99 enqueue-to-result at 25, 50 and 75 % of the maximum single-job rate.

    ``mode.latency_runs`` independent runs, each on a fresh worker: the tail of one run moves
    with what the two cores do meanwhile, so one run proves little. The headline is the median
    of the runs' p99 at 50 %, with the spread beside it.
    """
    result = ScenarioResult("10", "Latency enqueue-to-result at 25/50/75% of max rate", unit="ms")
    if not _need_redis(env, result):
        return result
    tenants = env.tenants(TENANTS)
    maximum = env.shared.get("max_single_job_rate")
    if not maximum:
        result.notes.append("maximum measured in each run (scenario 3 did not run)")
    runs = [_latency_run(env, mode, tenants, maximum) for _ in range(mode.latency_runs)]
    by_p99 = sorted(runs, key=lambda run: run["p99_ms"])
    median_run = by_p99[(len(by_p99) - 1) // 2]
    # The levels drawn and shown are the median run's; every run's summary is kept.
    result.series["levels"] = median_run["levels"]
    result.series["runs"] = [
        {"run": i + 1, "max_single_job_rate": run["max_single_job_rate"], **_summary(run)}
        for i, run in enumerate(runs)
    ]
    p99s = [run["p99_ms"] for run in runs]
    result.metrics = {
        "max_single_job_rate": median_run["max_single_job_rate"],
        "runs": len(runs),
        "p50_ms": statistics.median(run["p50_ms"] for run in runs),
        "p99_ms": statistics.median(p99s),
        "p99_min_ms": min(p99s),
        "p99_max_ms": max(p99s),
    }
    result.headline = result.metrics["p99_ms"]
    result.notes.append(
        f"headline = median over {len(runs)} runs of p99 at 50% of the maximum rate "
        f"(runs: {', '.join(f'{v:.1f}' for v in p99s)} ms)"
    )
    return result


def scenario_11(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """RSS: a library process, then a worker pool process, each with ``rss_tenants`` in L1."""
    result = scenario_11_library(env, mode)
    if result.status != "ok" or not env.redis_ok:
        return result
    tenants = env.tenants(mode.rss_tenants)
    single = dataclasses.replace(env.mode, worker_concurrency=1)
    saved, env.mode = env.mode, single  # one pool process: it sees every tenant
    try:
        with workers(env) as w:
            _ready(w, tenants[:1])
            before = max(w.pool_rss_mb() or [0.0])
            for start in range(0, len(tenants), jobs.MAX_BATCH_ITEMS):
                chunk = tenants[start : start + jobs.MAX_BATCH_ITEMS]
                job = w.client.send(
                    jobs.SIGN_BATCH,
                    {"items": [{"tenant_id": t, "payload": ENCODED} for t in chunk]},
                )
                w.client.wait(job, timeout=RESULT_TIMEOUT)
            after = w.pool_rss_mb() or [0.0]
    finally:
        env.mode = saved
    result.metrics["worker"] = {
        "tenants": len(tenants),
        "rss_before_mb": before,
        "rss_max_child_mb": max(after),
        "growth_mb": round(max(after) - before, 1),
    }
    result.headline = max(after)
    result.notes.append(
        "headline = RSS of the worker's pool process (concurrency 1) after every tenant signed"
    )
    return result
