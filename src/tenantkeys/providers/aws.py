"""The ``aws`` provider: AWS KMS through boto3, the context bound as ``EncryptionContext``.

Credentials come from boto3's default chain (environment, profile, instance or task role);
this module never takes keys of its own. It calls four KMS actions and only these, listed in
:data:`KMS_ACTIONS` so the Terraform policy and the docs can be checked against the code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Self

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

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
    DataKey,
    KeyDescription,
    KmsProvider,
    ProviderSettings,
)

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

#: Every KMS action this provider calls; the IAM policy must allow exactly these.
KMS_ACTIONS = ("kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt", "kms:DescribeKey")
POLICY_DOC = "docs/setup/AWS_KMS_SETUP.md#iam-policy"

_DENIED = {"AccessDeniedException", "AccessDenied", "UnrecognizedClientException"}
_DENIED |= {"InvalidClientTokenId", "ExpiredTokenException", "InvalidSignatureException"}
_THROTTLED = {"ThrottlingException", "Throttling", "TooManyRequestsException"}
_UNAVAILABLE = {"KMSInternalException", "DependencyTimeoutException", "DependencyTimeout"}
_UNAVAILABLE |= {"ServiceUnavailable", "InternalFailure", "CustomKeyStoreInvalidStateException"}
_BAD_CIPHERTEXT = {"InvalidCiphertextException", "IncorrectKeyException"}
_DISABLED = {"DisabledException", "KMSInvalidStateException"}
_XML_CODE = re.compile(r"<Code>([A-Za-z.]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


class AwsSettings(ProviderSettings):
    """``TENANTKEYS_AWS_*``: the key and its region; credentials come from boto3's chain."""

    provider: ClassVar[str] = "aws"
    setup_doc: ClassVar[str] = "docs/setup/AWS_KMS_SETUP.md"

    #: Key id, alias (``alias/...``) or ARN of a symmetric KMS key.
    kms_key_id: str
    region: str
    #: Another endpoint (a VPC endpoint, or a local stand-in); None = the region's own.
    endpoint_url: str | None = None


class AwsKmsProvider(KmsProvider):
    """Wraps data keys with an AWS KMS symmetric key (id, alias or ARN)."""

    name = "aws"
    settings_model = AwsSettings

    @classmethod
    def from_settings(cls, values: Mapping[str, object], common: CommonSettings) -> Self:
        settings = AwsSettings.parse(values)
        return cls(
            settings.kms_key_id, settings.region, settings.endpoint_url, timeout=common.timeout
        )

    def __init__(
        self,
        key_id: str,
        region: str,
        endpoint_url: str | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._key_id = key_id
        # Few SDK attempts: tenantkeys' own retry policy and circuit breaker sit above this.
        config = Config(
            connect_timeout=min(timeout, 5.0),
            read_timeout=timeout,
            retries={"mode": "standard", "max_attempts": 3},
        )
        session = boto3.session.Session()
        self._client: KMSClient = session.client(
            "kms", region_name=region, endpoint_url=endpoint_url, config=config
        )

    @property
    def key_id(self) -> str:
        return self._key_id

    def generate_data_key(self, context: Context) -> DataKey:
        with _translate("kms:GenerateDataKey"):
            reply = self._client.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=dict(context)
            )
        return DataKey(plaintext=bytearray(reply["Plaintext"]), wrapped=reply["CiphertextBlob"])

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        with _translate("kms:Encrypt"):
            reply = self._client.encrypt(
                KeyId=self._key_id, Plaintext=plaintext, EncryptionContext=dict(context)
            )
        return reply["CiphertextBlob"]

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        with _translate("kms:Decrypt"):
            # KeyId pins the key: a blob wrapped under another key is refused, not opened.
            reply = self._client.decrypt(
                KeyId=self._key_id, CiphertextBlob=ciphertext, EncryptionContext=dict(context)
            )
        return bytearray(reply["Plaintext"])

    def describe(self) -> KeyDescription:
        with _translate("kms:DescribeKey"):
            meta = self._client.describe_key(KeyId=self._key_id)["KeyMetadata"]
        return KeyDescription(
            provider=self.name,
            key_id=meta["Arn"],
            enabled=bool(meta["Enabled"]),
            algorithm=str(meta.get("KeySpec", "SYMMETRIC_DEFAULT")),
            details={
                "key_state": meta.get("KeyState"),
                "key_usage": meta.get("KeyUsage"),
                "key_manager": meta.get("KeyManager"),
            },
        )

    def close(self) -> None:
        self._client.close()


