"""The providers a KeyService talks to: the configured one, plus any a stored row names.

Here settings meet providers: config keeps each provider's raw ``TENANTKEYS_<NAME>_*`` values,
:func:`check_providers` validates them with the provider's own model at start-up, and
:meth:`ProviderSet.from_settings` builds each provider from them on first use.

Every call goes through :class:`MeteredProvider`, which traces, times and counts it by provider,
operation and outcome (the KMS metrics and the cost estimate), and keeps per-instance counts
that tests and benchmarks read.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from tenantkeys import telemetry
from tenantkeys.config import KMS_PROVIDERS, Settings
from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.providers import (
    CommonSettings,
    Context,
    DataKey,
    KeyDescription,
    KmsProvider,
    ProviderSettings,
    build_provider,
    provider_class,
    provider_settings,
)
from tenantkeys.telemetry import KmsOperation

T = TypeVar("T")


class MeteredProvider(KmsProvider):
    """Wraps a provider: counts and times every call; the counts are what tests assert on."""

    def __init__(self, inner: KmsProvider) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def _call(self, operation: KmsOperation, fn: Callable[[], T]) -> T:
        with self._lock:
            self.calls[operation] += 1
        with telemetry.kms_call(self.name, operation):
            return fn()

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        return self._call("encrypt", lambda: self.inner.encrypt(plaintext, context))

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        return self._call("decrypt", lambda: self.inner.decrypt(ciphertext, context))

    def generate_data_key(self, context: Context) -> DataKey:
        return self._call("generate_data_key", lambda: self.inner.generate_data_key(context))

    def describe(self) -> KeyDescription:
        return self._call("describe", self.inner.describe)

    def close(self) -> None:
        self.inner.close()

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())


def common_settings(settings: Settings) -> CommonSettings:
    """What every provider takes from the service's own settings."""
    return CommonSettings(
        timeout=settings.kms_timeout_seconds, production=settings.environment == "production"
    )


def check_providers(settings: Settings) -> dict[str, ProviderSettings]:
    """Validate the settings of every configured provider (current, then previous).

    The start-up check config cannot make, since it never imports providers: an incomplete
    provider (the ``TK-CONFIG-MISSING-SETTING`` error names its variables and setup page), an
    invalid value, a missing SDK. Every start-up path calls it after :func:`load_settings`;
    ``build_runtime`` and ``tenantkeys config check`` do. Returns the validated settings.
    """
    return {
        name: provider_settings(name, settings.provider_values(name))
        for name in settings.configured_providers
    }


def setting_variables() -> frozenset[str]:
    """Every variable the service reads: config's own and every provider's (imports them all)."""
    own = [provider_class(name).settings_model.variables() for name in KMS_PROVIDERS]
    return frozenset(Settings.variables()).union(*own)


class ProviderSet:
    """Builds providers by name on first use.

    ``current`` wraps new keys. A stored row may name another provider (during a rewrap, or
    after a migration): it is built from its own settings, never replaced by another one.
    """

    def __init__(
        self,
        current: str,
        build: Callable[[str], KmsProvider],
        guard: Callable[[KmsProvider], KmsProvider] | None = None,
    ) -> None:
        self.current_name = current
        self._build = build
        #: Wraps each raw provider before metering (the circuit breaker, in workers).
        self._guard = guard
        self._providers: dict[str, MeteredProvider] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, guard: Callable[[KmsProvider], KmsProvider] | None = None
    ) -> ProviderSet:
        """The configured providers, each built from its own settings when first used."""
        common = common_settings(settings)

        def build(name: str) -> KmsProvider:
            return build_provider(name, settings.provider_values(name), common)

        return cls(settings.kms_provider, build, guard)

    @classmethod
    def of(cls, *providers: KmsProvider) -> ProviderSet:
        """A set of ready-made providers; the first is current (tests, tools)."""
        made = cls(providers[0].name, _not_configured)
        for provider in providers:
            made.add(provider)
        return made

    def add(self, provider: KmsProvider) -> MeteredProvider:
        if isinstance(provider, MeteredProvider):
            metered = provider
        else:
            guarded = self._guard(provider) if self._guard is not None else provider
            metered = MeteredProvider(guarded)
        with self._lock:
            self._providers[provider.name] = metered
        return metered

    @property
    def current(self) -> MeteredProvider:
        return self.get(self.current_name)

    def get(self, name: str) -> MeteredProvider:
        with self._lock:
            found = self._providers.get(name)
        if found is not None:
            return found
        return self.add(self._build(name))

    def total_calls(self) -> int:
        with self._lock:
            return sum(p.total_calls for p in self._providers.values())

    def close(self) -> None:
        with self._lock:
            providers = list(self._providers.values())
            self._providers.clear()
        for provider in providers:
            provider.close()


def _not_configured(name: str) -> KmsProvider:
    raise ConfigurationError(
        f"a stored key names provider {name!r}, which is not configured",
        code=ErrorCode.CONFIG_MISSING_SETTING,
    )
