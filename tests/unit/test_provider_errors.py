"""Each provider's error-mapping table, checked with SDK exceptions built by hand (no network)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from azure.core import exceptions as azexc
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_errors
from hvac import exceptions as hvac_errors

from tenantkeys.errors import (
    ErrorCode,
    IntegrityError,
    KmsConfigError,
    KmsPermissionError,
    TenantKeysError,
    TransientKmsError,
)
from tenantkeys.providers import aws, azure, gcp, vault

pytestmark = pytest.mark.unit

E = ErrorCode


def _aws(code: str, status: int = 400, message: str = "") -> ClientError:
    body: Any = {"Error": {"Code": code, "Message": message}}
    body["ResponseMetadata"] = {"HTTPStatusCode": status}
    return ClientError(body, "Encrypt")


def _azure(status: int, code: str = "Err", message: str = "boom") -> azexc.HttpResponseError:
    error = azexc.HttpResponseError(message=message)
    error.status_code = status
    error.error = azexc.ODataV4Format({"code": code, "message": message})
    return error


AWS_TABLE = [
    (_aws("AccessDeniedException"), KmsPermissionError, E.KMS_ACCESS_DENIED),
    (_aws("UnrecognizedClientException"), KmsPermissionError, E.KMS_ACCESS_DENIED),
    (_aws("403", 403, "<Code>AccessDenied</Code>"), KmsPermissionError, E.KMS_ACCESS_DENIED),
    (_aws("ThrottlingException"), TransientKmsError, E.KMS_THROTTLED),
    (_aws("SlowDown", 429), TransientKmsError, E.KMS_THROTTLED),
    (_aws("KMSInternalException", 500), TransientKmsError, E.KMS_UNAVAILABLE),
    (_aws("DependencyTimeoutException", 503), TransientKmsError, E.KMS_TIMEOUT),
    (_aws("InvalidCiphertextException"), IntegrityError, E.KMS_INVALID_CIPHERTEXT),
    (_aws("IncorrectKeyException"), IntegrityError, E.KMS_INVALID_CIPHERTEXT),
    (_aws("NotFoundException"), KmsConfigError, E.KMS_KEY_NOT_FOUND),
    (_aws("DisabledException"), KmsConfigError, E.KMS_KEY_DISABLED),
    (_aws("KMSInvalidStateException"), KmsConfigError, E.KMS_KEY_DISABLED),
    (ConnectTimeoutError(endpoint_url="https://kms"), TransientKmsError, E.KMS_TIMEOUT),
    (ReadTimeoutError(endpoint_url="https://kms"), TransientKmsError, E.KMS_TIMEOUT),
    (EndpointConnectionError(endpoint_url="https://kms"), TransientKmsError, E.KMS_UNAVAILABLE),
]

VAULT_TABLE = [
    (hvac_errors.Forbidden("denied", errors=["permission denied"]), "encrypt", KmsPermissionError),
    (hvac_errors.InvalidPath("no handler"), "keys", KmsConfigError),
    (hvac_errors.InvalidRequest(errors=["encryption key not found"]), "encrypt", KmsConfigError),
    (
        hvac_errors.InvalidRequest(errors=["message authentication failed"]),
        "decrypt",
        IntegrityError,
    ),
    (hvac_errors.VaultDown("sealed"), "decrypt", TransientKmsError),
    (hvac_errors.InternalServerError("boom"), "encrypt", TransientKmsError),
    (hvac_errors.RateLimitExceeded("slow down"), "encrypt", TransientKmsError),
    (requests.ConnectTimeout("timeout"), "encrypt", TransientKmsError),
    (requests.ConnectionError("refused"), "encrypt", TransientKmsError),
]

GCP_TABLE = [
    (gexc.PermissionDenied("no"), "encrypt", KmsPermissionError, E.KMS_ACCESS_DENIED),
    (gexc.Unauthenticated("no"), "decrypt", KmsPermissionError, E.KMS_ACCESS_DENIED),
    (auth_errors.RefreshError("bad key"), "encrypt", KmsPermissionError, E.KMS_ACCESS_DENIED),
    (gexc.NotFound("gone"), "encrypt", KmsConfigError, E.KMS_KEY_NOT_FOUND),
    (gexc.FailedPrecondition("disabled"), "encrypt", KmsConfigError, E.KMS_KEY_DISABLED),
    (gexc.InvalidArgument("bad aad"), "decrypt", IntegrityError, E.KMS_INVALID_CIPHERTEXT),
    (gexc.InvalidArgument("bad request"), "encrypt", KmsConfigError, E.CONFIG_INVALID),
    (gexc.ServiceUnavailable("down"), "encrypt", TransientKmsError, E.KMS_UNAVAILABLE),
    (gexc.InternalServerError("oops"), "encrypt", TransientKmsError, E.KMS_UNAVAILABLE),
    (gexc.DeadlineExceeded("slow"), "encrypt", TransientKmsError, E.KMS_TIMEOUT),
    (gexc.ResourceExhausted("quota"), "encrypt", TransientKmsError, E.KMS_THROTTLED),
    (gexc.RetryError("gave up", cause=None), "encrypt", TransientKmsError, E.KMS_UNAVAILABLE),
    (auth_errors.TransportError("dns"), "encrypt", TransientKmsError, E.KMS_UNAVAILABLE),
]

AZURE_TABLE = [
    (_azure(403, "Forbidden"), "wrapKey", KmsPermissionError, E.KMS_ACCESS_DENIED),
    (azexc.ClientAuthenticationError("no token"), "get", KmsPermissionError, E.KMS_ACCESS_DENIED),
    (_azure(403, "Forbidden", "key is disabled"), "wrapKey", KmsConfigError, E.KMS_KEY_DISABLED),
    (azexc.ResourceNotFoundError("gone"), "get", KmsConfigError, E.KMS_KEY_NOT_FOUND),
    (_azure(429, "Throttled"), "wrapKey", TransientKmsError, E.KMS_THROTTLED),
    (_azure(503, "ServiceUnavailable"), "unwrapKey", TransientKmsError, E.KMS_UNAVAILABLE),
    (_azure(400, "BadParameter"), "unwrapKey", IntegrityError, E.KMS_INVALID_CIPHERTEXT),
    (azexc.ServiceRequestError("refused"), "wrapKey", TransientKmsError, E.KMS_UNAVAILABLE),
    (azexc.ServiceResponseTimeoutError("slow"), "get", TransientKmsError, E.KMS_TIMEOUT),
]


def _check(mapped: TenantKeysError, expected: type[TenantKeysError], code: ErrorCode) -> None:
    assert type(mapped) is expected, mapped
    assert mapped.code is code
    assert mapped.provider_code


@pytest.mark.parametrize(("exc", "expected", "code"), AWS_TABLE)
def test_aws_mapping(exc: Exception, expected: type[TenantKeysError], code: ErrorCode) -> None:
    _check(aws.map_error(exc, "kms:Encrypt"), expected, code)


def test_aws_access_denied_names_every_action_and_the_doc() -> None:
    error = aws.map_error(_aws("AccessDeniedException", message="not allowed"), "kms:Decrypt")
    for action in aws.KMS_ACTIONS:
        assert action in error.message
    assert aws.POLICY_DOC == "docs/setup/AWS_KMS_SETUP.md#iam-policy"
    assert aws.POLICY_DOC in error.message
    assert error.provider_code == "AccessDeniedException"


@pytest.mark.parametrize(("exc", "operation", "expected"), VAULT_TABLE)
def test_vault_mapping(exc: Exception, operation: str, expected: type[TenantKeysError]) -> None:
    mapped = vault.map_error(exc, operation, "transit", "tk")
    assert type(mapped) is expected, mapped
    assert mapped.provider_code == type(exc).__name__


def test_vault_permission_error_names_policy_paths_and_capabilities() -> None:
    error = vault.map_error(hvac_errors.Forbidden("denied"), "decrypt", "kms", "tk")
    for fragment in ("kms/encrypt/tk", "kms/decrypt/tk", "kms/keys/tk", '"update"', '"read"'):
        assert fragment in error.message


@pytest.mark.parametrize(("exc", "operation", "expected", "code"), GCP_TABLE)
def test_gcp_mapping(
    exc: Exception, operation: str, expected: type[TenantKeysError], code: ErrorCode
) -> None:
    _check(gcp.map_error(exc, operation), expected, code)


def test_gcp_describe_denied_names_the_viewer_permission() -> None:
    error = gcp.map_error(gexc.PermissionDenied("no"), "get")
    assert "cloudkms.cryptoKeys.get" in error.message


def test_crc32c_known_answer() -> None:
    assert gcp.crc32c(b"123456789") == 0xE3069283  # RFC 3720 check value
    assert gcp.crc32c(b"") == 0


@pytest.mark.parametrize(("exc", "operation", "expected", "code"), AZURE_TABLE)
def test_azure_mapping(
    exc: Exception, operation: str, expected: type[TenantKeysError], code: ErrorCode
) -> None:
    _check(azure.map_error(exc, operation), expected, code)


@pytest.mark.parametrize(
    ("translate", "exc"),
    [
        (lambda: aws._translate("kms:Encrypt"), _aws("ThrottlingException")),
        (lambda: gcp._translate("encrypt"), gexc.ServiceUnavailable("down")),
        (lambda: azure._translate("wrapKey"), _azure(503)),
    ],
)
def test_translation_keeps_the_sdk_error_as_cause(
    translate: Callable[[], Any], exc: Exception
) -> None:
    with pytest.raises(TransientKmsError) as info, translate():
        raise exc
    assert info.value.__cause__ is exc


def test_vault_refused_login_is_a_permission_error() -> None:
    error = vault.map_error(
        hvac_errors.InvalidRequest(errors=["invalid role or secret ID"]), "login", "transit", "tk"
    )
    assert isinstance(error, KmsPermissionError)
    assert "TENANTKEYS_VAULT_ROLE_ID" in error.message
