"""Scenario 13: what each stage costs, where the shared ceilings are, and 1 -> 2 pool processes.

The scale-out model of docs/performance.md is built from these numbers. For compact
``sign_batch`` jobs (1,000 payloads, msgpack) and for single ``sign`` jobs (``submit_many``),
on Redis and on RabbitMQ, it measures the CPU each stage spends per signature:

- producer: the thread of this process that builds and publishes the jobs;
- collector: the thread that reads each result (a client reading its answers);
- consumer: the worker's main process (fetch, decode headers, hand to the pool, acks);
- pool: the worker's pool processes (decode the body, sign, encode and store the result);
- Redis: the server's main thread (``INFO cpu``), which is the part that cannot use a second
  core; on RabbitMQ it is the result backend only;
- RabbitMQ: the ``beam.smp`` process (every queue, channel and connection process).

CPU is read from the kernel per process and per thread (psutil), and from Redis itself, so a
stage's share does not depend on how the two cores were shared. Then the same compact jobs run
on one pool process and on two, and the model's prediction for two (from the one-process
costs) is recorded beside the measured rate.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from bench.celery_scenarios import (
    RESULT_TIMEOUT,
    TENANTS,
    _need_redis,
    _rabbitmq_up,
    _ready,
)
from bench.celery_stack import RABBITMQ_URL, Collector, Workers, rabbitmq_vhost, workers
from bench.env import BenchEnv
from bench.harness import PAYLOAD, Mode, ScenarioResult

BATCH = 1_000


def _cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _thread_cpu(native_ids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of this process's threads, by the names given to their native ids."""
    by_id = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    return {name: float(by_id.get(tid, 0.0)) for name, tid in native_ids.items()}


def _rabbitmq_process() -> psutil.Process | None:
    for process in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.info["name"] == "beam.smp" and "rabbit" in " ".join(
                process.info["cmdline"] or []
            ):
                return process
    return None


