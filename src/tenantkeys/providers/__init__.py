"""KMS providers, looked up by name and imported lazily so each extra stays optional.

Config owns the provider names (``tenantkeys.config.KMS_PROVIDERS``, a test keeps the two
equal) and hands each provider's raw ``TENANTKEYS_<NAME>_*`` values up; the provider's own
:class:`ProviderSettings` model validates them here, where config never looks.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.providers.base import (
    CONTEXT_KEYS,
    CommonSettings,
    Context,
    DataKey,
    HealthReport,
    KeyDescription,
    KmsProvider,
    ProviderSettings,
    canonical_context,
)

#: name -> "module:Class"; the module is imported only when the provider is used.
REGISTRY: Mapping[str, str] = {
    "local": "tenantkeys.providers.local:LocalProvider",
    "aws": "tenantkeys.providers.aws:AwsKmsProvider",
    "vault": "tenantkeys.providers.vault:VaultTransitProvider",
    "gcp": "tenantkeys.providers.gcp:GcpKmsProvider",
    "azure": "tenantkeys.providers.azure:AzureKeyVaultProvider",
}

#: The pip extra that brings each provider's SDK.
EXTRAS: Mapping[str, str] = {"aws": "aws", "vault": "vault", "gcp": "gcp", "azure": "azure"}

SUPPORTED = tuple(REGISTRY)


def provider_class(name: str) -> type[KmsProvider]:
    """The class registered under ``name``; a clear error if unknown or not installed."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown KMS provider {name!r}; supported providers: {', '.join(SUPPORTED)}",
            code=ErrorCode.CONFIG_UNKNOWN_PROVIDER,
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(name, name)
        raise ConfigurationError(
            f"the {name!r} provider needs its SDK: pip install 'tenantkeys[{extra}]' ({exc})",
            code=ErrorCode.PROVIDER_NOT_INSTALLED,
        ) from exc
    cls: type[KmsProvider] = getattr(module, class_name)
    return cls


def provider_settings(name: str, values: Mapping[str, object]) -> ProviderSettings:
    """Provider ``name``'s settings validated from their raw values (by field name)."""
    return provider_class(name).settings_model.parse(values)


def build_provider(name: str, values: Mapping[str, object], common: CommonSettings) -> KmsProvider:
    """Provider ``name`` built from its raw settings and the service-wide ones."""
    return provider_class(name).from_settings(values, common)


def create_provider(name: str, options: Mapping[str, Any]) -> KmsProvider:
    """Provider ``name`` from constructor arguments (tests and tools with their own hooks)."""
    return provider_class(name)(**options)


__all__ = [
    "CONTEXT_KEYS",
    "REGISTRY",
    "SUPPORTED",
    "CommonSettings",
    "Context",
    "DataKey",
    "HealthReport",
    "KeyDescription",
    "KmsProvider",
    "ProviderSettings",
    "build_provider",
    "canonical_context",
    "create_provider",
    "provider_class",
    "provider_settings",
]