@contextmanager
def _translate(action: str) -> Iterator[None]:
    """Turn botocore errors raised inside the block into tenantkeys errors."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise map_error(exc, action) from exc


def map_error(exc: Exception, action: str) -> TenantKeysError:
    """The tenantkeys error for a botocore error raised by ``action`` (``kms:Encrypt`` ...)."""
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return TransientKmsError(
            f"AWS KMS timed out during {action}: {exc}",
            code=ErrorCode.KMS_TIMEOUT,
            provider="aws",
            provider_code=type(exc).__name__,
        )
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError):
        return TransientKmsError(
            f"AWS KMS cannot be reached during {action}: {exc}",
            code=ErrorCode.KMS_UNAVAILABLE,
            provider="aws",
            provider_code=type(exc).__name__,
        )
    if isinstance(exc, NoCredentialsError):
        return _denied(action, "NoCredentials", "no AWS credentials found in the default chain")
    if not isinstance(exc, ClientError):
        return TransientKmsError(
            f"AWS KMS call {action} failed: {exc}", provider="aws", provider_code=type(exc).__name__
        )
    code, status, message = _details(exc)
    if code in _DENIED or status == 403 or "not authorized" in message.lower():
        return _denied(action, code, message)
    if code in _THROTTLED or status == 429:
        return TransientKmsError(
            f"AWS KMS throttled {action}: {message}",
            code=ErrorCode.KMS_THROTTLED,
            provider="aws",
            provider_code=code,
        )
    if code in _UNAVAILABLE or status >= 500:
        timeout = "Timeout" in code
        return TransientKmsError(
            f"AWS KMS could not serve {action}: {code} {message}".rstrip(),
            code=ErrorCode.KMS_TIMEOUT if timeout else ErrorCode.KMS_UNAVAILABLE,
            provider="aws",
            provider_code=code,
        )
    if code in _BAD_CIPHERTEXT:
        return IntegrityError(
            "AWS KMS refused to decrypt: the wrapped key does not open under this encryption "
            "context and key (context mismatch: wrong tenant, purpose, version or kid; "
            "another key; or tampering)",
            provider="aws",
            provider_code=code,
        )
    if code == "NotFoundException":
        return KmsConfigError(
            f"AWS KMS key not found ({action}): {message}; check TENANTKEYS_AWS_KMS_KEY_ID "
            "and TENANTKEYS_AWS_REGION",
            code=ErrorCode.KMS_KEY_NOT_FOUND,
            provider="aws",
            provider_code=code,
        )
    if code in _DISABLED:
        return KmsConfigError(
            f"AWS KMS key is disabled or not usable ({action}): {message}; enable it or point "
            "TENANTKEYS_AWS_KMS_KEY_ID at an enabled key",
            code=ErrorCode.KMS_KEY_DISABLED,
            provider="aws",
            provider_code=code,
        )
    return KmsConfigError(
        f"AWS KMS rejected {action}: {code} {message}".rstrip(),
        code=ErrorCode.CONFIG_INVALID,
        provider="aws",
        provider_code=code,
    )


def _details(exc: ClientError) -> tuple[str, int, str]:
    """(error code, HTTP status, message) of a ClientError, tolerating odd error bodies."""
    error: dict[str, Any] = dict(exc.response.get("Error", {}))
    code = str(error.get("Code", "") or "")
    message = str(error.get("Message", "") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    # Some endpoints (and moto's IAM layer) answer with an XML body botocore cannot parse:
    # the real code is inside it.
    found = _XML_CODE.search(message)
    if found and (not code or code.isdigit()):
        code = found.group(1)
        text = _XML_MESSAGE.search(message)
        message = text.group(1) if text else ""
    if code.isdigit():
        status = status or int(code)
    return code, status, message


def _denied(action: str, code: str, message: str) -> KmsPermissionError:
    return KmsPermissionError(
        f"AWS KMS denied {action} ({message.strip() or code}). The service identity needs "
        f"{', '.join(KMS_ACTIONS)} on the key; see {POLICY_DOC}",
        provider="aws",
        provider_code=code,
    )
