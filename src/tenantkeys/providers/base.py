"""The one interface every KMS provider implements.

A provider wraps and unwraps 32-byte data keys under a key the KMS holds, binding a
*context* (``tenant_id``, ``purpose``, ``version``, ``kid``) where the KMS supports it.
Providers import nothing of tenantkeys but :mod:`tenantkeys.errors`.

Each provider also declares its own settings (:class:`ProviderSettings`): the variables
``TENANTKEYS_<NAME>_<FIELD>``, which of them it needs, and how it is built from them
(:meth:`KmsProvider.from_settings`). Config reads those variables raw and never imports a
provider; the provider validates them here.
"""

from __future__ import annotations

import abc
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from tenantkeys.errors import ConfigurationError, ErrorCode, KmsConfigError, TenantKeysError

DATA_KEY_BYTES = 32
#: Every provider variable is ``TENANTKEYS_<NAME>_<FIELD>`` (config collects them by this shape).
VARIABLE_PREFIX = "TENANTKEYS_"

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


@dataclass(frozen=True)
class CommonSettings:
    """What every provider takes from the service's own KMS settings, not from its section."""

    #: Per-request timeout (TENANTKEYS_KMS_TIMEOUT_SECONDS).
    timeout: float = 10.0
    #: TENANTKEYS_ENVIRONMENT=production: a development-only provider refuses to start.
    production: bool = False


class ProviderSettings(BaseModel):
    """A provider's own settings, ``TENANTKEYS_<NAME>_<FIELD>`` for each field.

    A field without a default is needed by every configuration; :meth:`missing_settings` adds
    the ones a combination needs (Vault's auth method). :meth:`parse` turns the raw values into
    the model or one coded error that names the variables and the setup page.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The registry name of the provider these settings belong to.
    provider: ClassVar[str]
    #: The page that sets the provider up; every error about its settings links it.
    setup_doc: ClassVar[str]

    @classmethod
    def variable(cls, field_name: str) -> str:
        """The environment variable of ``field_name``."""
        return f"{VARIABLE_PREFIX}{cls.provider.upper()}_{field_name.upper()}"

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        """Every variable this provider reads."""
        return tuple(cls.variable(name) for name in cls.model_fields)

    def missing_settings(self) -> tuple[str, ...]:
        """Fields this combination of values still needs; none unless a provider says so."""
        return ()

    def by_variable(self) -> dict[str, Any]:
        """The effective values by variable name (defaults included), for display."""
        return {self.variable(name): getattr(self, name) for name in type(self).model_fields}

    @classmethod
    def parse(cls, values: Mapping[str, object]) -> Self:
        """Validate raw values by field name; an empty value counts as unset.

        Raises :class:`ConfigurationError`: ``TK-CONFIG-MISSING-SETTING`` naming every missing
        variable and the setup page, or ``TK-CONFIG-INVALID`` naming each bad or unknown one.
        """
        given = {name: value for name, value in values.items() if value is not None and value != ""}
        unknown = sorted(set(given) - set(cls.model_fields))
        if unknown:
            raise cls._invalid(
                f"{', '.join(cls.variable(name) for name in unknown)} not among the variables "
                f"it reads ({', '.join(cls.variables())})"
            )
        required = [
            name
            for name, field in cls.model_fields.items()
            if field.is_required() and name not in given
        ]
        if required:
            raise cls._missing(required)
        try:
            settings = cls.model_validate(given)
        except ValidationError as exc:
            raise cls._invalid(
                "; ".join(
                    f"{cls.variable(str(error['loc'][0])) if error['loc'] else cls.provider}: "
                    f"{str(error['msg']).removeprefix('Value error, ')}"
                    for error in exc.errors()
                )
            ) from None
        needed = settings.missing_settings()
        if needed:
            raise cls._missing(needed)
        return settings

    @classmethod
    def _missing(cls, names: Iterable[str]) -> ConfigurationError:
        return ConfigurationError(
            f"the {cls.provider!r} KMS provider needs "
            f"{', '.join(cls.variable(name) for name in names)}; see {cls.setup_doc}",
            code=ErrorCode.CONFIG_MISSING_SETTING,
            provider=cls.provider,
        )

    @classmethod
    def _invalid(cls, problem: str) -> ConfigurationError:
        return ConfigurationError(
            f"invalid {cls.provider!r} KMS provider settings: {problem}; see {cls.setup_doc}",
            code=ErrorCode.CONFIG_INVALID,
            provider=cls.provider,
        )


class KmsProvider(abc.ABC):
    """A key management service that wraps data keys.

    Implementations translate their SDK's errors into :mod:`tenantkeys.errors` inside their
    own module (``raise ... from exc``), keeping the provider's error code.
    """

    #: The registry name (``local``, ``aws`` ...).
    name: ClassVar[str]
    #: The model of this provider's own settings (``TENANTKEYS_<NAME>_*``).
    settings_model: ClassVar[type[ProviderSettings]]

    @classmethod
    def from_settings(cls, values: Mapping[str, object], common: CommonSettings) -> Self:
        """Build from the raw values of this provider's variables (by field name) and the
        service-wide ``common`` ones; raises :class:`ConfigurationError` as
        :meth:`ProviderSettings.parse` does.

        Every registered provider implements it; wrappers (metering, the breaker) and test
        doubles are built from another provider instead, so it is not abstract.
        """
        raise NotImplementedError(f"{cls.__name__} is not built from settings")

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
