"""The ``azure`` provider: an RSA key in Azure Key Vault, RSA-OAEP-256 key wrapping.

RSA wrapping takes no associated data, so this module binds the context itself: it wraps a
fresh one-time key K with Key Vault and seals the plaintext under K with AES-256-GCM whose
associated data is the header and the canonical context. Layout (integers big-endian)::

    b"TKA1" | u16 len(kid) | kid | u16 len(wrapped K) | wrapped K | nonce (12) | AES-GCM body

``kid`` is the versioned key id that wrapped K, so unwrapping still works after the Key Vault
key is rotated. Credentials come from ``DefaultAzureCredential`` (environment, workload or
managed identity, Azure CLI).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Self

from azure.core import exceptions as azexc
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenantkeys.errors import (
    ErrorCode,
    IntegrityError,
    KmsConfigError,
    KmsPermissionError,
    TenantKeysError,
    TransientKmsError,
)
from tenantkeys.providers.base import (
    CommonSettings,
    Context,
    KeyDescription,
    KmsProvider,
    ProviderSettings,
    canonical_context,
)

ROLE = "Key Vault Crypto Service Encryption User"
POLICY_DOC = "docs/setup/AZURE_KEY_VAULT_SETUP.md#permissions"
_MAGIC = b"TKA1"
_NONCE_BYTES = 12
_ALGORITHM = KeyWrapAlgorithm.rsa_oaep_256


class AzureSettings(ProviderSettings):
    """``TENANTKEYS_AZURE_*``: the Key Vault key; credentials from DefaultAzureCredential."""

    provider: ClassVar[str] = "azure"
    setup_doc: ClassVar[str] = "docs/setup/AZURE_KEY_VAULT_SETUP.md"

    #: ``https://NAME.vault.azure.net`` (or a Managed HSM URL).
    vault_url: str
    key_name: str
    #: Pin one version; None wraps under the current one (older ones still unwrap).
    key_version: str | None = None


class AzureKeyVaultProvider(KmsProvider):
    """Wraps data keys with an RSA key in Azure Key Vault (or Managed HSM)."""

    name = "azure"
    settings_model = AzureSettings

    @classmethod
    def from_settings(cls, values: Mapping[str, object], common: CommonSettings) -> Self:
        settings = AzureSettings.parse(values)
        return cls(
            settings.vault_url, settings.key_name, settings.key_version, timeout=common.timeout
        )

    def __init__(
        self,
        vault_url: str,
        key_name: str,
        key_version: str | None = None,
        *,
        credential: Any = None,
        connection_verify: str | bool | None = None,
        verify_challenge_resource: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self._vault_url = vault_url.rstrip("/")
        self._key_name = key_name
        self._key_version = key_version
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self._credential = credential
        # Few SDK retries (its default is 10): tenantkeys' retry policy and breaker sit above.
        self._options: dict[str, Any] = {
            "verify_challenge_resource": verify_challenge_resource,
            "retry_total": 2,
            "retry_backoff_factor": 0.2,
            "connection_timeout": min(timeout, 5.0),
            "read_timeout": timeout,
        }
        if connection_verify is not None:
            self._options["connection_verify"] = connection_verify
        self._keys = KeyClient(self._vault_url, credential, **self._options)
        self._crypto: dict[str, CryptographyClient] = {}

    @property
    def key_id(self) -> str:
        suffix = f"/{self._key_version}" if self._key_version else ""
        return f"{self._vault_url}/keys/{self._key_name}{suffix}"

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        one_time_key = bytearray(os.urandom(32))
        try:
            with _translate("wrapKey"):
                result = self._crypto_client(self.key_id).wrap_key(_ALGORITHM, bytes(one_time_key))
            kid = result.key_id or self.key_id
            header = _MAGIC + _field(kid.encode()) + _field(result.encrypted_key)
            nonce = os.urandom(_NONCE_BYTES)
            # Context binding: header and canonical context are the AES-GCM associated data.
            body = AESGCM(bytes(one_time_key)).encrypt(
                nonce, plaintext, header + canonical_context(context)
            )
        finally:
            one_time_key[:] = bytes(len(one_time_key))
        return header + nonce + body

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        kid, wrapped, header_end = self._parse(ciphertext)
        header = ciphertext[:header_end]
        nonce = ciphertext[header_end : header_end + _NONCE_BYTES]
        body = ciphertext[header_end + _NONCE_BYTES :]
        with _translate("unwrapKey"):
            result = self._crypto_client(kid).unwrap_key(_ALGORITHM, wrapped)
        one_time_key = bytearray(result.key)
        try:
            aad = header + canonical_context(context)
            return bytearray(AESGCM(bytes(one_time_key)).decrypt(nonce, body, aad))
        except InvalidTag:
            raise IntegrityError(
                "wrapped key does not open under this context (context mismatch: wrong tenant, "
                "purpose, version or kid; or tampering)",
                provider=self.name,
                provider_code="InvalidTag",
            ) from None
        finally:
            one_time_key[:] = bytes(len(one_time_key))

    def describe(self) -> KeyDescription:
        with _translate("get"):
            key = self._keys.get_key(self._key_name, self._key_version)
        return KeyDescription(
            provider=self.name,
            key_id=str(key.id),
            enabled=bool(key.properties.enabled),
            algorithm=f"{getattr(key.key_type, 'value', key.key_type)}/{_ALGORITHM.value}",
            details={
                "version": key.properties.version,
                "key_operations": list(key.key_operations or []),
                "expires_on": str(key.properties.expires_on or ""),
            },
        )

    def close(self) -> None:
        for client in self._crypto.values():
            client.close()
        self._keys.close()

    def _crypto_client(self, kid: str) -> CryptographyClient:
        client = self._crypto.get(kid)
        if client is None:
            client = CryptographyClient(kid, self._credential, **self._options)
            self._crypto[kid] = client
        return client

    def _parse(self, blob: bytes) -> tuple[str, bytes, int]:
        """(kid, wrapped K, end of header); refuses blobs from another vault or key."""
        try:
            if not blob.startswith(_MAGIC):
                raise ValueError("magic")
            kid_bytes, offset = _read_field(blob, len(_MAGIC))
            wrapped, offset = _read_field(blob, offset)
            if len(blob) < offset + _NONCE_BYTES + 16:
                raise ValueError("short")
            kid = kid_bytes.decode("ascii")
        except (ValueError, struct.error):
            raise IntegrityError(
                "ciphertext is not an azure-provider wrapped key", provider=self.name
            ) from None
        # The kid picks where the credential is sent: only this vault and key are acceptable.
        expected = f"{self._vault_url}/keys/{self._key_name}/".lower()
        if not kid.lower().startswith(expected):
            raise IntegrityError(
                f"wrapped key was made by another key ({kid}), not {self._key_name} in "
                f"{self._vault_url}",
                provider=self.name,
            )
        return kid, wrapped, offset


def _field(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _read_field(blob: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">H", blob, offset)
    start = offset + 2
    if len(blob) < start + length:
        raise ValueError("truncated")
    return blob[start : start + length], start + length


@contextmanager
def _translate(operation: str) -> Iterator[None]:
    try:
        yield
    except azexc.AzureError as exc:
        raise map_error(exc, operation) from exc


def map_error(exc: Exception, operation: str) -> TenantKeysError:
    """The tenantkeys error for an azure-core error raised by ``operation`` (``wrapKey`` ...)."""
    status = int(getattr(exc, "status_code", None) or 0)
    error = getattr(exc, "error", None)
    code = str(getattr(error, "code", None) or (status or type(exc).__name__))
    text = str(getattr(error, "message", None) or exc).splitlines()[0]
    if isinstance(exc, azexc.ServiceRequestTimeoutError | azexc.ServiceResponseTimeoutError):
        return TransientKmsError(
            f"Azure Key Vault timed out during {operation}: {text}",
            code=ErrorCode.KMS_TIMEOUT,
            provider="azure",
            provider_code=type(exc).__name__,
        )
    if isinstance(exc, azexc.ServiceRequestError | azexc.ServiceResponseError):
        return TransientKmsError(
            f"Azure Key Vault cannot be reached during {operation}: {text}",
            provider="azure",
            provider_code=type(exc).__name__,
        )
    disabled = "disabled" in text.lower() or code == "KeyDisabled"
    if status == 403 and disabled:
        return KmsConfigError(
            f"Azure Key Vault key is disabled ({operation}): {text}",
            code=ErrorCode.KMS_KEY_DISABLED,
            provider="azure",
            provider_code=code,
        )
    if isinstance(exc, azexc.ClientAuthenticationError) or status in (401, 403):
        return KmsPermissionError(
            f"Azure Key Vault denied {operation} ({text}). The identity needs the key "
            f"permissions wrapKey, unwrapKey and get (access policy) or the RBAC role "
            f'"{ROLE}" on the key; see {POLICY_DOC}',
            provider="azure",
            provider_code=code,
        )
    if status == 429:
        return TransientKmsError(
            f"Azure Key Vault throttled {operation}: {text}",
            code=ErrorCode.KMS_THROTTLED,
            provider="azure",
            provider_code=code,
        )
    if status >= 500 or status == 408:
        return TransientKmsError(
            f"Azure Key Vault could not serve {operation}: {text}",
            code=ErrorCode.KMS_TIMEOUT if status in (408, 504) else ErrorCode.KMS_UNAVAILABLE,
            provider="azure",
            provider_code=code,
        )
    if isinstance(exc, azexc.ResourceNotFoundError) or status == 404:
        return KmsConfigError(
            f"Azure Key Vault key not found ({operation}): {text}; check TENANTKEYS_AZURE_"
            "VAULT_URL, TENANTKEYS_AZURE_KEY_NAME and TENANTKEYS_AZURE_KEY_VERSION",
            code=ErrorCode.KMS_KEY_NOT_FOUND,
            provider="azure",
            provider_code=code,
        )
    if operation == "unwrapKey" and status == 400:
        return IntegrityError(
            f"Azure Key Vault could not unwrap the key (tampered or wrapped elsewhere): {text}",
            provider="azure",
            provider_code=code,
        )
    return KmsConfigError(
        f"Azure Key Vault rejected {operation}: {text}",
        code=ErrorCode.CONFIG_INVALID,
        provider="azure",
        provider_code=code,
    )
