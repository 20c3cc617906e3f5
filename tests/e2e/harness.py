"""Real worker processes on a real broker, for the end-to-end tests.

A :class:`Deployment` is one isolated tenantkeys deployment: its own SQLite store, master key,
dead-letter key, a Redis database leased to it alone (broker queues and results, which carry no
prefix, and our own keys under its prefix; :mod:`tests.redis_databases`), and on RabbitMQ a vhost
of its own. Processes are started in their own process group and stopped by their PID; every
wait is a bounded poll.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from tenantkeys.client import SigningClient
from tenantkeys.config import ENV_PREFIX, Settings, load_settings
from tenantkeys.jobs.deadletters import DeadLetterStore
from tenantkeys.keys.runtime import Runtime, build_runtime, redis_client
from tenantkeys.resilience import Resilience
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, port_open, service_missing
from tests.helpers import self_signed_identity
from tests.redis_databases import RedisDatabase, lease_database

AMQP_HOST = os.environ.get("TK_TEST_AMQP_HOST", "127.0.0.1")
T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Deployment:
    """Settings, environment and processes of one isolated test deployment."""

    def __init__(self, tmp: Path, broker_url: str | None = None, **overrides: Any) -> None:
        self.tmp = tmp
        self.prefix = f"tke2e-{uuid.uuid4().hex[:10]}"
        #: This deployment's own Redis database, flushed and freed by :meth:`stop`.
        self.redis_db: RedisDatabase = lease_database(self.prefix)
        redis_url = self.redis_db.url
        self.values: dict[str, Any] = {
            "environment": "development",
            "database_url": f"sqlite:///{tmp / 'keys.db'}",
            "local_master_key_file": str(tmp / "master.key"),
            "dead_letter_key_file": str(tmp / "deadletter.key"),
            "data_dir": str(tmp),
            "redis_url": redis_url,
            "broker_url": broker_url or redis_url,
            "result_backend": redis_url,
            "redis_prefix": self.prefix,
            # Short delays so retries and dead letters happen within seconds.
            "retry_max": 3,
            "retry_base_seconds": 0.1,
            "retry_cap_seconds": 0.5,
            "task_soft_time_limit_seconds": 6,
            "task_time_limit_seconds": 8,
            # Redis redelivers a dead worker's jobs after this (above cap + hard limit).
            "broker_visibility_timeout_seconds": 10,
            "worker_prefetch_multiplier": 16,
            # CI runs the worker tests once more on kombu's stock Redis path (scripts/test).
            **(
                {"broker_fetch_batch": int(os.environ["TENANTKEYS_BROKER_FETCH_BATCH"])}
                if "TENANTKEYS_BROKER_FETCH_BATCH" in os.environ
                else {}
            ),
            **overrides,
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def settings(self) -> Settings:
        return load_settings(**self.values)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update({ENV_PREFIX + k.upper(): str(v) for k, v in self.values.items()})
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        env.update(extra or {})
        return env

    def client(self) -> SigningClient:
        return SigningClient.from_settings(self.settings)

    def runtime(self) -> Runtime:
        return build_runtime(self.settings, migrate=True)

    def deadletters(self) -> DeadLetterStore:
        return DeadLetterStore.from_settings(self.settings, redis_client(self.settings))

    def breaker_state(self, provider: str) -> str:
        return Resilience.from_settings(self.settings, redis_client(self.settings)).state(provider)

    # -- processes -----------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        argv: list[str],
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(extra_env),
            start_new_session=True,
            cwd=cwd or self.tmp,
        )
        log.close()
        self.processes.append(process)
        return process

    def worker(
        self,
        name: str,
        *,
        queues: str = "tenantkeys.sign,tenantkeys.keys,tenantkeys.maintenance",
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        wait_ready: bool = True,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """A real ``celery worker`` process; returns once it is ready (or at once)."""
        log_path = self.tmp / f"{name}.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        process = self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-n",
                f"{name}@%h",
                "-Q",
                queues,
                "-c",
                str(concurrency),
                "-l",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            extra_env,
            cwd,
        )

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"worker {name} exited: {self.log(name)[-3000:]}")
            return "ready." in log_path.read_text(errors="replace")[start:]

        if wait_ready:
            wait_for(ready, 60, f"worker {name} to be ready", 0.2)
        return process

    def beat(self, name: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            name, [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "-l", "INFO"]
        )

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def kill(process: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
        """Signal the process group we created for ``process`` (its pool children too)."""
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                self.kill(process, signal.SIGTERM)
            try:  # noqa: SIM105
                os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group, if any
            except ProcessLookupError:
                pass
        self.redis_db.release()


@contextmanager
def redis_deployment(tmp: Path, **overrides: Any) -> Iterator[Deployment]:
    """A :class:`Deployment` on the machine's Redis (its own leased database), stopped after."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    made = Deployment(tmp, **overrides)
    try:
        yield made
    finally:
        made.stop()


def run_cli(
    deployment: Deployment, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``tenantkeys ARGS`` as a user runs it, with the deployment's settings; never raises."""
    return subprocess.run(
        [sys.executable, "-m", "tenantkeys", *args],
        env=deployment.env(),
        cwd=deployment.tmp,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def on_broker(
    broker: str, tmp: Path, make: Callable[..., Deployment] = Deployment
) -> Iterator[Deployment]:
    """A deployment made by ``make`` on ``broker`` ("redis", or "rabbitmq" in a vhost of its
    own), stopped afterwards: the body of a fixture parametrised over both brokers."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        service_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    if broker == "redis":
        made = make(tmp)
        yield made
        made.stop()
        return
    if not port_open(AMQP_HOST, 5672):
        service_missing(f"RabbitMQ at {AMQP_HOST}:5672")
    with rabbitmq_vhost() as url:
        made = make(tmp, broker_url=url)
        yield made
        made.stop()


def sign_and_scope(deployment: Deployment, tmp: Path, scopes: Any) -> Path:
    """Turn message signing on for ``deployment`` (a worker identity in a fresh trusted store)
    with ``scopes`` as its producer scopes file; returns the trusted store, where producers'
    certificates go."""
    trusted = tmp / "trusted"
    trusted.mkdir()
    key, cert = self_signed_identity(trusted, "worker")
    scopes_file = tmp / "scopes.json"
    scopes_file.write_text(json.dumps(scopes))
    deployment.values.update(
        message_signing=True,
        message_signing_key_file=str(key),
        message_signing_cert_file=str(cert),
        message_signing_cert_store=str(trusted),
        producer_scopes_file=str(scopes_file),
        worker_metrics_port=free_port(),
    )
    return trusted


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of our own (created and deleted with rabbitmqctl); yields its URL."""
    vhost = f"tke2e-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)


class TcpProxy:
    """A loopback TCP proxy we can switch off and on: the KMS "goes down" for the workers
    while moto (which keeps its keys in memory only) keeps running behind it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones (connection refused / reset)."""
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone leaves it listening  # noqa: SIM105
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._connections:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways, each direction in a thread of its own."""
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
