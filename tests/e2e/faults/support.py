"""What the fault suite shares: isolated deployments, private servers we may stop, a slow KMS
proxy, a tap on every stored result, a task-event capture, job accounting and the per-fault
record written to the report.

Counting rules (the same for every fault, so the table compares like with like):

* a job is *signed* when its final result is an ``ok`` envelope whose JWS verifies for the
  job's tenant and payload; *dead-lettered* when its final result names a dead letter;
  *rejected* when it is any other error envelope (bad input);
* *lost* is a job with no final result at the end of the bounded wait, after one re-send
  under the same job id (what :class:`tenantkeys.client.SigningClient` does on its own);
  jobs that needed that re-send are counted apart (``resent``);
* *duplicated* counts, over every result write the backend published (not only the last one),
  the distinct signatures of a job beyond the first: Ed25519 is deterministic, so a job run
  twice must store the same JWS;
* *retried* is the number of jobs with at least one ``task-retried`` event;
* *recover_seconds* runs from the end of the fault (service back, or the last kill) until every
  job sent had its final result (dead letters replayed, where the test replays them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from tenantkeys import jobs
from tenantkeys.client import SigningClient
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port
from tests.e2e.harness import Deployment, TcpProxy, wait_for

#: Redis database of the fault suite (results, dead letters, queues, under unique prefixes).
FAULT_REDIS_DB = 6
FAULT_REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{FAULT_REDIS_DB}"
#: Where the per-fault records go; ``python -m tests.e2e.faults.report`` renders them.
REPORT_PATH = Path(
    os.environ.get("TK_FAULT_REPORT", "")
    or Path(os.environ.get("TMPDIR", "/tmp")) / "tenantkeys-fault-report.json"
)


# -- the record of one fault -----------------------------------------------------------------


@dataclass
class FaultRecord:
    """One row of the table in docs/reliability.md."""

    fault: str
    broker: str
    provider: str
    fault_seconds: float = 0.0
    jobs_sent: int = 0
    signed: int = 0
    rejected: int = 0
    retried: int = 0
    dead_lettered: int = 0
    replayed: int = 0
    resent: int = 0
    lost: int = 0
    duplicated: int = 0
    recover_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_records(
    records: Iterable[FaultRecord],
    path: Path = REPORT_PATH,
    *,
    scans: Iterable[Mapping[str, int]] = (),
) -> Path:
    """Merge ``records`` into the JSON report (one row per fault name and broker)."""
    existing: dict[str, dict[str, Any]] = {}
    old_scans: list[Any] = []
    if path.exists():
        with suppress(ValueError):
            previous = json.loads(path.read_text())
            for row in previous.get("faults", []):
                existing[f"{row['fault']}|{row['broker']}"] = row
            old_scans = previous.get("secret_scans", [])
    for record in records:
        existing[f"{record.fault}|{record.broker}"] = record.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    body["faults"] = sorted(existing.values(), key=lambda r: (r["fault"], r["broker"]))
    body["secret_scans"] = list(scans) or old_scans
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


# -- a deployment of the fault suite ---------------------------------------------------------


def fault_deployment(tmp: Path, broker_url: str | None = None, **overrides: Any) -> Deployment:
    """A :class:`Deployment` in Redis DB 6 under a ``tkfault-`` prefix."""
    values = {"redis_url": FAULT_REDIS_URL, "result_backend": FAULT_REDIS_URL, **overrides}
    made = Deployment(tmp, broker_url=broker_url or values["redis_url"], **values)
    made.prefix = f"tkfault-{uuid.uuid4().hex[:10]}"
    made.values["redis_prefix"] = made.prefix
    return made


def cleanup_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()


# -- taps: every stored result, every task event ---------------------------------------------


class ResultTap:
    """Every result write of a deployment, from the backend's publish (Redis backend only)."""

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._pattern = f"{prefix}:celery-task-meta-*"
        self._cut = len(self._pattern) - 1
        self.writes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.raw: list[bytes] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ResultTap:
        self._thread.start()
        assert self._ready.wait(10), "result tap did not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()

    def _run(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(self._pattern)
        self._ready.set()
        while not self._stop.is_set():
            try:
                message = pubsub.get_message(timeout=0.2)
            except redis.RedisError:
                time.sleep(0.2)
                continue
            if message is None:
                continue
            channel = message["channel"].decode()
            self.raw.append(message["data"])
            with suppress(ValueError):
                self.writes[channel[self._cut :]].append(json.loads(message["data"]))
        pubsub.close()

    def signatures(self, job_id: str) -> set[str]:
        found = set()
        for meta in self.writes.get(job_id, []):
            envelope = meta.get("result")
            if isinstance(envelope, Mapping) and envelope.get("ok"):
                result = envelope.get("result") or {}
                if isinstance(result, Mapping) and "jws" in result:
                    found.add(str(result["jws"]))
        return found


class EventCapture:
    """Task events as Flower receives them (celery's event receiver on the broker)."""

    def __init__(self, deployment: Deployment) -> None:
        self._client = SigningClient.from_settings(deployment.settings)
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()

    def _run(self) -> None:
        app = self._client.app
        while not self._stop.is_set():
            try:
                with app.connection_for_read() as conn:
                    receiver = app.events.Receiver(conn, handlers={"*": self.events.append})
                    for _ in receiver.itercapture(limit=None, timeout=0.5, wakeup=False):
                        if self._stop.is_set():
                            return
            except TimeoutError:
                continue
            except Exception:  # broker gone for a while (a fault): reconnect
                if self._stop.wait(0.5):
                    return

    def retried(self) -> set[str]:
        return {str(e.get("uuid")) for e in self.events if e.get("type") == "task-retried"}


# -- sending and accounting ------------------------------------------------------------------


@dataclass
class Job:
    job_id: str
    tenant: str
    payload: bytes
    task: str = jobs.SIGN

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant, "payload": jobs.encode_payload(self.payload)}


