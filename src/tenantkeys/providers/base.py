"""The one interface every KMS provider implements.

A provider wraps and unwraps 32-byte data keys under a key the KMS holds, binding a
*context* (``tenant_id``, ``purpose``, ``version``, ``kid``) where the KMS supports it.
Providers import nothing of tenantkeys but :mod:`tenantkeys.errors`.
"""

from __future__ import annotations

import abc
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tenantkeys.errors import ErrorCode, KmsConfigError, TenantKeysError

DATA_KEY_BYTES = 32

#: The context keys the envelope binds. Terraform's encryption-context condition uses these.
CONTEXT_KEYS: tuple[str, ...] = ("tenant_id", "purpose", "version", "kid")

Context = Mapping[str, str]


def canonical_context(context: Context) -> bytes:
    """Canonical bytes of a context: sorted keys, no spaces, UTF-8.

    Used as AES-GCM associated data and as provider AAD, so both sides must agree byte for byte.
    """
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("context keys and values must be strings")
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class KeyDescription:
    """What ``describe()`` reports about the provider's key (never any secret)."""

    provider: str
    key_id: str
    enabled: bool
    algorithm: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: ``plaintext`` to use once and drop, ``wrapped`` to store.

    ``plaintext`` is a bytearray so the caller can zero it; ``repr`` never shows it.
    """

    plaintext: bytearray = field(repr=False)
    wrapped: bytes = field(repr=False)

    def wipe(self) -> None:
        """Overwrite the plaintext in place (best effort; Python may hold copies)."""
        self.plaintext[:] = bytes(len(self.plaintext))


@dataclass(frozen=True)
class HealthReport:
    """The outcome of one health probe: ``detail`` is a coded one-line error when not ok."""

    provider: str
    key_id: str
    ok: bool
    latency_ms: float
    detail: str = ""


class KmsProvider(abc.ABC):
    """A key management service that wraps data keys.

    Implementations translate their SDK's errors into :mod:`tenantkeys.errors` inside their
    own module (``raise ... from exc``), keeping the provider's error code.
    """

    #: The registry name (``local``, ``aws`` ...).
    name: ClassVar[str]

    @property
    @abc.abstractmethod
    def key_id(self) -> str:
        """The provider-side key this instance wraps under (id, ARN, resource name, URL)."""

    @abc.abstractmethod
    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        """Wrap ``plaintext`` (a data key) bound to ``context``."""

    @abc.abstractmethod
    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        """Unwrap; raise :class:`~tenantkeys.errors.IntegrityError` if the context differs."""

    @abc.abstractmethod
    def describe(self) -> KeyDescription:
        """Describe the configured key; raises the mapped error if it is unusable."""

    def generate_data_key(self, context: Context) -> DataKey:
        """A new random data key, wrapped. KMSs with a native call override this."""
        plaintext = bytearray(os.urandom(DATA_KEY_BYTES))
        return DataKey(plaintext=plaintext, wrapped=self.encrypt(bytes(plaintext), context))

    def health(self) -> HealthReport:
        """Describe the key and time it; never raises."""
        started = time.perf_counter()
        try:
            description = self.describe()
        except TenantKeysError as exc:  # health reports, it does not raise
            return HealthReport(self.name, self.key_id, False, _ms(started), exc.one_line())
        except Exception as exc:  # an SDK error the provider failed to map: still a report
            detail = f"{ErrorCode.INTERNAL}: {type(exc).__name__}"
            return HealthReport(self.name, self.key_id, False, _ms(started), detail)
        if not description.enabled:
            disabled = KmsConfigError(
                f"KMS key {self.key_id} is disabled",
                code=ErrorCode.KMS_KEY_DISABLED,
                provider=self.name,
            )
            return HealthReport(self.name, self.key_id, False, _ms(started), disabled.one_line())
        return HealthReport(self.name, self.key_id, True, _ms(started))

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections; the default holds none."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} key_id={self.key_id!r}>"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
