"""``tenantkeys worker | worker-ready | beat | flower | api | dev | demo``: the processes."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import click

from tenantkeys import jobs
from tenantkeys.cli import ports
from tenantkeys.cli.context import settings
from tenantkeys.cli.demo import run_demo
from tenantkeys.cli.dev import run_dev, stop_dev
from tenantkeys.cli.probes import alive
from tenantkeys.config import ENV_PREFIX, Settings, environment_with
from tenantkeys.errors import ConfigurationError, ErrorCode, InvalidRequest

#: Addresses Flower may bind without basic auth: reachable from this machine only.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: A TCP port to listen on; out of range is a usage error, not an OverflowError from bind.
PORT = click.IntRange(1, 65_535)
#: Exit status of `worker-ready` when the worker did not answer.
EXIT_NOT_READY = 1


#: The Celery app of the workers, Beat and Flower, loaded by Celery's own entry point.
WORKER_APP = "workers.app"


def _exec_celery(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Replace this process by Celery's own command line (``celery -A workers.app ...``).

    Settings are validated first, so a bad setting is one coded line, not a Celery traceback.
    The exec keeps the PID, so signals from a supervisor reach Celery itself.
    """
    settings()
    command = [sys.executable, "-m", "celery", "-A", WORKER_APP, *argv]
    os.execve(sys.executable, command, env if env is not None else environment_with())  # noqa: S606


