"""A three-node RabbitMQ cluster of our own on loopback ports, for the quorum-queue fault test.

Each node is Debian's ``rabbitmq-server`` started as our own process: its own node name,
AMQP and distribution ports, Mnesia and log dirs. The three share one Erlang cookie (written
into a ``HOME`` of their own, so neither the machine's node nor ``$HOME`` is touched); nodes 2
and 3 join node 1. A node is killed with SIGKILL to its own beam process (the PID it wrote),
never by name. The machine's RabbitMQ on :5672 is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.e2e.harness import wait_for

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def available() -> bool:
    return Path(SERVER).exists() and Path(CTL).exists()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Node:
    """One node: name, ports, dirs, and the process we started for it."""

    name: str
    port: int
    dist_port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None
    beam_pid: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class RabbitMQCluster:
    """Three clustered nodes; :attr:`url` is kombu's failover URL over all of them."""

    size: int = 3
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tkq-cluster-")))
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:6]  # node names are host-wide (epmd is shared): unique per run
        self.home = self.dir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        for i in range(1, self.size + 1):
            self.nodes.append(
                Node(f"tkq{i}{tag}@localhost", free_port(), free_port(), self.dir / f"n{i}")
            )

    @property
    def url(self) -> str:
        """``amqp://n1;amqp://n2;amqp://n3``: clients fail over to the next node."""
        return ";".join(node.url for node in self.nodes)

    def _env(self, node: Node) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(node.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(node.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(node.dir / "pid"),
        }

    def ctl(self, node: Node, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n NODE ARGS`` with the cluster's cookie; its output."""
        done = subprocess.run(
            [CTL, "-n", node.name, *args],
            env=self._env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} on {node.name}: {done.stderr}")
        return done.stdout

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self, node: Node) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        (node.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.port}\nloopback_users = none\n"
        )
        (node.dir / "enabled_plugins").write_text("[].\n")
        with open(node.dir / "server.log", "ab") as log:
            node.process = subprocess.Popen(
                [SERVER],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(node),
                start_new_session=True,
            )

    def _wait_up(self, node: Node, timeout: float) -> None:
        def up() -> bool:
            if node.process is not None and node.process.poll() is not None:
                raise AssertionError(
                    f"{node.name} exited: " + (node.dir / "server.log").read_text()[-2000:]
                )
            return _port_open(node.port)

        wait_for(up, timeout, f"RabbitMQ node {node.name}", 0.25)
        node.beam_pid = int((node.dir / "pid").read_text().strip())

    def start(self, timeout: float = 120) -> None:
        """Start every node at once, then join nodes 2.. to node 1 and wait for the cluster."""
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            self._wait_up(node, timeout)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        wait_for(
            lambda: len(self.running_nodes(first)) == self.size,
            timeout,
            "every node to join the cluster",
            0.5,
        )

    def running_nodes(self, via: Node) -> list[str]:
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def kill(self, node: Node) -> None:
        """SIGKILL the node's beam process (the PID it wrote), then reap what we started."""
        assert node.beam_pid is not None and node.process is not None
        os.kill(node.beam_pid, signal.SIGKILL)
        wait_for(lambda: not _alive(node.beam_pid or 0), 30, f"{node.name} to die", 0.05)
        with suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGKILL)  # erl_child_setup and the like
        with suppress(subprocess.TimeoutExpired):
            node.process.wait(10)

    def stop(self) -> None:
        """Stop every node we started (SIGTERM to its group, SIGKILL after 30 s), remove dirs."""
        for node in self.nodes:
            if node.process is None:
                continue
            with suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(10)
            if node.beam_pid is not None and _alive(node.beam_pid):
                with suppress(ProcessLookupError):
                    os.kill(node.beam_pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- what the cluster knows ------------------------------------------------------------

    def queues(self, vhost: str = "/") -> dict[str, dict[str, Any]]:
        """``name -> {type, leader, members, messages}`` read through a running node."""
        via = next(node for node in self.nodes if node.running)
        out = self.ctl(
            via,
            "list_queues",
            "-p",
            vhost,
            "name",
            "type",
            "leader",
            "members",
            "messages",
            "--formatter",
            "json",
        )
        return {row["name"]: row for row in json.loads(out)}

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)
