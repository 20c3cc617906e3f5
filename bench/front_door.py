"""Scenario 12: single signing jobs through the HTTP front door, next to ``SigningClient``.

One worker, one ops API (``tenantkeys api``, uvicorn, in a subprocess) on the same broker, and
two ways to send the same single-payload ``sign`` jobs, measured in the same run, alternately:

* **burst** -- one thread sends ``jobs`` jobs as fast as it can (``POST /v1/jobs/sign`` on one
  keep-alive connection, or ``SigningClient.submit``); jobs/s until the last result is stored,
  and each job's latency from just before it was sent to its stored result (scenario 3's clock).
* **wait** -- ``WAITERS`` threads each sign one job at a time and wait for it
  (``?wait=10``, or ``SigningClient.sign``): jobs/s and the caller's round trip p50/p99.

Each pair is measured ``repeats`` times; the metrics are the medians, with min and max beside.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from bench.celery_scenarios import RESULT_TIMEOUT, TENANTS, _need_redis, _ready
from bench.celery_stack import Collector, Workers, workers
from bench.env import BenchEnv
from bench.harness import PAYLOAD, Mode, ScenarioResult, percentiles
from tenantkeys import jobs

TOKEN = "tkbench-" + uuid.uuid4().hex
#: Callers signing one job at a time each, in the "wait" measurement.
WAITERS = 4
ENCODED = jobs.encode_payload(PAYLOAD)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def ops_api(env: BenchEnv, w: Workers) -> Iterator[int]:
    """``tenantkeys api`` with a scopes file letting ``TOKEN`` sign for every tenant; its port."""
    import hashlib

    scopes = env.workdir / "scopes.json"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    producer = {"name": "bench", "token_sha256": digest, "tenants": ["*"]}
    scopes.write_text(json.dumps({"producers": [producer]}))
    port = _free_port()
    child = env.child_env(
        worker_concurrency=env.mode.worker_concurrency, producer_scopes_file=scopes
    )
    log = (env.workdir / "api.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "tenantkeys", "api", "--port", str(port)],
        env=child,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=env.workdir,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited; see {env.workdir / 'api.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


class HttpProducer:
    """One keep-alive connection to the front door (what an upstream HTTP client holds)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def post(self, tenant: str, wait: float = 0) -> dict[str, Any]:
        body = json.dumps({"tenant_id": tenant, "payload": ENCODED})
        path = "/v1/jobs/sign" + (f"?wait={wait:g}" if wait else "")
        try:
            self.connection.request("POST", path, body=body, headers=self.headers)
            reply = self.connection.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed the connection while it sat idle (uvicorn's keep-alive timeout,
            # 5 s; a full-mode SigningClient burst between two HTTP bursts lasts longer): the
            # request never reached it. Reconnect and send it, as an HTTP client library does.
            self.connection.close()
            self.connection.request("POST", path, body=body, headers=self.headers)
            reply = self.connection.getresponse()
        found: dict[str, Any] = json.loads(reply.read())
        if reply.status not in (200, 202):
            raise RuntimeError(f"front door answered {reply.status}: {found}")
        if wait and found.get("state") != "SUCCESS":
            raise RuntimeError(f"no signature within ?wait={wait:g}: {found.get('state')}")
        return found

    def close(self) -> None:
        self.connection.close()


def _burst(
    collector: Collector, tenants: list[str], count: int, send: Callable[[str], str]
) -> dict[str, Any]:
    ids: list[str] = []
    started = time.perf_counter()
    for i in range(count):
        sent_at = time.perf_counter()
        job_id = send(tenants[i % len(tenants)])
        collector.track(job_id, sent_at)
        ids.append(job_id)
    published = time.perf_counter()
    if not collector.wait(ids, RESULT_TIMEOUT):
        raise TimeoutError(f"results of {count} jobs did not all arrive")
    elapsed = collector.last_done(ids) - started
    return {
        "jobs_per_s": round(count / elapsed, 1),
        "submit_per_s": round(count / (published - started), 1),
        "failed": collector.failed,
        **percentiles(collector.latencies_ms(ids)),
    }


def _waiting(
    tenants: list[str], count: int, make: Callable[[], Callable[[str], object]]
) -> dict[str, Any]:
    """``WAITERS`` threads, each signing ``count // WAITERS`` jobs one at a time."""
    per_thread = max(1, count // WAITERS)
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(WAITERS + 1)

    def run(offset: int) -> None:
        sign = make()
        mine: list[float] = []
        start.wait()
        try:
            for i in range(per_thread):
                before = time.perf_counter()
                sign(tenants[(offset + i) % len(tenants)])
                mine.append((time.perf_counter() - before) * 1000)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(WAITERS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return {"jobs_per_s": round(len(latencies) / elapsed, 1), **percentiles(latencies)}


def _spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each number over the runs, with the min and max of jobs/s."""
    rates = [run["jobs_per_s"] for run in runs]
    summary: dict[str, Any] = {
        key: round(statistics.median(run[key] for run in runs), 3)
        for key in ("jobs_per_s", "p50_ms", "p99_ms")
    }
    summary.update(jobs_per_s_min=min(rates), jobs_per_s_max=max(rates), runs=len(runs))
    if "submit_per_s" in runs[0]:
        summary["submit_per_s"] = statistics.median(run["submit_per_s"] for run in runs)
    return summary


def scenario_12(env: BenchEnv, mode: Mode) -> ScenarioResult:
    """Single jobs: the HTTP front door next to SigningClient, burst and sign-and-wait."""
    result = ScenarioResult(
        "12", "Single jobs: HTTP front door next to SigningClient", unit="jobs/s"
    )
    if not _need_redis(env, result):
        return result
    tenants = env.tenants(TENANTS)
    count = mode.single_jobs
    waits = max(WAITERS * 10, count // 4)
    repeats = 2 if mode.name == "quick" else 3
    runs: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("client", "http", "client_wait", "http_wait")
    }
    with workers(env) as w, ops_api(env, w) as port:
        _ready(w, tenants)
        door = HttpProducer(port)
        collector = Collector(w)
        try:
            door.post(tenants[0], wait=10)  # the API's producer connects on first use
            for _ in range(repeats):
                runs["client"].append(
                    _burst(collector, tenants, count, lambda t: w.client.submit(t, PAYLOAD).job_id)
                )
                runs["http"].append(
                    _burst(collector, tenants, count, lambda t: str(door.post(t)["job_id"]))
                )
                runs["client_wait"].append(
                    _waiting(tenants, waits, lambda: lambda t: w.client.sign(t, PAYLOAD))
                )
                runs["http_wait"].append(
                    _waiting(tenants, waits, lambda: partial(HttpProducer(port).post, wait=10))
                )
        finally:
            collector.close()
            door.close()
    summary = {name: _spread(found) for name, found in runs.items()}
    result.metrics = {
        "jobs": count,
        "waiting_jobs": waits,
        "waiters": WAITERS,
        **summary,
        "p50_ms": summary["http"]["p50_ms"],
        "p99_ms": summary["http"]["p99_ms"],
        "http_vs_client_burst": round(
            summary["http"]["jobs_per_s"] / summary["client"]["jobs_per_s"], 2
        ),
        "http_vs_client_wait": round(
            summary["http_wait"]["jobs_per_s"] / summary["client_wait"]["jobs_per_s"], 2
        ),
    }
    result.headline = summary["http"]["jobs_per_s"]
    result.notes.append(
        "headline = front-door burst jobs/s (median of the runs); SigningClient beside it"
    )
    return result
