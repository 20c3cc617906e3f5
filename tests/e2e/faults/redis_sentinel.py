"""A Redis primary, one replica and three sentinels of our own on loopback ports.

Debian's ``redis-server`` and ``redis-sentinel`` binaries, each started as our own process with
a config file in a temporary directory of its own (no persistence: ``save ""``, no AOF), and
stopped by the PID we started. The sentinels agree on a failover with a quorum of two, call the
primary down after :data:`DOWN_AFTER_MS` without an answer, and the replica takes over within a
few seconds. The machine's Redis on :6379 is never touched.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.conftest import free_port
from tests.e2e.harness import wait_for

SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
#: The primary's name in the sentinels' config (TENANTKEYS_REDIS_SENTINEL_MASTER).
MASTER = "tkprimary"
#: A primary silent this long is subjectively down; two sentinels agreeing make it objectively
#: down and start the failover.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def available() -> bool:
    return Path(SERVER).exists() and Path(SENTINEL).exists()


@dataclass
class Server:
    """One process we started: its role, port, config file and log."""

    role: str
    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class SentinelGroup:
    """Primary, replica and sentinels; :attr:`url` is the ``sentinel://`` URL over the three."""

    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tk-sentinel-")))
    data: list[Server] = field(default_factory=list)
    sentinels: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def start(self) -> None:
        primary = self._server("primary", [])
        replica = self._server("replica", [f"replicaof 127.0.0.1 {primary.port}"])
        self.data = [primary, replica]
        wait_for(lambda: self._replica_in_sync(primary, replica), 30, "the replica to sync", 0.1)
        for n in range(3):
            self.sentinels.append(
                self._start(
                    "sentinel",
                    SENTINEL,
                    f"sentinel-{n}",
                    [
                        f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2",
                        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                        f"sentinel parallel-syncs {MASTER} 1",
                    ],
                )
            )
        # Every sentinel has found the replica and the other two sentinels: a failover can run.
        wait_for(self._sentinels_ready, 30, "the sentinels to see the replica and each other", 0.2)

    def _server(self, role: str, extra: list[str]) -> Server:
        return self._start(
            role,
            SERVER,
            role,
            [
                'save ""',
                "appendonly no",
                "repl-diskless-sync yes",
                "repl-diskless-sync-delay 0",
                *extra,
            ],
        )

    def _start(self, role: str, binary: str, name: str, lines: list[str]) -> Server:
        home = self.dir / name
        home.mkdir(parents=True, exist_ok=True)
        server = Server(role, free_port(), home)
        config = home / "redis.conf"  # a sentinel rewrites its config: one file each
        config.write_text(
            "\n".join(
                [
                    f"port {server.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {home}",
                    f"logfile {home / 'server.log'}",
                    *lines,
                ]
            )
            + "\n"
        )
        server.process = subprocess.Popen(
            [binary, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: self._answers(server), 20, f"{name} to answer", 0.05)
        return server

    @staticmethod
    def _answers(server: Server) -> bool:
        if not server.running:
            raise AssertionError(f"{server.role} on {server.port} exited: {server.log()[-2000:]}")
        client = server.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    @staticmethod
    def _replica_in_sync(primary: Server, replica: Server) -> bool:
        client = replica.client()
        try:
            info = client.info("replication")
        finally:
            client.close()
        return info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                state = client.sentinel_master(MASTER)
            finally:
                client.close()
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    # -- reading the group ------------------------------------------------------------------

    def primary_port(self) -> int | None:
        """The primary's port as the sentinels' majority names it (None while they disagree)."""
        named: dict[int, int] = {}
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                _, port = client.sentinel_get_master_addr_by_name(MASTER)
                named[int(port)] = named.get(int(port), 0) + 1
            except redis.RedisError:
                continue
            finally:
                client.close()
        best = max(named.items(), key=lambda item: item[1], default=None)
        return best[0] if best and best[1] >= 2 else None

    def primary(self) -> Server:
        port = self.primary_port()
        return next(s for s in self.data if s.port == port)

    def replica(self) -> Server:
        primary = self.primary()
        return next(s for s in self.data if s is not primary and s.running)

    @staticmethod
    def offsets(primary: Server, replica: Server) -> tuple[int, int]:
        """(the primary's replication offset, the replica's): the bytes between them bound the
        writes a primary lost now would take with it. The replica is read first, so traffic
        between the two reads can only widen the gap: an upper bound, never negative."""
        first, second = primary.client(), replica.client()
        try:
            behind = int(second.info("replication")["slave_repl_offset"])
            ahead = int(first.info("replication")["master_repl_offset"])
        finally:
            first.close()
            second.close()
        return ahead, behind

    # -- faults -----------------------------------------------------------------------------

    def kill(self, server: Server) -> None:
        """SIGKILL to the process we started for ``server``."""
        assert server.process is not None
        with suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)

    def stop(self) -> None:
        for server in [*self.sentinels, *self.data]:
            if server.process is None or server.process.poll() is not None:
                continue
            server.process.terminate()
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
