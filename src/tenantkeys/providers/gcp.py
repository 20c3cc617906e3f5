"""The ``gcp`` provider: Cloud KMS through google-cloud-kms, context as AAD.

The canonical context is the ``additional_authenticated_data`` of every Encrypt and Decrypt.
Every request carries CRC32C checksums of what it sends and every response's checksums are
checked, as Google recommends: a mismatch means the data was corrupted in transit, which is
worth a retry. Credentials: Application Default Credentials, or a service-account file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_errors
from google.cloud import kms

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

ROLE = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
POLICY_DOC = "docs/setup/GCP_KMS_SETUP.md#iam"
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: ``TENANTKEYS_GCP_ENDPOINT=insecure://127.0.0.1:PORT``: plaintext gRPC, no credentials, for a
#: loopback stand-in (tests, local emulators) only; any other host is refused.
INSECURE_SCHEME = "insecure://"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class GcpSettings(ProviderSettings):
    """``TENANTKEYS_GCP_*``: the CryptoKey; credentials from ADC unless a file is named."""

    provider: ClassVar[str] = "gcp"
    setup_doc: ClassVar[str] = "docs/setup/GCP_KMS_SETUP.md"

    #: ``projects/P/locations/L/keyRings/R/cryptoKeys/K``.
    key_name: str
    credentials_file: Path | None = None
    #: Another API endpoint; ``insecure://127.0.0.1:PORT`` only for a loopback stand-in.
    endpoint: str | None = None


class GcpKmsProvider(KmsProvider):
    """Wraps data keys with a Cloud KMS symmetric CryptoKey (full resource name)."""

    name = "gcp"
    settings_model = GcpSettings

    @classmethod
    def from_settings(cls, values: Mapping[str, object], common: CommonSettings) -> Self:
        settings = GcpSettings.parse(values)
        return cls(
            settings.key_name,
            settings.credentials_file,
            settings.endpoint,
            timeout=common.timeout,
        )

    def __init__(
        self,
        key_name: str,
        credentials_file: Path | str | None = None,
        endpoint: str | None = None,
        *,
        transport: Any = None,
        timeout: float = 10.0,
    ) -> None:
        self._key_name = key_name
        self._timeout = timeout
        if transport is None and endpoint and endpoint.startswith(INSECURE_SCHEME):
            transport = _loopback_transport(endpoint)
        with _translate("connect"):
            if transport is not None:  # tests hand in a transport on a loopback channel
                self._client = kms.KeyManagementServiceClient(transport=transport)
            else:
                credentials = None
                if credentials_file:
                    from google.oauth2 import service_account

                    credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                        str(credentials_file), scopes=_SCOPES
                    )
                options = ClientOptions(api_endpoint=endpoint) if endpoint else None
                self._client = kms.KeyManagementServiceClient(
                    credentials=credentials, client_options=options
                )

    @property
    def key_id(self) -> str:
        return self._key_name

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        aad = canonical_context(context)
        request = kms.EncryptRequest(
            name=self._key_name,
            plaintext=plaintext,
            additional_authenticated_data=aad,
            plaintext_crc32c=crc32c(plaintext),
            additional_authenticated_data_crc32c=crc32c(aad),
        )
        with _translate("encrypt"):
            reply = self._client.encrypt(request=request, retry=None, timeout=self._timeout)
        ciphertext = bytes(reply.ciphertext)
        intact = (
            reply.verified_plaintext_crc32c
            and reply.verified_additional_authenticated_data_crc32c
            and reply.ciphertext_crc32c == crc32c(ciphertext)
        )
        if not intact:
            raise _corrupted("encrypt")
        return ciphertext

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        aad = canonical_context(context)
        request = kms.DecryptRequest(
            name=self._key_name,
            ciphertext=ciphertext,
            additional_authenticated_data=aad,
            ciphertext_crc32c=crc32c(ciphertext),
            additional_authenticated_data_crc32c=crc32c(aad),
        )
        with _translate("decrypt"):
            reply = self._client.decrypt(request=request, retry=None, timeout=self._timeout)
        plaintext = bytearray(reply.plaintext)
        if reply.plaintext_crc32c != crc32c(bytes(plaintext)):
            plaintext[:] = bytes(len(plaintext))
            raise _corrupted("decrypt")
        return plaintext

    def describe(self) -> KeyDescription:
        with _translate("get"):
            key = self._client.get_crypto_key(
                name=self._key_name, retry=None, timeout=self._timeout
            )
        primary = key.primary
        state = kms.CryptoKeyVersion.CryptoKeyVersionState
        enabled = bool(primary.name) and primary.state == state.ENABLED
        return KeyDescription(
            provider=self.name,
            key_id=key.name,
            enabled=enabled,
            algorithm=primary.algorithm.name,
            details={
                "primary_version": primary.name,
                "primary_state": primary.state.name,
                "purpose": key.purpose.name,
                "protection_level": primary.protection_level.name,
            },
        )

    def close(self) -> None:
        self._client.transport.close()  # type: ignore[no-untyped-call]


def _loopback_transport(endpoint: str) -> Any:
    """A plaintext gRPC transport to a loopback ``insecure://HOST:PORT``, refused elsewhere."""
    import grpc  # type: ignore[import-untyped]
    from google.cloud.kms_v1.services.key_management_service.transports.grpc import (
        KeyManagementServiceGrpcTransport,
    )

    target = endpoint.removeprefix(INSECURE_SCHEME).rstrip("/")
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if host not in _LOOPBACK_HOSTS or not port.isdigit():
        raise KmsConfigError(
            f"TENANTKEYS_GCP_ENDPOINT {endpoint!r}: the {INSECURE_SCHEME} scheme (no TLS, no "
            "credentials) is allowed only for a loopback HOST:PORT such as 127.0.0.1:8443",
            code=ErrorCode.CONFIG_INVALID,
            provider="gcp",
        )
    return KeyManagementServiceGrpcTransport(channel=grpc.insecure_channel(target))


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of ``data``, the checksum Cloud KMS uses for integrity."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _table() -> list[int]:
    table = []
    for index in range(256):
        crc = index
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


