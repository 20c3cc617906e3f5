"""Services the fault suite may break: a proxy that slows a KMS down, and private Redis,
PostgreSQL and RabbitMQ servers it may stop and start (never the machine's own)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path

import redis

from tests.conftest import free_port
from tests.e2e.harness import TcpProxy, wait_for

# -- a KMS that answers slowly ---------------------------------------------------------------


class SlowProxy(TcpProxy):
    """:class:`TcpProxy` that holds every answer from upstream for ``delay`` seconds."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.delay = 0.0

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
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
