"""``tenantkeys worker | worker-ready | beat | flower | api | dev | demo``: the processes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

from tenantkeys import jobs
from tenantkeys.cli.context import settings
from tenantkeys.cli.stack import LocalStack
from tenantkeys.config import ENV_PREFIX, Settings, environment_with, load_settings
from tenantkeys.errors import ConfigurationError, ErrorCode, InvalidRequest, TenantKeysError

DEMO_TENANTS = ("acme", "globex", "initech")
#: Addresses Flower may bind without basic auth: reachable from this machine only.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
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
    os.execve(sys.executable, command, env if env is not None else dict(os.environ))  # noqa: S606


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
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


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
@click.option("--port", type=int, default=5555, show_default=True)
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
    env = dict(os.environ)
    if credentials is not None:
        # Flower reads FLOWER_* variables; never on its command line, where `ps` would show it.
        env["FLOWER_BASIC_AUTH"] = credentials.get_secret_value()
    _exec_celery(["flower", f"--port={port}", f"--address={address}"], env)


@click.command("api")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def api_command(port: int, host: str) -> None:
    """Run the ops HTTP API (health, admin, JWKS, metrics)."""
    if importlib.util.find_spec("tenantkeys.api") is None:
        raise InvalidRequest(
            "the ops API is not built in this version yet (tenantkeys.api is missing)",
            code=ErrorCode.INVALID_ARGUMENT,
        )
    from tenantkeys.api import serve

    serve(settings(), host=host, port=port)


@click.command("dev")
@click.option("--flower-port", type=int, default=5555, show_default=True)
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
def dev_command(flower_port: int, no_flower: bool) -> None:
    """Redis (bundled if none answers), a worker, Beat and Flower, in the foreground."""
    base = settings()
    stack = LocalStack(base.data_dir / "logs")
    _stop_on_sigterm()
    try:
        url = stack.ensure_redis(base)
        stack.env[f"{ENV_PREFIX}REDIS_URL"] = url
        stack.start("worker", "worker", "--loglevel=INFO")
        stack.start("beat", "beat", "--loglevel=INFO")
        if not no_flower and importlib.util.find_spec("flower") is not None:
            stack.start("flower", "flower", f"--port={flower_port}")
            click.echo(f"flower: http://127.0.0.1:{flower_port}")
        click.echo(f"redis: {url}\nlogs: {stack.log_dir}\nservice running; Ctrl-C stops it")
        while True:
            exited = stack.failed()
            if exited is not None:
                raise TenantKeysError(f"the {exited} process exited; see {stack.log_dir}")
            time.sleep(1.0)
    except KeyboardInterrupt:
        click.echo("stopping ...", err=True)
    finally:
        stack.stop()


def _stop_on_sigterm() -> None:
    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@click.command("demo")
@click.option("--payloads", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def demo_command(payloads: int) -> None:
    """Start the stack, sign payloads through the queue, rotate, verify, print a summary."""
    base = settings()
    workdir = Path(tempfile.mkdtemp(prefix="tenantkeys-demo-"))
    stack = LocalStack(workdir / "logs")
    _stop_on_sigterm()
    demo: Settings | None = None
    try:
        url = stack.ensure_redis(base)
        overrides = _demo_settings(workdir, url)
        stack.env.update({ENV_PREFIX + k.upper(): str(v) for k, v in overrides.items()})
        demo = load_settings(**overrides)
        stack.start("worker", "worker", "--loglevel=WARNING")
        stack.start("beat", "beat", "--loglevel=WARNING")
        summary = _run_demo(demo, payloads, stack)
    finally:
        stack.stop()
        if demo is not None:
            _forget_prefix(demo)
        shutil.rmtree(workdir, ignore_errors=True)
    click.echo(json.dumps(summary, indent=2))


def _forget_prefix(demo: Settings) -> None:
    """Delete every Redis key the demo wrote (all under its private prefix)."""
    from tenantkeys.keys.runtime import redis_available, redis_client

    client = redis_client(demo)
    try:
        if redis_available(client):
            for key in client.scan_iter(match=f"{demo.redis_prefix}:*", count=1000):
                client.delete(key)
    finally:
        client.close()


def _demo_settings(workdir: Path, redis_url: str) -> dict[str, Any]:
    """A private store, master key and Redis prefix, so the demo never touches real data."""
    return {
        "environment": "development",
        "kms_provider": "local",
        "database_url": f"sqlite:///{workdir / 'keys.db'}",
        "local_master_key_file": workdir / "master.key",
        "dead_letter_key_file": workdir / "deadletter.key",
        "data_dir": workdir,
        "redis_url": redis_url,
        "broker_url": redis_url,
        "result_backend": redis_url,
        "redis_prefix": f"tkdemo-{uuid.uuid4().hex[:8]}",
    }


def _run_demo(demo: Settings, count: int, stack: LocalStack) -> dict[str, Any]:
    from tenantkeys.client import SigningClient
    from tenantkeys.keys.runtime import build_runtime

    with SigningClient.from_settings(demo) as client:
        # The first job also waits for the worker to start.
        for tenant in DEMO_TENANTS:
            client.create_keys(tenant, ["signing"], timeout=120)
        data = [
            (DEMO_TENANTS[i % 3], json.dumps({"invoice": i, "amount": i * 7}).encode())
            for i in range(count)
        ]
        started = time.perf_counter()
        pending = [client.submit(tenant, payload) for tenant, payload in data]
        signatures = [p.result(timeout=120) for p in pending]
        elapsed = time.perf_counter() - started
        rotation = client.rotate_key(DEMO_TENANTS[0], "signing")
        after = client.sign(DEMO_TENANTS[0], b"signed after the rotation", timeout=60)
    if stack.failed():
        raise TenantKeysError(f"a demo process exited early; see {stack.log_dir}")
    runtime = build_runtime(demo, migrate=False)
    try:
        for (tenant, payload), signature in zip(data, signatures, strict=True):
            runtime.service.verify(tenant, payload, signature.jws)
        runtime.service.verify(DEMO_TENANTS[0], b"signed after the rotation", after.jws)
    finally:
        runtime.close()
    old_kid = next(
        s.kid for (t, _), s in zip(data, signatures, strict=True) if t == DEMO_TENANTS[0]
    )
    if not rotation["rotated"] or old_kid == after.kid:
        raise TenantKeysError("the demo rotation did not produce a new key")
    digest = hashlib.sha256("".join(s.jws for s in signatures).encode()).hexdigest()[:16]
    return {
        "tenants": list(DEMO_TENANTS),
        "signed_through_queue": len(signatures),
        "seconds": round(elapsed, 2),
        "jobs_per_second": round(len(signatures) / elapsed, 1),
        "rotated": {"tenant": DEMO_TENANTS[0], "old_kid": old_kid, "new_kid": after.kid},
        "verified": len(signatures) + 1,
        "signatures_digest": digest,
        "result": "ok",
    }
