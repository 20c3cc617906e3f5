"""The ``/metrics`` exposition: event metrics of every process, plus shared state read at scrape.

Shared state (queue depth, dead letters, breaker, key ages, last sweep) lives in Redis, the
broker and the key store. It is read at scrape time through a :data:`StateProbe`, so every
exporter reports the same fresh value; a gauge set by whichever process looked last would go
stale on the other hosts and keep alerts firing after recovery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, generate_latest, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tenantkeys.telemetry.metrics import (
    BREAKER_STATE_VALUES,
    PROVIDERS,
    BreakerState,
    Queue,
    check_label,
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceState:
    """Shared state read at scrape time; ``None`` (or a missing key) means unknown, not exported."""

    last_sweep_timestamp: float | None = None
    keys_overdue_rotation: int | None = None
    oldest_active_key_age_seconds: float | None = None
    dead_letter_depth: int | None = None
    dead_letter_oldest_age_seconds: float | None = None
    breaker_states: Mapping[str, BreakerState] = field(default_factory=dict)
    queue_depths: Mapping[Queue, int] = field(default_factory=dict)


#: Reads Redis, the broker and the key store; must answer in well under the scrape timeout.
StateProbe = Callable[[], ServiceState]

#: name -> help of the gauges :class:`StateCollector` exports.
STATE_GAUGES: Final[Mapping[str, str]] = {
    "tenantkeys_rotation_last_sweep_timestamp_seconds": "Unix time the last rotation sweep ended.",
    "tenantkeys_keys_overdue_rotation": "Active keys past their rotate_after time.",
    "tenantkeys_oldest_active_key_age_seconds": "Age of the oldest active key.",
    "tenantkeys_dead_letter_depth": "Entries in the dead-letter store.",
    "tenantkeys_dead_letter_oldest_age_seconds": "Age of the oldest dead letter; 0 when empty.",
    "tenantkeys_circuit_breaker_state": "KMS circuit breaker: 0 closed, 1 half-open, 2 open.",
    "tenantkeys_queue_depth": "Messages waiting in a broker queue.",
}


class StateCollector(Collector):
    """Exports a :class:`ServiceState` as gauges; a failing probe exports none of them."""

    def __init__(self, probe: StateProbe) -> None:
        self._probe = probe

    def collect(self) -> Iterable[Metric]:
        # A broken probe (Redis down, a bad label value) must not take the event metrics down.
        try:
            return _state_metrics(self._probe())
        except Exception:
            _log.warning("state probe failed; shared-state metrics omitted", exc_info=True)
            return []


def _state_metrics(state: ServiceState) -> list[Metric]:
    scalars = {
        "tenantkeys_rotation_last_sweep_timestamp_seconds": state.last_sweep_timestamp,
        "tenantkeys_keys_overdue_rotation": state.keys_overdue_rotation,
        "tenantkeys_oldest_active_key_age_seconds": state.oldest_active_key_age_seconds,
        "tenantkeys_dead_letter_depth": state.dead_letter_depth,
        "tenantkeys_dead_letter_oldest_age_seconds": state.dead_letter_oldest_age_seconds,
    }
    metrics: list[Metric] = [
        GaugeMetricFamily(name, STATE_GAUGES[name], value=value)
        for name, value in scalars.items()
        if value is not None
    ]
    name = "tenantkeys_circuit_breaker_state"
    breaker = GaugeMetricFamily(name, STATE_GAUGES[name], labels=["provider"])
    for provider, breaker_state in state.breaker_states.items():
        value = BREAKER_STATE_VALUES[check_label("state", breaker_state, BreakerState)]
        breaker.add_metric([check_label("provider", provider, PROVIDERS)], value)
    name = "tenantkeys_queue_depth"
    queues = GaugeMetricFamily(name, STATE_GAUGES[name], labels=["queue"])
    for queue, depth in state.queue_depths.items():
        queues.add_metric([check_label("queue", queue, Queue)], depth)
    return [*metrics, breaker, queues]


class _Exposition(Collector):
    """This process's metrics, or all processes' in multiprocess mode, plus shared state."""

    def __init__(
        self, multiproc_dir: str | os.PathLike[str] | None, probe: StateProbe | None
    ) -> None:
        self._events: Collector = (
            REGISTRY
            if multiproc_dir is None
            else multiprocess.MultiProcessCollector(None, path=os.fspath(multiproc_dir))  # type: ignore[no-untyped-call]
        )
        self._state = None if probe is None else StateCollector(probe)

    def collect(self) -> Iterable[Metric]:
        yield from self._events.collect()
        if self._state is not None:
            yield from self._state.collect()


def render_metrics(
    multiproc_dir: str | os.PathLike[str] | None, state_probe: StateProbe | None = None
) -> bytes:
    """The ``/metrics`` body (content type :data:`CONTENT_TYPE`).

    Pass the ``PROMETHEUS_MULTIPROC_DIR`` in effect: with it, the values of every process
    writing there are merged; without it, this process's values are shown.
    """
    return generate_latest(_Exposition(multiproc_dir, state_probe))


def start_worker_exporter(
    port: int,
    multiproc_dir: str | os.PathLike[str] | None,
    state_probe: StateProbe | None = None,
    addr: str = "0.0.0.0",  # noqa: S104 - Prometheus scrapes the worker from outside its pod
) -> WSGIServer:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; ``shutdown()`` stops it.

    Start it in the worker's parent process (``worker_init``), not in the pool children.
    """
    server, _thread = start_http_server(
        port, addr, registry=_Exposition(multiproc_dir, state_probe)
    )
    return server


def reset_multiproc_dir(multiproc_dir: str | os.PathLike[str]) -> None:
    """Delete the value files of a previous run; call in the worker parent before the pool forks.

    This process's own files are kept: it opened them when this module was imported, and
    deleting an open file would silently drop what it records from then on.
    """
    path = Path(multiproc_dir)
    path.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for db in path.glob("*.db"):
        if not db.name.endswith(own):
            db.unlink()


def process_exited(pid: int, multiproc_dir: str | os.PathLike[str]) -> None:
    """Drop a dead pool child's ``live*`` gauge values (``worker_process_shutdown``)."""
    multiprocess.mark_process_dead(pid, os.fspath(multiproc_dir))  # type: ignore[no-untyped-call]
