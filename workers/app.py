"""The Celery app, built once from :class:`tenantkeys.config.Settings`.

``celery -A workers.app worker`` and ``tenantkeys worker`` both load this module. Migrations
run once in the parent (``worker_init``) before the pool forks; each pool process then builds
its own KeyService, breaker and dead-letter store after the fork (``worker_process_init``),
because sockets, threads and the L1 cache must not be shared across a fork.

Telemetry follows the same split. The parent serves ``/metrics`` on
``TENANTKEYS_WORKER_METRICS_PORT``: the pool's values, merged from ``PROMETHEUS_MULTIPROC_DIR``
(``tenantkeys worker`` sets it before prometheus-client is imported), plus the shared-state
gauges read at scrape time. Tracing starts in each pool process after the fork (in the
parent itself with the solo and threads pools, which run tasks there).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from celery import Celery, signals
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool
from celery.exceptions import SoftTimeLimitExceeded

from tenantkeys import __version__, telemetry
from tenantkeys.admin.status import LazyStateProbe
from tenantkeys.config import Settings, load_settings
from tenantkeys.errors import TenantKeysError
from tenantkeys.jobs.deadletters import DeadLetterStore
from tenantkeys.jobs.runner import JobRunner
from tenantkeys.keys.kms import check_providers
from tenantkeys.keys.runtime import Runtime, build_runtime, redis_client
from tenantkeys.keys.store import KeyStore
from tenantkeys.queue.config import celery_config
from tenantkeys.queue.message_signing import setup_message_signing
from tenantkeys.queue.migrate import migrate_keys
from tenantkeys.queue.tracing import instrument_celery
from tenantkeys.resilience import Resilience, RetryPolicy
from tenantkeys.signing.timestamps import Timestamper
from tenantkeys.telemetry import tracing
from workers.beat import beat_schedule
from workers.fastpath.transport import Transport as FastpathTransport
from workers.producers import QueueScopes

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Celery:
    """A Celery app with the queues, (signed) JSON messages and failure semantics of jobs."""
    app = Celery("tenantkeys", set_as_current=True)
    app.conf.update(celery_config(settings))
    # Workers and Beat publish too (retries, the rotation sweep): they sign with their own key,
    # whose certificate must be in the store like every producer's.
    setup_message_signing(app, settings)
    app.conf.update(
        imports=("workers.tasks",),
        # Our consumer records undecodable and unknown-task messages as dead letters.
        worker_consumer="workers.consumer:DeadLetterConsumer",
        beat_schedule=beat_schedule(settings),
        # In-memory schedule: the default shelve file is pickle, and the sweep is idempotent.
        beat_scheduler="celery.beat:Scheduler",
    )
    # A sentinel:// broker keeps kombu's stock SentinelChannel: the fast path's atomic take
    # guards against a killed worker, which Sentinel's asynchronous replication cannot match on
    # a killed primary; combining the two would fence more of kombu's private members for that
    # (docs/reliability.md#redis-sentinel).
    if settings.effective_broker_url.startswith("redis://"):
        # kombu's Redis transport, many messages per round trip, none lost on a SIGKILL
        # (workers/fastpath/transport.py). Imported above, so an import error shows here; named
        # by its path, because the setting travels as JSON (`celery inspect conf`, Flower).
        transport = FastpathTransport
        app.conf.broker_transport = f"{transport.__module__}:{transport.__qualname__}"
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "fetch_batch": settings.broker_fetch_batch,
        }
    if settings.worker_concurrency is not None:
        app.conf.worker_concurrency = settings.worker_concurrency
    return app


settings = load_settings()
# Fail fast in the parent, before the pool forks: a provider with missing settings stops here.
check_providers(settings)
app = create_app(settings)
#: Which producer may ask for which tenants (TENANTKEYS_PRODUCER_SCOPES_FILE); checked by the
#: consumer in the parent. Read here, so a bad file or scopes without message signing stop
#: the worker before it takes a job.
producer_scopes = QueueScopes.from_settings(settings)


@dataclass
class WorkerProcess:
    """What one pool process holds: one KeyService, its breaker and the dead-letter store."""

    pid: int
    runtime: Runtime
    resilience: Resilience
    deadletters: DeadLetterStore
    runner: JobRunner

    def observe_cache(self) -> None:
        """Publish the size of this process's L1 (a gauge summed over live processes)."""
        telemetry.set_l1_entries(len(self.runtime.service.l1))

    def close(self) -> None:
        self.runtime.close()


_process: WorkerProcess | None = None


def build_process(config: Settings) -> WorkerProcess:
    client = redis_client(config)
    resilience = Resilience.from_settings(config, client)
    runtime = build_runtime(config, migrate=False, guard=resilience.guard)
    deadletters = DeadLetterStore.from_settings(config, client)
    runner = JobRunner(
        runtime.service,
        deadletters,
        RetryPolicy.from_settings(config),
        worker=f"{socket.gethostname()}:{os.getpid()}",
        out_of_time=(SoftTimeLimitExceeded,),
        timestamper=Timestamper.from_settings(config),
    )
    return WorkerProcess(os.getpid(), runtime, resilience, deadletters, runner)


