"""Celery processes for the end-to-end scenarios, and a collector that times every result.

Workers are started with :class:`tenantkeys.cli.stack.LocalStack` (``tenantkeys worker``) and
stopped by their own PIDs. On Redis, every key (queues, results) lives under the run's prefix in
database 8; on RabbitMQ, the run creates a vhost of its own and deletes it afterwards.

The collector subscribes to the result backend's publications (Celery's Redis backend publishes
each result on its key), so a result is seen when it is stored, without polling per job.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.env import BenchEnv
from tenantkeys.cli.stack import LocalStack
from tenantkeys.client import SigningClient
from tenantkeys.config import Settings

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/{vhost}"
MB = 2**20


@dataclass
class Workers:
    """A running worker (service or plain) and a client on the same broker."""

    settings: Settings
    client: SigningClient
    stack: LocalStack
    broker: str

    def pool_rss_mb(self) -> list[float]:
        """RSS of each pool process (children of the worker we started)."""
        sizes: list[float] = []
        for started in self.stack.children:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(started.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        sizes.append(round(child.memory_info().rss / MB, 1))
        return sizes

    def alive(self) -> bool:
        return self.stack.failed() is None


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A private RabbitMQ vhost for the block (guest may use it), deleted afterwards."""
    vhost = f"tkbench-{uuid.uuid4().hex[:8]}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(
            [*ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield vhost
    finally:
        subprocess.run([*ctl, "delete_vhost", vhost], check=False, capture_output=True, timeout=60)


@contextlib.contextmanager
def workers(
    env: BenchEnv,
    *,
    broker_url: str | None = None,
    plain_queue: str | None = None,
    concurrency: int | None = None,
) -> Iterator[Workers]:
    """Start a worker (the service's, or the plain baseline when ``plain_queue`` is given)
    with ``concurrency`` pool processes (default: the mode's)."""
    processes = concurrency or env.mode.worker_concurrency
    overrides: dict[str, Any] = {"worker_concurrency": processes}
    if broker_url:
        overrides["broker_url"] = broker_url
    settings = env.settings(**overrides)
    name = "plain" if plain_queue else "service"
    stack = LocalStack(
        env.workdir / f"logs-{name}-{uuid.uuid4().hex[:4]}", env.child_env(**overrides)
    )
    hostname = f"tkbench-{uuid.uuid4().hex[:6]}@%h"
    pool = str(processes)
    if plain_queue:
        stack.env["TKBENCH_PLAIN_QUEUE"] = plain_queue
        argv = [sys.executable, "-m", "celery", "-A", "bench.plain_worker", "worker"]
        argv += ["-Q", plain_queue, "-c", pool, "-n", hostname, "--loglevel=WARNING"]
        stack.spawn("plain-worker", argv)
    else:
        stack.start(
            "worker",
            "worker",
            "--concurrency",
            pool,
            "--hostname",
            hostname,
            "--loglevel",
            "WARNING",
        )
    client = SigningClient.from_settings(settings)
    try:
        yield Workers(settings, client, stack, broker_url or settings.effective_broker_url)
    finally:
        client.close()
        stack.stop()


@dataclass
class Collector:
    """Records when each tracked job's result is published; thread-safe."""

    workers: Workers
    sent: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        backend = self.workers.client.app.backend
        probe = "x"
        self._prefix = backend.get_key_for_task(probe).decode()[: -len(probe)]
        self._pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
        self._thread = threading.Thread(target=self._run, name="tkbench-collector", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def thread_id(self) -> int:
        """The collector thread's native id (its CPU time is read per thread)."""
        return self._thread.native_id or 0

    def track(self, job_id: str, sent_at: float) -> None:
        with self._lock:
            self.sent[job_id] = sent_at

    def _run(self) -> None:
        self._pubsub.psubscribe(self._prefix + "*")
        self._ready.set()
        backend = self.workers.client.app.backend
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message is None:
                continue
            now = time.perf_counter()
            job_id = message["channel"].decode()[len(self._prefix) :]
            meta = backend.decode_result(message["data"])
            result = meta.get("result")
            ok = meta.get("status") == "SUCCESS" and (
                not isinstance(result, dict) or result.get("ok", True) is not False
            )
            with self._lock:
                if job_id not in self.done:
                    self.done[job_id] = now
                    self.failed += 0 if ok else 1

    def wait(self, ids: list[str], timeout: float) -> bool:
        """True when every job in ``ids`` has a result, False at the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(job in self.done for job in ids):
                    return True
            if not self.workers.alive():
                raise RuntimeError(f"a worker exited; see {self.workers.stack.log_dir}")
            time.sleep(0.01)
        return False

    def latencies_ms(self, ids: list[str]) -> list[float]:
        with self._lock:
            return [(self.done[j] - self.sent[j]) * 1000 for j in ids if j in self.done]

    def last_done(self, ids: list[str]) -> float:
        with self._lock:
            return max(self.done[j] for j in ids if j in self.done)

    def close(self) -> None:
        """Stop listening, and delete the stored results of every tracked job: Celery's result
        keys carry no prefix, so the run's own cleanup (by prefix) would leave them for a day
        (a few full runs left ~550,000 keys, 860 MB, in the bench database)."""
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(Exception):
            self._pubsub.close()
        with self._lock:
            ids = list(self.sent)
        client = self.workers.client.app.backend.client
        with contextlib.suppress(Exception):
            for first in range(0, len(ids), 1_000):
                client.unlink(*(self._prefix + job_id for job_id in ids[first : first + 1_000]))
