"""What the API process holds: settings, tokens, the runtime and the readers built on it.

The runtime is built at start-up; if the database or Redis is down then, the process still
starts (liveness stays green, readiness names the part) and builds it on the next request that
needs it. A configuration error stops the start-up instead: there is nothing to wait for.

KMS calls of the API go through the same shared circuit breaker as the workers', so failing
health checks count toward opening it, and a half-open breaker is probed by them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tenantkeys import __version__, telemetry
from tenantkeys.admin.checks import KmsHealthCache, validate_configured
from tenantkeys.admin.status import StatusSources, make_state_probe
from tenantkeys.api.auth import TokenTable
from tenantkeys.config import Settings
from tenantkeys.errors import ConfigurationError
from tenantkeys.jobs.deadletters import DeadLetterStore
from tenantkeys.jobs.scopes import ProducerScopes
from tenantkeys.keys.runtime import Runtime, build_runtime, redis_client
from tenantkeys.keys.store import KeyStore
from tenantkeys.queue.broker import BrokerProbe
from tenantkeys.resilience import Resilience

if TYPE_CHECKING:
    from tenantkeys.api.front_door import FrontDoor
    from tenantkeys.client import SigningClient

log = logging.getLogger(__name__)


class ApiServices:
    """Lazily built, thread-safe holders of everything the routes use; :meth:`close` ends them."""

    def __init__(
        self, settings: Settings, *, runtime_factory: Callable[[], Runtime] | None = None
    ) -> None:
        self.settings = settings
        self.tokens = TokenTable(settings.admin_token_sha256, settings.reader_token_sha256)
        #: The front door's producers; None (front door off) without a scopes file.
        self.scopes = ProducerScopes.from_settings(settings)
        self._front_door: FrontDoor | None = None
        self.redis = redis_client(settings)
        self.resilience = Resilience.from_settings(settings, self.redis)
        self.broker = BrokerProbe.from_settings(settings)
        self._runtime_factory = runtime_factory or self._build_runtime
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._sources: StatusSources | None = None
        self._store: KeyStore | None = None
        self._client: SigningClient | None = None
        self.kms_health = KmsHealthCache(
            lambda: self.runtime().service.providers.current,
            ttl=settings.kms_health_cache_seconds,
            deadline=settings.health_check_timeout_seconds,
            name=settings.kms_provider,
        )

    def _build_runtime(self) -> Runtime:
        return build_runtime(self.settings, guard=self.resilience.guard)

    def start(self) -> None:
        """Build what can be built now; only configuration errors stop the process."""
        telemetry.set_build_info(__version__, self.settings.kms_provider)
        telemetry.prime(self.settings.kms_provider)
        try:
            self.runtime()
        except ConfigurationError:
            raise
        except Exception as exc:  # a dependency is down: serve, and say so in readiness
            log.warning("runtime not built at start-up (%s); retrying on demand", exc)

    def runtime(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = self._runtime_factory()
            return self._runtime

    def store(self) -> KeyStore:
        """The runtime's key store, or a bare one (for readiness) while the runtime is missing."""
        with self._lock:
            if self._runtime is not None:
                return self._runtime.service.store
            if self._store is None:
                self._store = KeyStore.from_url(self.settings.database_url)
            return self._store

    def sources(self) -> StatusSources:
        runtime = self.runtime()
        with self._lock:
            if self._sources is None:
                deadletters = self._deadletters_or_none()
                self._sources = StatusSources.of(
                    runtime,
                    resilience=self.resilience,
                    deadletters=deadletters,
                    broker=self.broker,
                )
            return self._sources

    def _deadletters_or_none(self) -> DeadLetterStore | None:
        try:
            return DeadLetterStore.from_settings(self.settings, self.redis)
        except ConfigurationError as exc:
            log.warning("dead-letter store unavailable: %s", exc.one_line())
            return None

    def deadletters(self) -> DeadLetterStore:
        store = self.sources().deadletters
        if store is None:  # raises the configuration error with its message
            return DeadLetterStore.from_settings(self.settings, self.redis)
        return store

    def validate_kms(self) -> dict[str, Any]:
        """Validate the configured provider (bypassing the breaker)."""
        return validate_configured(self.runtime().service.providers.current).to_dict()

    def sender(self) -> SigningClient:
        """The producer dead-letter replays publish through (built on first use)."""
        with self._lock:
            if self._client is None:
                from tenantkeys.client import SigningClient

                self._client = SigningClient.from_settings(self.settings)
            return self._client

    def front_door(self) -> FrontDoor | None:
        """The HTTP front door (built on first use), or None when no scopes file is set."""
        if self.scopes is None:
            return None
        sender = self.sender()
        with self._lock:
            if self._front_door is None:
                from tenantkeys.api.front_door import FrontDoor, JobOwners

                owners = JobOwners(
                    self.redis, self.settings.redis_prefix, self.settings.result_expires_seconds
                )
                self._front_door = FrontDoor(self.settings, self.scopes, owners, sender)
            return self._front_door

    def render_metrics(self) -> bytes:
        probe: telemetry.StateProbe | None = None
        try:
            probe = make_state_probe(self.sources())
        except Exception as exc:  # no runtime: the event metrics still export
            log.warning("state gauges omitted: %s", type(exc).__name__)
        return telemetry.render_metrics(self.settings.prometheus_multiproc_dir, probe)

    def close(self) -> None:
        self.kms_health.close()
        with self._lock:
            runtime, store, client = self._runtime, self._store, self._client
            self._runtime = self._store = self._client = self._sources = None
            self._front_door = None
        for closer in (
            runtime.close if runtime else None,
            store.close if store else None,
            client.close if client else None,
            self.broker.close,
            self.redis.close,
        ):
            if closer is not None:
                try:
                    closer()
                except Exception:  # closing must close the rest
                    log.warning("error while closing the API services", exc_info=True)