@contextmanager
def _translate(operation: str) -> Iterator[None]:
    try:
        yield
    except (gexc.GoogleAPIError, auth_errors.GoogleAuthError) as exc:
        raise map_error(exc, operation) from exc


def map_error(exc: Exception, operation: str) -> TenantKeysError:
    """The tenantkeys error for a google-api-core / google-auth error raised by ``operation``."""
    code = _code(exc)
    if isinstance(exc, auth_errors.TransportError):
        return TransientKmsError(
            f"cannot reach Google to refresh credentials during {operation}: {exc}",
            provider="gcp",
            provider_code=code,
        )
    if isinstance(exc, gexc.PermissionDenied | gexc.Unauthenticated | auth_errors.GoogleAuthError):
        need = (
            "cloudkms.cryptoKeys.get (roles/cloudkms.viewer)"
            if operation == "get"
            else f"{ROLE} (cloudkms.cryptoKeyVersions.useToEncrypt / useToDecrypt)"
        )
        return KmsPermissionError(
            f"Cloud KMS denied {operation} ({exc}). The service account needs {need} on the "
            f"key; see {POLICY_DOC}",
            provider="gcp",
            provider_code=code,
        )
    if isinstance(exc, gexc.DeadlineExceeded):
        return TransientKmsError(
            f"Cloud KMS timed out during {operation}: {exc}",
            code=ErrorCode.KMS_TIMEOUT,
            provider="gcp",
            provider_code=code,
        )
    if isinstance(exc, gexc.ResourceExhausted | gexc.TooManyRequests):
        return TransientKmsError(
            f"Cloud KMS throttled {operation}: {exc}",
            code=ErrorCode.KMS_THROTTLED,
            provider="gcp",
            provider_code=code,
        )
    if isinstance(
        exc,
        gexc.ServiceUnavailable
        | gexc.InternalServerError
        | gexc.RetryError
        | gexc.Aborted
        | gexc.Unknown
        | gexc.BadGateway
        | gexc.GatewayTimeout,
    ):
        return TransientKmsError(
            f"Cloud KMS could not serve {operation}: {exc}", provider="gcp", provider_code=code
        )
    if isinstance(exc, gexc.NotFound):
        return KmsConfigError(
            f"Cloud KMS key not found ({operation}): {exc}; check TENANTKEYS_GCP_KEY_NAME "
            "(projects/P/locations/L/keyRings/R/cryptoKeys/K)",
            code=ErrorCode.KMS_KEY_NOT_FOUND,
            provider="gcp",
            provider_code=code,
        )
    if isinstance(exc, gexc.FailedPrecondition):
        return KmsConfigError(
            f"Cloud KMS key version is not enabled ({operation}): {exc}; enable the primary "
            "version or set a new primary",
            code=ErrorCode.KMS_KEY_DISABLED,
            provider="gcp",
            provider_code=code,
        )
    if isinstance(exc, gexc.InvalidArgument) and operation == "decrypt":
        return IntegrityError(
            "Cloud KMS refused to decrypt: the wrapped key does not open under this additional "
            "authenticated data (context mismatch: wrong tenant, purpose, version or kid; "
            "another key; or tampering)",
            provider="gcp",
            provider_code=code,
        )
    return KmsConfigError(
        f"Cloud KMS rejected {operation}: {exc}",
        code=ErrorCode.CONFIG_INVALID,
        provider="gcp",
        provider_code=code,
    )


def _code(exc: Exception) -> str:
    grpc_status = getattr(exc, "grpc_status_code", None)
    return str(grpc_status.name) if grpc_status is not None else type(exc).__name__


def _corrupted(operation: str) -> TransientKmsError:
    return TransientKmsError(
        f"Cloud KMS {operation} response failed its CRC32C check: data corrupted in transit",
        provider="gcp",
        provider_code="CRC32C_MISMATCH",
    )
