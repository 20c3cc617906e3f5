"""``tenantkeys dev``: the local stack in the foreground, one per data dir.

Before starting anything it refuses when the pid file names a stack that still runs, and when
a port it needs is taken. It stops everything it started on Ctrl-C, SIGTERM and SIGHUP (a
closed terminal, a dropped SSH session); ``tenantkeys dev --stop`` sends it that SIGTERM from
elsewhere, and stops what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence

from tenantkeys.cli import ports
from tenantkeys.cli.pidfile import PidFile, RecordedProcess
from tenantkeys.cli.probes import port_bound
from tenantkeys.cli.stack import (
    STOP_SECONDS_MAX,
    LocalStack,
    redis_plan,
    stop_on_signals,
    stop_process,
)
from tenantkeys.config import ENV_PREFIX, Settings
from tenantkeys.errors import ConfigurationError, ErrorCode

STOP_COMMAND = "tenantkeys dev --stop"
#: Processes ``dev`` starts, in order; it stops them the other way round.
_ROLES = ("redis", "worker", "beat", "flower")
#: How long ``--stop`` waits for the dev command to stop its processes, one after the other.
_DEV_STOP_SECONDS = len(_ROLES) * STOP_SECONDS_MAX + 5

Say = Callable[[str], None]


def run_dev(config: Settings, flower_port: int | None, say: Say) -> None:
    """Run Redis (bundled if none answers), a worker, Beat and Flower until a stop signal.

    ``flower_port`` None: no Flower. Raises TK-PORT-IN-USE, before starting anything, when
    another stack runs from this data dir or a port is taken.
    """
    pidfile = PidFile.in_data_dir(config.data_dir)
    refuse_if_running(pidfile)
    url, redis_port = redis_plan(config)
    metrics_port = config.worker_metrics_port
    ports.require_free(
        *([ports.bundled_redis(redis_port)] if redis_port is not None else []),
        *([ports.worker_metrics(metrics_port)] if metrics_port else []),
        *([ports.flower(flower_port, in_dev=True)] if flower_port is not None else []),
    )
    stack = LocalStack(config.data_dir / "logs")
    stack.env[f"{ENV_PREFIX}REDIS_URL"] = url
    me = RecordedProcess.of("dev", os.getpid())

    def record() -> None:
        pidfile.write([me, *(RecordedProcess.of(c.name, c.pid, c.ports) for c in stack.children)])

    with stop_on_signals():
        try:
            record()
            if redis_port is not None:
                stack.start_redis(redis_port)
                record()
            stack.start("worker", "worker", "--loglevel=INFO", ports=_given(metrics_port))
            record()
            stack.start("beat", "beat", "--loglevel=INFO")
            record()
            if flower_port is not None:
                stack.start("flower", "flower", f"--port={flower_port}", ports=(flower_port,))
                record()
                say(f"flower: http://127.0.0.1:{flower_port}")
            say(
                f"redis: {url}\nlogs: {stack.log_dir}\npid file: {pidfile.path}\n"
                f"service running (pid {os.getpid()}); Ctrl-C or `{STOP_COMMAND}` stops it"
            )
            while (exited := stack.failed()) is None:
                time.sleep(1.0)
            raise stack.exit_error(exited)
        except KeyboardInterrupt:
            say("stopping ...")
        finally:
            stack.stop(say)
            pidfile.remove()


def refuse_if_running(pidfile: PidFile) -> None:
    """Raise TK-PORT-IN-USE naming the stack ``pidfile`` records, if any of it still runs.

    A pid file whose processes are all gone is stale: it is removed without a word.
    """
    running = [p for p in pidfile.read() if p.running()]
    if not running:
        pidfile.remove()
        return
    dev = next((p for p in running if p.name == "dev"), None)
    if dev is not None:
        who, kill = "tenantkeys dev already runs", f"kill {dev.pid}"
    else:  # the dev command was killed outright; its processes run on, each in its group
        who = "processes of a tenantkeys dev that is gone still run"
        kill = "kill -- " + " ".join(f"-{p.pid}" for p in running)
    bound = sorted({n for p in running for n in p.ports if port_bound(ports.LOCALHOST, n)})
    held = f"; ports in use: {', '.join(map(str, bound))}" if bound else ""
    raise ConfigurationError(
        f"{who} from {pidfile.path.parent}: {'; '.join(p.describe() for p in running)}{held}. "
        f"Stop {'it' if dev else 'them'} with `{STOP_COMMAND}` (or `{kill}`), or use another "
        f"{ENV_PREFIX}DATA_DIR "
        "and other ports",
        code=ErrorCode.PORT_IN_USE,
    )


def stop_dev(config: Settings, say: Say) -> None:
    """Stop the stack running from this data dir: SIGTERM to its dev command, which stops its
    processes in order; then whatever is left (a dev command killed outright leaves them)."""
    pidfile = PidFile.in_data_dir(config.data_dir)
    running = [p for p in pidfile.read() if p.running()]
    if not running:
        pidfile.remove()
        say(f"no tenantkeys dev runs from {pidfile.path.parent}")
        return
    dev = next((p for p in running if p.name == "dev"), None)
    if dev is not None:
        say(f"stopping tenantkeys dev (pid {dev.pid}) ...")
        _send(dev.pid, signal.SIGTERM)
        if not _wait_until(lambda: not dev.running(), _DEV_STOP_SECONDS):
            _send(dev.pid, signal.SIGKILL)
    for process in _leftovers(running):
        say(f"stopping {process.describe()}, left behind")
        stop_process(process.name, process.pid)
    pidfile.remove()
    say("stopped")


def _leftovers(recorded: Sequence[RecordedProcess]) -> list[RecordedProcess]:
    """Recorded processes other than dev that still run, newest first (Redis last)."""
    return [p for p in reversed(recorded) if p.name != "dev" and p.running()]


def _given(port: int) -> tuple[int, ...]:
    return (port,) if port else ()


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