class StageClock:
    """CPU seconds spent by each stage between :meth:`start` and :meth:`stop`."""

    def __init__(self, w: Workers, collector: Collector, env: BenchEnv, rabbit: bool) -> None:
        self.w = w
        self.redis = env.redis()
        self.threads = {
            "producer": threading.get_native_id(),
            "collector": collector.thread_id,
        }
        self.rabbit = _rabbitmq_process() if rabbit else None
        self._before: dict[str, float] = {}

    def _processes(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        mains = [psutil.Process(started.pid) for started in self.w.stack.children]
        pool = [child for main in mains for child in main.children(recursive=True)]
        return mains, pool

    def read(self) -> dict[str, float]:
        mains, pool = self._processes()
        info = self.redis.info("cpu")
        found = {
            **_thread_cpu(self.threads),
            "consumer": sum(_cpu_of(p) for p in mains),
            "pool": sum(_cpu_of(p) for p in pool),
            "redis_main_thread": float(
                info.get("used_cpu_user_main_thread", info["used_cpu_user"])
                + info.get("used_cpu_sys_main_thread", info["used_cpu_sys"])
            ),
        }
        if self.rabbit is not None:
            found["rabbitmq"] = _cpu_of(self.rabbit)
        return found

    @contextlib.contextmanager
    def measure(self, into: dict[str, float]) -> Iterator[None]:
        before = self.read()
        yield
        after = self.read()
        into.update({stage: after[stage] - before[stage] for stage in after})

    def close(self) -> None:
        self.redis.close()


def _compact_burst(w: Workers, collector: Collector, tenants: list[str], jobs: int) -> float:
    """``jobs`` compact 1,000-payload jobs as fast as they go; signatures per second."""
    ids = []
    started = time.perf_counter()
    for i in range(jobs):
        sent_at = time.perf_counter()
        job_id = w.client.submit_batch(tenants[i % len(tenants)], [PAYLOAD] * BATCH).job_id
        collector.track(job_id, sent_at)
        ids.append(job_id)
    if not collector.wait(ids, RESULT_TIMEOUT):
        raise TimeoutError(f"results of {jobs} compact jobs did not all arrive")
    return jobs * BATCH / (collector.last_done(ids) - started)


def _single_burst(w: Workers, collector: Collector, tenants: list[str], jobs: int) -> float:
    """``jobs`` single ``sign`` jobs, published 100 at a time; jobs per second."""
    ids = []
    started = time.perf_counter()
    for first in range(0, jobs, 100):
        pairs = [(tenants[i % len(tenants)], PAYLOAD) for i in range(first, min(jobs, first + 100))]
        sent_at = time.perf_counter()
        for pending in w.client.submit_many(pairs):
            collector.track(pending.job_id, sent_at)
            ids.append(pending.job_id)
    if not collector.wait(ids, RESULT_TIMEOUT):
        raise TimeoutError(f"results of {jobs} single jobs did not all arrive")
    return jobs / (collector.last_done(ids) - started)


def _per_unit(cpu: dict[str, float], units: int) -> dict[str, float]:
    """CPU microseconds per unit (signature or job), by stage, and their sum."""
    shares = {stage: round(seconds * 1e6 / units, 2) for stage, seconds in cpu.items()}
    shares["total"] = round(sum(shares.values()), 2)
    return shares


def _staged(
    w: Workers,
    collector: Collector,
    clock: StageClock,
    run: Callable[[], float],
    units: int,
) -> dict[str, Any]:
    cpu: dict[str, float] = {}
    with clock.measure(cpu):
        rate = run()
    return {"rate_per_s": round(rate, 1), "cpu_us": _per_unit(cpu, units)}


def _broker(
    env: BenchEnv, mode: Mode, tenants: list[str], url: str | None, concurrency: int
) -> dict[str, Any]:
    batches = max(5, mode.sweep_signatures // BATCH * 2)
    singles = mode.single_jobs
    with workers(env, broker_url=url, concurrency=concurrency) as w:
        _ready(w, tenants)
        collector = Collector(w)
        clock = StageClock(w, collector, env, rabbit=url is not None)
        try:
            _compact_burst(w, collector, tenants, 3)  # warm: keys in L1, connections open
            compact = _staged(
                w,
                collector,
                clock,
                lambda: _compact_burst(w, collector, tenants, batches),
                batches * BATCH,
            )
            single = _staged(
                w,
                collector,
                clock,
                lambda: _single_burst(w, collector, tenants, singles),
                singles,
            )
        finally:
            clock.close()
            collector.close()
    return {"pool_processes": concurrency, "compact_1000": compact, "single_jobs": single}


#: Stages that run on one thread each: none of them can use a second core, whatever the host.
SINGLE_THREADED = ("producer", "collector", "consumer", "redis_main_thread")


def predict(cpu_us: dict[str, float], pool_processes: int, cores: int) -> dict[str, float]:
    """Signatures/s the model allows on this machine: the tightest of the machine's CPU
    (``cores`` seconds per second over every stage's cost), the pool (one core per
    process) and each single-threaded stage (one core each)."""
    stages = {k: v for k, v in cpu_us.items() if k != "total" and v > 0}
    bounds = {
        "machine_cpu": cores * 1e6 / sum(stages.values()),
        "pool": pool_processes * 1e6 / stages["pool"],
    }
    for stage in SINGLE_THREADED:
        if stages.get(stage):
            bounds[stage] = 1e6 / stages[stage]
    return {name: round(value, 1) for name, value in bounds.items()}


def scenario_13(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """Per-stage CPU, broker ceilings, and one against two pool processes (compact jobs)."""
    result = ScenarioResult("13", "Scale-out model: per-stage CPU, ceilings, 1 -> 2 processes")
    if not _need_redis(env, result):
        return result
    tenants = env.tenants(TENANTS)
    cores = psutil.cpu_count() or 1
    one = _broker(env, mode, tenants, None, 1)
    two = _broker(env, mode, tenants, None, 2)
    result.metrics["redis"] = {"one_process": one, "two_processes": two}
    cost = one["compact_1000"]["cpu_us"]
    bounds = predict(cost, 2, cores)
    predicted = min(bounds.values())
    measured = two["compact_1000"]["rate_per_s"]
    result.metrics["redis_model"] = {
        "bounds_for_two_processes": bounds,
        "predicted_two_processes_per_s": predicted,
        "binding": min(bounds, key=lambda name: bounds[name]),
        "measured_two_processes_per_s": measured,
        "measured_over_predicted": round(measured / predicted, 2),
        "redis_ceiling_signatures_per_s": round(1e6 / cost["redis_main_thread"], 1)
        if cost.get("redis_main_thread")
        else None,
        "redis_ceiling_single_jobs_per_s": round(
            1e6 / two["single_jobs"]["cpu_us"]["redis_main_thread"], 1
        )
        if two["single_jobs"]["cpu_us"].get("redis_main_thread")
        else None,
    }
    if _rabbitmq_up():
        try:
            with rabbitmq_vhost() as vhost:
                rabbit = _broker(env, mode, tenants, RABBITMQ_URL.format(vhost=vhost), 2)
            result.metrics["rabbitmq"] = {"two_processes": rabbit}
        except Exception as exc:  # RabbitMQ is optional; the Redis model stands alone
            result.notes.append(f"RabbitMQ part failed: {type(exc).__name__}: {exc}"[:300])
    result.headline = measured
    result.notes.append(
        "headline = compact 1,000-payload jobs on Redis, two pool processes; model in metrics"
    )
    return result