def current() -> WorkerProcess:
    """This process's state; built on first use when no pool signal did it (solo, threads)."""
    global _process  # noqa: PLW0603 - one per process by design
    if _process is None or _process.pid != os.getpid():
        _process = build_process(settings)
    return _process


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _migrate_once(**_: Any) -> None:
    # The parent migrates before forking, so pool processes never race on the schema.
    store = KeyStore.from_url(settings.database_url)
    try:
        store.migrate()
    finally:
        store.close()


@signals.celeryd_after_setup.connect  # type: ignore[untyped-decorator]
def _move_old_keys(**_: Any) -> None:
    # Jobs an earlier version queued under prefixed keys join the queues before the consumer
    # starts (tenantkeys.queue.migrate). After logging is set up, so the counts are seen.
    try:
        moved = migrate_keys(settings)
    except TenantKeysError as exc:
        log.warning(
            "%s: jobs under the old prefixed keys were not moved (%s); "
            "run `tenantkeys queue migrate-keys` once the broker answers",
            exc.code,
            exc.message,
        )
        return
    log.info(
        "old prefixed keys (%s:): moved %d queued job(s), %d unacked record(s), %d result(s)",
        moved.prefix,
        sum(moved.queued.values()),
        moved.unacked,
        moved.results,
    )


@dataclass
class _Exporter:
    """The parent's ``/metrics`` server and the state probe behind it."""

    server: WSGIServer
    probe: LazyStateProbe


_exporter: _Exporter | None = None


def runs_tasks_in_parent(worker: Any) -> bool:
    """True for the pools without child processes (solo, threads): no fork, no pool signals."""
    try:
        pool = get_implementation(getattr(worker, "pool_cls", None) or app.conf.worker_pool)
    except Exception:  # an unknown pool name fails later, in Celery, with its own message
        return False
    return not (isinstance(pool, type) and issubclass(pool, TaskPool))


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _start_telemetry(sender: Any = None, **_: Any) -> None:
    in_parent = runs_tasks_in_parent(sender)
    if in_parent:
        _start_tracing()
    directory = settings.prometheus_multiproc_dir
    if directory is not None:
        telemetry.reset_multiproc_dir(directory)
    telemetry.prime(settings.kms_provider)
    telemetry.set_build_info(__version__, settings.kms_provider)
    port = settings.worker_metrics_port
    if not port:
        return
    if directory is None and not in_parent:
        # The pool's values would stay in each child: an exporter would show zeros forever.
        log.error(
            "worker metrics not served: PROMETHEUS_MULTIPROC_DIR is unset, so the pool "
            "processes' metrics cannot be merged; start workers with `tenantkeys worker` "
            "(it sets the variable) or set it to an empty directory"
        )
        return
    _serve_metrics(port, directory)


def _serve_metrics(port: int, directory: Any) -> None:
    global _exporter  # noqa: PLW0603 - one exporter per worker
    probe = LazyStateProbe(settings)
    try:
        server = telemetry.start_worker_exporter(port, directory, probe)
    except OSError as exc:  # never stop a worker over its metrics
        log.warning(
            "worker metrics not served: port %d unavailable (%s); set "
            "TENANTKEYS_WORKER_METRICS_PORT to a free port, or 0 to turn the exporter off",
            port,
            exc.strerror or type(exc).__name__,
        )
        return
    _exporter = _Exporter(server, probe)
    log.info("worker metrics on :%d/metrics", port)


def _start_tracing() -> None:
    tracing.setup_tracing("tenantkeys-worker")
    instrument_celery()


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_telemetry(**_: Any) -> None:
    global _exporter  # noqa: PLW0603
    if _exporter is not None:
        _exporter.server.shutdown()
        _exporter.server.server_close()
        _exporter.probe.close()
        _exporter = None
    tracing.shutdown_tracing()


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _build_after_fork(**_: Any) -> None:
    global _process, _exporter  # noqa: PLW0603
    if _exporter is not None:
        # The parent's listening socket: a child holding it would keep the port bound after
        # the parent died. Only closed here; shutdown() would wait for a thread not forked.
        _exporter.server.socket.close()
        _exporter = None
    _start_tracing()
    _process = None  # never reuse the parent's sockets after a fork
    current()


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _close(pid: int | None = None, **_: Any) -> None:
    if _process is not None and _process.pid == os.getpid():
        _process.close()
    if settings.prometheus_multiproc_dir is not None:
        telemetry.process_exited(pid or os.getpid(), settings.prometheus_multiproc_dir)
    tracing.shutdown_tracing()  # flush: pool processes end with os._exit, skipping atexit