@click.command("worker")
@click.option("--concurrency", type=click.IntRange(1, 512), help="Pool processes (default: CPUs).")
@click.option("--queues", default=",".join(jobs.QUEUES), show_default=True)
@click.option("--hostname", help="Node name, e.g. worker1@%h.")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork")
@click.option("--loglevel", default="INFO", show_default=True)
def worker_command(
    concurrency: int | None, queues: str, hostname: str | None, pool: str, loglevel: str
) -> None:
    """Run a Celery worker (migrates the key store once, then forks the pool).

    Serves its metrics on TENANTKEYS_WORKER_METRICS_PORT (0: off). With the prefork pool and
    no PROMETHEUS_MULTIPROC_DIR, it restarts itself once with the variable set to
    <data_dir>/metrics/worker-<host>-<pid>, so the pool processes' metrics can be merged.
    """
    if pool == "prefork":
        _ensure_multiproc_dir(settings())
    argv = ["worker", f"--loglevel={loglevel}", f"--queues={queues}", f"--pool={pool}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    _exec_celery(argv)


def _ensure_multiproc_dir(config: Settings) -> None:
    """Re-exec this command with PROMETHEUS_MULTIPROC_DIR set, unless it is set or unneeded.

    prometheus-client picks its value store when first imported, which the CLI has done by
    now: the variable must be in the environment when the process starts, hence the exec
    (same PID, same arguments). Directories of workers no longer running are removed.
    """
    if config.prometheus_multiproc_dir is not None or not config.worker_metrics_port:
        return
    base = (config.data_dir / "metrics").resolve()
    host = socket.gethostname()
    _remove_stale_metrics(base, host)
    directory = base / f"worker-{host}-{os.getpid()}"
    directory.mkdir(parents=True, exist_ok=True)
    env = environment_with(PROMETHEUS_MULTIPROC_DIR=str(directory))
    os.execve(sys.executable, sys.orig_argv, env)  # noqa: S606 - this very command, again


def _remove_stale_metrics(base: Path, host: str) -> None:
    """Delete ``worker-<host>-<pid>`` directories whose process is gone (this host's only)."""
    if not base.is_dir():
        return
    for directory in base.glob(f"worker-{host}-*"):
        pid = directory.name.rpartition("-")[2]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


@click.command("worker-ready")
@click.option(
    "--hostname",
    help="The worker's node name, as given to `tenantkeys worker --hostname` "
    "(default: celery@<this host name>, the worker's own default).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the broker and for the worker's answer.",
)
def worker_ready_command(hostname: str | None, timeout: float) -> None:
    """Exit 0 when this host's worker answers a ping through its broker (readiness probe).

    Exits 1 when the worker does not answer in time, 2 (with a coded line) when the broker
    cannot be reached. Lightweight: loads no tasks and touches no key.
    """
    from tenantkeys.queue.broker import ping_worker

    node = ping_worker(settings(), hostname, timeout)
    if node is None:
        click.echo(f"not ready: no answer within {timeout:g} s", err=True)
        sys.exit(EXIT_NOT_READY)
    click.echo(f"ready: {node}")


@click.command("beat")
@click.option("--loglevel", default="INFO", show_default=True)
def beat_command(loglevel: str) -> None:
    """Run Celery Beat (the rotation sweep schedule); two by mistake are harmless."""
    _exec_celery(["beat", f"--loglevel={loglevel}"])


@click.command("flower")
@click.option("--port", type=PORT, default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
def flower_command(port: int, address: str) -> None:
    """Run Flower (task events show payload hashes and sizes only).

    Basic auth comes from TENANTKEYS_FLOWER_BASIC_AUTH (or Flower's FLOWER_BASIC_AUTH),
    "user:password". Without it Flower refuses any address but loopback (127.0.0.1, ::1):
    its pages list workers and jobs, and it can shut workers down.
    """
    if importlib.util.find_spec("flower") is None:
        raise InvalidRequest("Flower is not installed: pip install 'tenantkeys[flower]'")
    config = settings()
    credentials = config.flower_basic_auth
    if credentials is None and address not in LOOPBACK:
        raise ConfigurationError(
            f"Flower on {address} needs basic auth: set {ENV_PREFIX}FLOWER_BASIC_AUTH="
            "user:password, or bind it to 127.0.0.1",
            code=ErrorCode.CONFIG_MISSING_SETTING,
        )
    ports.require_free(ports.flower(port, address))
    env = environment_with()
    if credentials is not None:
        # Flower reads FLOWER_* variables; never on its command line, where `ps` would show it.
        env["FLOWER_BASIC_AUTH"] = credentials.get_secret_value()
    _exec_celery(["flower", f"--port={port}", f"--address={address}"], env)


@click.command("api")
@click.option("--port", type=PORT, default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def api_command(port: int, host: str) -> None:
    """Run the ops HTTP API (health, admin, JWKS, metrics)."""
    if importlib.util.find_spec("tenantkeys.api") is None:
        raise InvalidRequest(
            "the ops API is not built in this version yet (tenantkeys.api is missing)",
            code=ErrorCode.INVALID_ARGUMENT,
        )
    from tenantkeys.api import serve

    config = settings()
    listening = ports.ops_api(port, host)
    ports.require_free(listening)
    with ports.bind_errors(listening):
        serve(config, host=host, port=port)


@click.command("dev")
@click.option("--flower-port", type=PORT, default=5555, show_default=True)
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option(
    "--stop", "stop", is_flag=True, help="Stop the stack running from this data dir, and exit."
)
def dev_command(flower_port: int, no_flower: bool, stop: bool) -> None:
    """Redis (bundled if none answers), a worker, Beat and Flower, in the foreground.

    One per data dir (TENANTKEYS_DATA_DIR): its PIDs and ports are in <data_dir>/dev.pid.
    Ctrl-C, SIGTERM or SIGHUP (closing the terminal) stops everything it started, Redis last.
    """
    if stop:
        stop_dev(settings(), _say)
        return
    with_flower = not no_flower and importlib.util.find_spec("flower") is not None
    run_dev(settings(), flower_port if with_flower else None, _say)


def _say(line: str) -> None:
    """Print a line; after a hang-up the terminal is gone and writing fails, which is fine."""
    with contextlib.suppress(OSError):
        click.echo(line)


@click.command("demo")
@click.option("--payloads", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def demo_command(payloads: int) -> None:
    """Start the stack, sign payloads through the queue, rotate, verify, print a summary."""
    click.echo(json.dumps(run_demo(settings(), payloads), indent=2))
