"""KMS providers, looked up by name and imported lazily so each extra stays optional."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.providers.base import (
    CONTEXT_KEYS,
    Context,
    DataKey,
    HealthReport,
    KeyDescription,
    KmsProvider,
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


def create_provider(name: str, options: Mapping[str, Any]) -> KmsProvider:
    """Build the provider ``name`` from its options (see ``Settings.provider_options``)."""
    return provider_class(name)(**options)


__all__ = [
    "CONTEXT_KEYS",
    "REGISTRY",
    "SUPPORTED",
    "Context",
    "DataKey",
    "HealthReport",
    "KeyDescription",
    "KmsProvider",
    "canonical_context",
    "create_provider",
    "provider_class",
]
