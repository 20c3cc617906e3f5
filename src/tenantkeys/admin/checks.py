"""The checks behind the ops API and ``tenantkeys admin``: KMS validation, health, readiness.

No FastAPI here, so the CLI runs the very same checks in-process.

* :func:`validate_provider` -- generate, encrypt, decrypt, describe, and a decrypt under the
  wrong context that must fail; each step with pass/fail, latency and a remedy.
* :class:`KmsHealthCache` -- the provider's health, cached briefly and bounded in time.
* :func:`check_redis`, :func:`check_database`, :func:`check_broker` -- readiness parts.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import redis
import sqlalchemy as sa

from tenantkeys.errors import (
    ErrorCode,
    IntegrityError,
    KmsConfigError,
    TenantKeysError,
    TransientKmsError,
    as_error,
)
from tenantkeys.keys.kms import MeteredProvider
from tenantkeys.keys.store import KeyStore
from tenantkeys.providers import DataKey, HealthReport, KmsProvider
from tenantkeys.resilience import GuardedProvider

T = TypeVar("T")
#: The steps of :func:`validate_provider`, in the order they run.
VALIDATE_STEPS = ("generate", "encrypt", "decrypt", "describe", "wrong_context_decrypt")
#: The context keys a real key uses, so IAM conditions on the encryption context still match.
_TENANT = "tenantkeys-validate"


@dataclass(frozen=True)
class StepResult:
    """One validation step. ``remedy`` says what to change when ``ok`` is false."""

    step: str
    ok: bool
    latency_ms: float
    error_code: str | None = None
    message: str | None = None
    remedy: str | None = None
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ValidationReport:
    """Every step of a validation run; ``ok`` only when all passed."""

    provider: str
    key_id: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def failed(self) -> list[str]:
        return [step.step for step in self.steps if not step.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "provider": self.provider,
            "key_id": self.key_id,
            "failed_steps": self.failed,
            "steps": [step.to_dict() for step in self.steps],
        }


def remedy_for(exc: TenantKeysError) -> str:
    """What an operator does about ``exc``; a permission error's message names the permission."""
    return exc.remedy


def _failure(step: str, started: float, exc: BaseException) -> StepResult:
    # An SDK error the provider failed to map shows its class name only, no details.
    error = as_error(exc, "from the provider")
    return StepResult(step, False, _ms(started), str(error.code), error.message, error.remedy)


def _run(step: str, fn: Callable[[], T]) -> tuple[StepResult, T | None]:
    started = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:  # every failure is a step result, never an exception
        return _failure(step, started, exc), None
    return StepResult(step, True, _ms(started)), value


def _skipped(step: str, why: str) -> StepResult:
    return StepResult(step, False, 0.0, message=f"skipped: {why}", skipped=True)


def validate_provider(provider: KmsProvider) -> ValidationReport:
    """Exercise ``provider`` end to end with a throwaway context; never raises.

    Plaintext probes are random and wiped after use; nothing secret is reported.
    """
    context = {
        "tenant_id": _TENANT,
        "purpose": "signing",
        "version": "0",
        "kid": f"validate-{secrets.token_hex(8)}",
    }
    wrong = {**context, "tenant_id": f"{_TENANT}-other"}
    probe = bytearray(os.urandom(32))
    steps: list[StepResult] = []
    result, data_key = _run("generate", lambda: _generated(provider.generate_data_key(context)))
    steps.append(result)
    result, wrapped = _run("encrypt", lambda: provider.encrypt(bytes(probe), context))
    steps.append(result)
    # Decrypt what encrypt made; failing that, the generated key's wrapped form.
    sample: tuple[bytes, bytearray] | None = None
    if wrapped is not None:
        sample = (wrapped, probe)
    elif data_key is not None:
        sample = (data_key.wrapped, data_key.plaintext)
    try:
        if sample is None:
            steps.append(_skipped("decrypt", "generate and encrypt both failed"))
        else:
            steps.append(_run("decrypt", lambda: _round_trip(provider, sample, context))[0])
        steps.append(_run("describe", lambda: _enabled(provider))[0])
        if sample is None:
            steps.append(_skipped("wrong_context_decrypt", "no ciphertext to try"))
        else:
            steps.append(_wrong_context(provider, sample[0], wrong))
    finally:
        probe[:] = bytes(len(probe))
        if data_key is not None:
            data_key.wipe()
    return ValidationReport(provider.name, provider.key_id, steps)


def unguarded(provider: KmsProvider) -> KmsProvider:
    """The raw provider under the metering and circuit-breaker wrappers."""
    while isinstance(provider, MeteredProvider | GuardedProvider):
        provider = provider.inner
    return provider


def validate_configured(provider: KmsProvider) -> ValidationReport:
    """Validate the raw provider behind ``provider``, metered but not through the breaker.

    An open breaker would fail every step without a KMS call; an operator wants the truth.
    """
    return validate_provider(MeteredProvider(unguarded(provider)))


def _generated(data_key: DataKey) -> DataKey:
    if len(data_key.plaintext) != 32:
        data_key.wipe()
        raise IntegrityError(f"the provider made a {len(data_key.plaintext)}-byte data key")
    return data_key


def _round_trip(
    provider: KmsProvider, sample: tuple[bytes, bytearray], context: dict[str, str]
) -> None:
    opened = provider.decrypt(sample[0], context)
    try:
        if not secrets.compare_digest(bytes(opened), bytes(sample[1])):
            raise IntegrityError("decrypt returned other bytes than were encrypted")
    finally:
        opened[:] = bytes(len(opened))


