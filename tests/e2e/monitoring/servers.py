"""Prometheus and Alertmanager (Debian's binaries) as processes of the test, and a webhook.

Each server listens on a free loopback port, keeps its data in the test's tmp directory, runs
in a process group of its own and is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import free_port, service_missing
from tests.e2e.harness import wait_for

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"  # Debian's name for the alertmanager binary


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        service_missing(f"{name} (scripts/install-test-servers)")
    assert path is not None
    return path


class Server:
    """One server process on ``127.0.0.1:port``, ready once ``ready_path`` answers 200."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, tmp: Path) -> None:
        self.name, self.port, self.log_path = name, port, tmp / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True
            )
        wait_for(lambda: self._ready(ready_path), 60, f"{name} to be ready", 0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self, path: str) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as reply:
            return json.loads(reply.read())

    def reload(self) -> None:
        """Re-read the configuration files (both servers reload on SIGHUP)."""
        os.kill(self.process.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_prometheus(config: Path, tmp: Path) -> Server:
    port = free_port()
    argv = [
        binary(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        # Firing alerts are re-sent every minute by default; resolved ones are sent at once.
        "--rules.alert.resend-delay=1s",
    ]
    return Server("prometheus", argv, port, "/-/ready", tmp)


def start_alertmanager(config: Path, tmp: Path) -> Server:
    port = free_port()
    argv = [
        binary(ALERTMANAGER),
        f"--config.file={config}",
        f"--storage.path={tmp / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # empty: no gossip cluster, no port of its own
    ]
    return Server("alertmanager", argv, port, "/-/ready", tmp)


@dataclass(frozen=True)
class Notification:
    """One alert of one webhook post: when it arrived, through which receiver, in which state."""

    at: float
    receiver: str
    status: str  # "firing" or "resolved"
    labels: dict[str, str]


class Webhook:
    """Alertmanager's webhook receiver: records every alert of every post it is sent."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server calls it by this name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                webhook._record(self.path.strip("/"), body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:  # quiet: the timeline reports
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _record(self, receiver: str, body: dict[str, Any]) -> None:
        now = time.monotonic() - self.started
        with self._lock:
            for alert in body["alerts"]:
                self.notifications.append(
                    Notification(now, receiver, alert["status"], dict(alert["labels"]))
                )

    def received(
        self, alertname: str, status: str, after: float = 0.0, **labels: str
    ) -> Notification | None:
        """The first notification of ``alertname`` in ``status`` matching ``labels``, received
        ``after`` seconds since the start or later."""
        with self._lock:
            for note in self.notifications:
                if (
                    note.at >= after
                    and note.labels.get("alertname") == alertname
                    and note.status == status
                    and all(note.labels.get(k) == v for k, v in labels.items())
                ):
                    return note
        return None

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