def distinctive_payload(tag: str) -> bytes:
    """A payload nobody else writes: what the secret scan looks for."""
    return f"tkfault-payload:{tag}:{uuid.uuid4().hex}{uuid.uuid4().hex}".encode()


def send_sign_jobs(client: SigningClient, tenants: list[str], count: int, tag: str) -> list[Job]:
    made = []
    for i in range(count):
        job = Job(str(uuid.uuid4()), tenants[i % len(tenants)], distinctive_payload(f"{tag}-{i}"))
        client.send(jobs.SIGN, job.kwargs, job_id=job.job_id)
        made.append(job)
    return made


def results(deployment: Deployment, job_ids: list[str]) -> dict[str, Any]:
    """The stored envelope of each job that has one (Redis backend, read in one MGET)."""
    client = redis.Redis.from_url(deployment.settings.effective_result_backend)
    try:
        keys = [f"{deployment.prefix}:celery-task-meta-{job_id}" for job_id in job_ids]
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            for job_id, raw in zip(
                job_ids[start : start + 500], client.mget(keys[start : start + 500]), strict=True
            ):
                if raw is not None:
                    meta = json.loads(raw)
                    if meta.get("status") == "SUCCESS":
                        found[job_id] = meta.get("result")
        return found
    finally:
        client.close()


def wait_all(deployment: Deployment, sent: list[Job], timeout: float) -> dict[str, Any]:
    """Poll until every job has a final result or ``timeout`` passes; returns what is there."""
    ids = [job.job_id for job in sent]
    deadline = time.monotonic() + timeout
    while True:
        found = results(deployment, ids)
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def settle(
    deployment: Deployment,
    sent: list[Job],
    record: FaultRecord,
    *,
    timeout: float,
    resend_timeout: float = 30.0,
) -> dict[str, Any]:
    """Wait for every job; re-send (same id) those still without a result once; count them."""
    found = wait_all(deployment, sent, timeout)
    missing = [job for job in sent if job.job_id not in found]
    if missing:
        record.resent = len(missing)
        record.notes.append(
            f"{len(missing)} job(s) had no result after {timeout:g} s and were re-sent "
            "under the same id"
        )
        with deployment.client() as client:
            for job in missing:
                client.send(job.task, job.kwargs, job_id=job.job_id)
        found = wait_all(deployment, sent, resend_timeout)
    return found


def account(
    deployment: Deployment,
    sent: list[Job],
    found: Mapping[str, Any],
    record: FaultRecord,
    *,
    tap: ResultTap | None = None,
    events: EventCapture | None = None,
) -> None:
    """Fill ``record`` from the final results; verify every signature for its own job."""
    runtime = deployment.runtime()
    try:
        record.jobs_sent += len(sent)
        for job in sent:
            envelope = found.get(job.job_id)
            if envelope is None:
                record.lost += 1
                continue
            if envelope.get("ok"):
                result = envelope["result"]
                assert result["tenant_id"] == job.tenant, (job, result)
                runtime.service.verify(job.tenant, job.payload, result["jws"])
                record.signed += 1
            elif envelope["error"].get("dead_letter"):
                record.dead_lettered += 1
            else:
                record.rejected += 1
            if tap is not None:
                assert tap.writes.get(job.job_id), f"the tap missed the result of {job.job_id}"
                record.duplicated += max(0, len(tap.signatures(job.job_id)) - 1)
        if events is not None:
            ids = {job.job_id for job in sent}
            record.retried += len(events.retried() & ids)
    finally:
        runtime.close()