def _enabled(provider: KmsProvider) -> None:
    if not provider.describe().enabled:
        raise KmsConfigError(
            f"KMS key {provider.key_id} is disabled; enable it or configure an enabled key",
            code=ErrorCode.KMS_KEY_DISABLED,
            provider=provider.name,
        )


def _wrong_context(provider: KmsProvider, wrapped: bytes, wrong: dict[str, str]) -> StepResult:
    """Tenant binding: a wrapped key must not open under another tenant's context."""
    step, started = "wrong_context_decrypt", time.perf_counter()
    try:
        opened = provider.decrypt(wrapped, wrong)
    except IntegrityError:
        return StepResult(step, True, _ms(started), message="refused, as it must be")
    except Exception as exc:
        return _failure(step, started, exc)
    opened[:] = bytes(len(opened))
    return StepResult(
        step,
        False,
        _ms(started),
        str(ErrorCode.KMS_INVALID_CIPHERTEXT),
        "the provider opened a data key under another tenant's context",
        "context binding is not enforced: use a key that binds the context (AWS "
        "EncryptionContext, a derived Vault Transit key, GCP additional authenticated data)",
    )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class KmsHealthCache:
    """The provider's health, at most ``ttl`` seconds old, answered within ``deadline`` seconds.

    Probes share one in-flight call (a burst of health checks makes one KMS request); a call
    slower than ``deadline`` reports DOWN while it finishes in the background.
    """

    def __init__(
        self,
        provider: Callable[[], KmsProvider],
        ttl: float,
        deadline: float,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or deadline <= 0:
            raise ValueError("ttl must be >= 0 and deadline > 0")
        self._provider = provider
        #: Shown when the provider cannot even be built (its key id is unknown then).
        self._name, self._key_id = name, ""
        self._ttl = ttl
        self._deadline = deadline
        self._clock = clock
        self._lock = threading.Lock()
        self._report: HealthReport | None = None
        self._expires = 0.0
        self._pending: Future[HealthReport] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tk-kms-health")

    def get(self) -> HealthReport:
        with self._lock:
            if self._report is not None and self._clock() < self._expires:
                return self._report
            if self._pending is None:
                self._pending = self._executor.submit(self._probe)
            pending = self._pending
        try:
            return pending.result(timeout=self._deadline)
        except FutureTimeout:
            error = TransientKmsError(
                f"the KMS did not answer a health check within {self._deadline:g} s",
                code=ErrorCode.KMS_TIMEOUT,
                provider=self._name,
            )
            report = self._down(error, self._deadline * 1000)
            self._store(report)
            return report

    def _down(self, error: TenantKeysError, latency_ms: float) -> HealthReport:
        return HealthReport(self._name, self._key_id, False, latency_ms, error.one_line())

    def _probe(self) -> HealthReport:
        started = time.perf_counter()
        try:
            provider = self._provider()
            self._name, self._key_id = provider.name, provider.key_id
            report = provider.health()
        except Exception as exc:  # also when the runtime could not be built (store down ...)
            report = self._down(as_error(exc), _ms(started))
        finally:
            with self._lock:
                self._pending = None
        self._store(report)
        return report

    def _store(self, report: HealthReport) -> None:
        with self._lock:
            self._report, self._expires = report, self._clock() + self._ttl

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def error_code(detail: str, default: ErrorCode) -> str:
    """The ``TK-...`` code at the start of a coded one-line ``detail``, else ``default``."""
    head = detail.partition(":")[0]
    return head if head.startswith("TK-") else str(default)


@dataclass(frozen=True)
class PartCheck:
    """One readiness part: ``broker``, ``redis``, ``database`` or ``kms``."""

    name: str
    ok: bool
    latency_ms: float
    code: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"status": "UP" if self.ok else "DOWN"}
        shown["latency_ms"] = self.latency_ms
        if not self.ok:
            shown |= {"code": self.code, "detail": self.detail}
        return shown


def _part(name: str, code: ErrorCode, what: str, fn: Callable[[], object]) -> PartCheck:
    started = time.perf_counter()
    try:
        fn()
    except TenantKeysError as exc:
        return PartCheck(name, False, _ms(started), str(exc.code), exc.message)
    except Exception as exc:  # class name only: driver messages may carry hosts or users
        return PartCheck(name, False, _ms(started), str(code), f"{what} ({type(exc).__name__})")
    return PartCheck(name, True, _ms(started))


def check_redis(client: redis.Redis) -> PartCheck:
    return _part("redis", ErrorCode.CACHE_UNAVAILABLE, "Redis did not answer", client.ping)


def check_database(store: KeyStore) -> PartCheck:
    def select_one() -> None:
        with store.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    what = "the key store did not answer"
    return _part("database", ErrorCode.STORE_UNAVAILABLE, what, select_one)


def check_broker(ping: Callable[[], object]) -> PartCheck:
    return _part("broker", ErrorCode.BROKER_UNAVAILABLE, "the broker did not answer", ping)


def check_kms(health: HealthReport) -> PartCheck:
    if health.ok:
        return PartCheck("kms", True, health.latency_ms)
    code = error_code(health.detail, ErrorCode.KMS_UNAVAILABLE)
    detail = health.detail.removeprefix(f"{code}: ")
    return PartCheck("kms", False, health.latency_ms, code, detail)
