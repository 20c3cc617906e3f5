"""Circuit breaker per KMS provider (state shared in Redis) and the retry policy.

Every worker process wraps its providers with :meth:`Resilience.guard`; the breaker's state
lives in Redis under ``{redis_prefix}:breaker:{provider}``, so when one process trips it, every
process sees it open and stops calling the KMS. Only :class:`~tenantkeys.errors.TransientKmsError`
counts as a failure: a permission error says nothing about the KMS being down.

No Celery here. What a job does with an error is the error's own ``action`` (the table in
:mod:`tenantkeys.errors`); :func:`retry_delay` says how long to wait before a retry.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pybreaker
import redis

from tenantkeys import errors
from tenantkeys.config import Settings
from tenantkeys.errors import Action, CircuitOpenError, TenantKeysError, TransientKmsError
from tenantkeys.providers import Context, DataKey, KeyDescription, KmsProvider

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog), capped."""

    max_retries: int = 5
    base_seconds: float = 1.0
    cap_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_max, settings.retry_base_seconds, settings.retry_cap_seconds)

    def delay(self, attempt: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        """Seconds before retry number ``attempt`` (0-based): uniform in [0, min(cap, base*2^n)].

        Full jitter spreads a burst of failed jobs so they do not come back in lockstep.
        """
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, min(attempt, 62)))
        return rng(0.0, ceiling)

    def should_retry(self, exc: BaseException, retries_done: int) -> bool:
        return classify(exc) == "retry" and retries_done < self.max_retries


def retry_delay(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    rng: Callable[[float, float], float] = random.uniform,
) -> float:
    """Backoff of retry ``attempt`` (0-based): exponential with full jitter, capped."""
    return RetryPolicy(0, base, cap).delay(attempt, rng)


def classify(exc: BaseException) -> Action:
    """What a job does with ``exc``: its :attr:`~tenantkeys.errors.TenantKeysError.action`.

    ``retry`` (transient), ``reject`` (bad input) or ``dead_letter`` (everything else,
    unexpected errors included: an operator must look).
    """
    return errors.as_error(exc).action


def as_error(exc: BaseException) -> TenantKeysError:
    """``exc`` as a TenantKeysError (unexpected errors become ``TK-INTERNAL``, class name only)."""
    return errors.as_error(exc, "in a worker; see the worker log")


def _not_transient_kms(exc: BaseException) -> bool:
    # pybreaker "exclude" predicate: True means "do not count this as a failure".
    return not isinstance(exc, TransientKmsError)


class Resilience:
    """One breaker per provider name, all sharing their state through one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._fail_max = fail_max
        self._reset_timeout = reset_timeout
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> Resilience:
        return cls(
            client,
            settings.redis_prefix,
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_timeout_seconds,
        )

    def namespace(self, provider: str) -> str:
        return f"{self._prefix}:breaker:{provider}"

    def breaker(self, provider: str) -> pybreaker.CircuitBreaker:
        """The breaker of ``provider`` (created on first use; state in Redis)."""
        found = self._breakers.get(provider)
        if found is None:
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, self._client, namespace=self.namespace(provider)
            )
            found = pybreaker.CircuitBreaker(
                fail_max=self._fail_max,
                reset_timeout=self._reset_timeout,
                exclude=[_not_transient_kms],
                state_storage=storage,
                name=provider,
            )
            self._breakers[provider] = found
        return found

    def state(self, provider: str) -> str:
        """``closed``, ``open`` or ``half-open`` as every process sees it."""
        return str(self.breaker(provider).current_state)

    def call(self, provider: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` through the breaker of ``provider``; :class:`CircuitOpenError` when open.

        The breaker fails open: when Redis (its shared state) is unreachable, the KMS call is
        made unguarded rather than refused, so a Redis outage never stops signing.
        """
        outcome: list[T] = []

        def attempt() -> T:
            value = fn()
            outcome.append(value)
            return value

        try:
            result: T = self.breaker(provider).call(attempt)
        except pybreaker.CircuitBreakerError as exc:
            raise CircuitOpenError(
                f"the circuit breaker for the {provider!r} KMS is open after repeated transient "
                f"failures; calls resume after {self._reset_timeout:g} s",
                provider=provider,
            ) from exc
        except redis.RedisError as exc:
            self._breakers.pop(provider, None)  # rebuilt (and re-synced) once Redis is back
            if outcome:  # the KMS answered; only recording the success failed
                return outcome[0]
            log.warning(
                "circuit breaker state unavailable (%s); calling the %s KMS unguarded",
                type(exc).__name__,
                provider,
            )
            return fn()
        return result

    def guard(self, provider: KmsProvider) -> KmsProvider:
        """``provider`` behind its breaker; pass as ``guard=`` to ``build_runtime``."""
        return GuardedProvider(provider, self)


class GuardedProvider(KmsProvider):
    """A provider whose every call goes through the shared circuit breaker."""

    def __init__(self, inner: KmsProvider, resilience: Resilience) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self._resilience = resilience

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        return self._resilience.call(self.name, lambda: self.inner.encrypt(plaintext, context))

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        return self._resilience.call(self.name, lambda: self.inner.decrypt(ciphertext, context))

    def generate_data_key(self, context: Context) -> DataKey:
        return self._resilience.call(self.name, lambda: self.inner.generate_data_key(context))

    def describe(self) -> KeyDescription:
        return self._resilience.call(self.name, self.inner.describe)

    def close(self) -> None:
        self.inner.close()


__all__ = [
    "Action",
    "GuardedProvider",
    "Resilience",
    "RetryPolicy",
    "as_error",
    "classify",
    "retry_delay",
]