def replay_all(deployment: Deployment, extra_env: dict[str, str] | None = None) -> str:
    """``tenantkeys dlq replay --all`` as an operator runs it; returns its output."""
    done = subprocess.run(
        [
            os.environ.get("TK_PYTHON", str(Path(os.sys.executable))),
            "-c",
            "import sys; from tenantkeys.cli import main; sys.exit(main())",
            "dlq",
            "replay",
            "--all",
        ],
        env=deployment.env(extra_env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


# -- a KMS that answers slowly ---------------------------------------------------------------


class SlowProxy(TcpProxy):
    """:class:`TcpProxy` that holds every answer from upstream for ``delay`` seconds."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.delay = 0.0

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
            threading.Thread(target=self._pump, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 1), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: int) -> None:
        try:
            while data := source.recv(65536):
                if answers and self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# -- private servers we may stop (never the machine's own) ------------------------------------


class PrivateRedis:
    """``redis-server`` on a free port, no persistence; stop and start it on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        with open(self.tmp / "private-redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.tmp),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 20, "the private Redis")
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _pg_bin(name: str) -> str | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    return shutil.which(name)


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb in a temp dir), started and stopped by pg_ctl."""

    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's tmp_path: its root-only parents would keep the postgres user out.
        self.dir = Path(tempfile.mkdtemp(prefix="tkfault-pg-"))
        self.data = self.dir / "data"
        self._runas: list[str] = []

    @staticmethod
    def available() -> bool:
        return _pg_bin("initdb") is not None and _pg_bin("pg_ctl") is not None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        subprocess.run(
            self._runas + argv, check=True, capture_output=True, timeout=timeout, cwd="/"
        )

    def init(self) -> None:
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            shutil.chown(self.dir, "postgres")
            self._runas = ["runuser", "-u", "postgres", "--"]
        initdb = _pg_bin("initdb")
        assert initdb is not None
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    def start(self) -> None:
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl is not None
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            [
                pg_ctl,
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.dir / "log"),
                "-w",
                "-t",
                "30",
                "start",
            ],
            timeout=40,
        )
        wait_for(lambda: _port_open(self.port), 30, "the private PostgreSQL")

    def stop(self) -> None:
        pg_ctl = _pg_bin("pg_ctl")
        if pg_ctl and (self.data / "postmaster.pid").exists():
            self._run([pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PrivateRabbitMQ:
    """A second RabbitMQ node (own name, ports, Mnesia dir and cookie) that we may restart.

    Stopped with SIGTERM to its own beam process (a clean shutdown: durable queues and
    persistent messages are written to its Mnesia dir) and started again on the same dir.
    """

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "rabbitmq"
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"tkfault{uuid.uuid4().hex[:6]}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() or bool(
            shutil.which("rabbitmq-server")
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 90) -> None:
        (self.dir / "home").mkdir(parents=True, exist_ok=True)
        conf = self.dir / "rabbitmq.conf"
        conf.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not Path(server).exists():
            server = shutil.which("rabbitmq-server") or server
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(self.dir / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        with open(self.dir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [server], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    "private RabbitMQ exited: " + (self.dir / "server.log").read_text()[-2000:]
                )
            return _port_open(self.port)

        wait_for(up, timeout, "the private RabbitMQ node", 0.25)

    def stop(self) -> None:
        """A clean stop: SIGTERM to the node's process group, waited for."""
        if self.process is None:
            return
        beam = None
        with suppress(OSError, ValueError):
            beam = int((self.dir / "pid").read_text().strip())
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if beam is not None:  # the script may exit before the node has finished stopping
            wait_for(lambda: not _alive(beam), 60, "the private RabbitMQ node to stop", 0.2)
        wait_for(lambda: not _port_open(self.port), 30, "the AMQP port to close", 0.2)
        self.process = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...``; ``t[0]`` holds the elapsed seconds afterwards."""
    box: list[float] = []
    started = time.monotonic()
    try:
        yield box
    finally:
        box.append(time.monotonic() - started)
