"""Typed settings, read once from ``TENANTKEYS_*`` variables or a ``.env`` file.

Settings are grouped by concern, one small model each, composed into :class:`Settings`, so every
setting is still ``settings.<name>``. Each KMS provider declares its own settings
(``TENANTKEYS_<PROVIDER>_<FIELD>``, in :mod:`tenantkeys.providers`); config sits below the
providers and never imports them, so it keeps those variables' raw values by provider in
``Settings.provider_settings`` and :func:`tenantkeys.keys.kms.check_providers` validates them
with the provider's own model at start-up.

:func:`load_settings` is the only place that reads the environment. It fails fast on what
config can judge alone: an unknown provider, ``local`` in production, a bad value, incomplete
message signing. There is no fallback to ``local``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from tenantkeys.config.concerns import (
    CONCERNS,
    ENV_PREFIX,
    KMS_PROVIDERS,
    ApiSettings,
    BrokerSettings,
    CacheSettings,
    CoreSettings,
    DeadLetterSettings,
    KeySettings,
    KmsSettings,
    MessageSigningSettings,
    RetrySettings,
    TelemetrySettings,
    multiproc_dir_problem,
)
from tenantkeys.config.locations import (
    DEAD_LETTER_KEY_FILE,
    STORE_FILE,
    search_data_dir,
    sqlite_url,
)
from tenantkeys.config.urls import masked_url
from tenantkeys.errors import ConfigurationError, ErrorCode

__all__ = [
    "CONCERNS",
    "ENV_PREFIX",
    "KMS_PROVIDERS",
    "Settings",
    "check_prometheus_multiproc_dir",
    "environment_with",
    "load_settings",
    "masked_url",
    "masked_value",
]


class Settings(
    CoreSettings,
    KmsSettings,
    CacheSettings,
    KeySettings,
    BrokerSettings,
    RetrySettings,
    DeadLetterSettings,
    ApiSettings,
    TelemetrySettings,
    MessageSigningSettings,
    BaseSettings,
):
    """Every setting of the service. Frozen: pass it down, never re-read the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Each source's provider variables join provider_settings at that source's precedence.
        return (
            init_settings,
            _ProviderSections(settings_cls, init_settings),
            env_settings,
            _ProviderSections(settings_cls, env_settings),
            dotenv_settings,
            _ProviderSections(settings_cls, dotenv_settings),
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _anchored_defaults(cls, values: Any) -> Any:
        """The data dir and the files in it, when not set (config.locations says how)."""
        if not isinstance(values, dict):
            return values
        given = dict(values)
        data_dir = given.get("data_dir")
        if data_dir in (None, ""):
            data_dir = search_data_dir().data_dir
        data_dir = Path(data_dir).expanduser().resolve()
        given["data_dir"] = data_dir
        if given.get("database_url") in (None, ""):
            given["database_url"] = sqlite_url(data_dir / STORE_FILE)
        if given.get("dead_letter_key_file") in (None, ""):
            given["dead_letter_key_file"] = data_dir / DEAD_LETTER_KEY_FILE
        return given

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        """Config's own variables; the providers' ``TENANTKEYS_<NAME>_*`` are in their models."""
        return tuple(
            _variable(name, field)
            for name, field in cls.model_fields.items()
            if name != "provider_settings"
        )

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or self.redis_url

    def check(self) -> None:
        """Start-up validation beyond field types; raises :class:`ConfigurationError`.

        The providers' own settings are checked one layer up, by
        :func:`tenantkeys.keys.kms.check_providers`.
        """
        if self.environment == "production" and self.kms_provider == "local":
            others = ", ".join(p for p in KMS_PROVIDERS if p != "local")
            raise ConfigurationError(
                "the 'local' KMS provider is for development only and refuses "
                f"TENANTKEYS_ENVIRONMENT=production; set TENANTKEYS_KMS_PROVIDER to one of: "
                f"{others}",
                code=ErrorCode.CONFIG_LOCAL_IN_PRODUCTION,
            )
        self.message_signing_files()

    def masked(self) -> dict[str, Any]:
        """The effective configuration by variable, with the configured providers' settings;
        secrets and URL passwords masked."""
        shown: dict[str, Any] = {}
        for concern in CONCERNS:
            for name, field in concern.model_fields.items():
                if name == "provider_settings":
                    for provider in self.configured_providers:
                        for key, value in self.provider_values(provider).items():
                            shown[f"{ENV_PREFIX}{provider}_{key}".upper()] = masked_value(value)
                else:
                    shown[_variable(name, field)] = masked_value(getattr(self, name))
        return shown


class _ProviderSections(PydanticBaseSettingsSource):
    """The ``TENANTKEYS_<PROVIDER>_*`` values another source holds, grouped by provider."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._values: Mapping[str, object] = {}
        self._prefix = ""
        if isinstance(source, InitSettingsSource):  # keyword overrides: aws_region=...
            self._values = source.init_kwargs
        elif isinstance(source, EnvSettingsSource):  # the environment, or the .env file
            self._values, self._prefix = source.env_vars, ENV_PREFIX.lower()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, "", False  # one field, built whole in __call__

    def __call__(self) -> dict[str, Any]:
        sections: dict[str, dict[str, object]] = {}
        for key, value in self._values.items():
            name = key.lower()
            if not name.startswith(self._prefix) or value is None or value == "":
                continue
            provider, _, field = name.removeprefix(self._prefix).partition("_")
            if provider in KMS_PROVIDERS and field:
                sections.setdefault(provider, {})[field] = value
        return {"provider_settings": sections} if sections else {}


def masked_value(value: object) -> object:
    """``value`` fit to print: secrets as ``***``, URL passwords masked, paths as text."""
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, str) and "://" in value:
        return masked_url(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _variable(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    return alias if isinstance(alias, str) else ENV_PREFIX + name.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings once; raise :class:`ConfigurationError` on any problem.

    ``overrides`` take field names, and ``<provider>_<field>`` for a provider's own settings.
    The ``.env`` files read: the deployment's (beside the ``.tenantkeys`` found upward), then
    the working directory's, which wins.
    """
    try:
        settings = Settings(_env_file=env_files(), **overrides)
    except SettingsError as exc:  # a value the source cannot parse (e.g. JSON of a dict field)
        raise ConfigurationError(
            f"invalid settings: {exc}", code=ErrorCode.CONFIG_INVALID
        ) from None
    except ValidationError as exc:
        problems = []
        code = ErrorCode.CONFIG_INVALID
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            if name in ("kms_provider", "previous_kms_provider"):
                code = ErrorCode.CONFIG_UNKNOWN_PROVIDER
            field = Settings.model_fields.get(name)
            variable = _variable(name, field) if field else name.upper()
            problems.append(f"{variable}: {str(error['msg']).removeprefix('Value error, ')}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems), code=code) from None
    settings.check()
    return settings


def env_files() -> tuple[Path, ...]:
    """The ``.env`` files, lowest precedence first: a subdirectory reads its deployment's too."""
    search = search_data_dir()
    here = search.start / ".env"
    if search.found is not None and search.found.parent != search.start:
        return (search.found.parent / ".env", here)
    return (here,)


def check_prometheus_multiproc_dir() -> None:
    """Make ``PROMETHEUS_MULTIPROC_DIR`` if it can be; TK-CONFIG-INVALID if it cannot.

    prometheus-client reads the variable when it is first imported, before any settings are
    loaded, and fails there with a bare OSError on a missing or unusable directory; the CLI
    calls this first.
    """
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not value:
        return
    problem = multiproc_dir_problem(Path(value))
    if problem is None:
        try:
            Path(value).mkdir(parents=True, exist_ok=True)  # what the worker would make
        except OSError as exc:
            problem = f"{value} cannot be created ({exc.strerror})"
    if problem:
        raise ConfigurationError(
            f"invalid settings: PROMETHEUS_MULTIPROC_DIR: {problem}",
            code=ErrorCode.CONFIG_INVALID,
        )


def environment_with(**variables: str) -> dict[str, str]:
    """This process's environment plus ``variables``: for a child process or an exec."""
    return {**os.environ, **variables}
