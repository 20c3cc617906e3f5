"""The error tree of tenantkeys.

Every error carries a stable ``code`` (``TK-...``) that has a section in
``docs/setup/KMS_TROUBLESHOOTING.md``. The class says what the caller does:

* :class:`TransientError` -- retry with backoff; KMS ones count toward the breaker.
* :class:`ConfigurationError` (and :class:`KmsPermissionError`) -- stop, tell the operator.
* :class:`InvalidRequest` -- reject the job; retrying cannot help.
* :class:`IntegrityError` -- a wrapped key or signature does not open under its context.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

DOCS_PAGE = "docs/setup/KMS_TROUBLESHOOTING.md"


class ErrorCode(StrEnum):
    """Every code the code can emit. Each has a section in the troubleshooting page."""

    INTERNAL = "TK-INTERNAL"
    CONFIG_INVALID = "TK-CONFIG-INVALID"
    CONFIG_UNKNOWN_PROVIDER = "TK-CONFIG-UNKNOWN-PROVIDER"
    CONFIG_MISSING_SETTING = "TK-CONFIG-MISSING-SETTING"
    CONFIG_LOCAL_IN_PRODUCTION = "TK-CONFIG-LOCAL-IN-PRODUCTION"
    PROVIDER_NOT_INSTALLED = "TK-PROVIDER-NOT-INSTALLED"
    KMS_ACCESS_DENIED = "TK-KMS-ACCESS-DENIED"
    KMS_KEY_NOT_FOUND = "TK-KMS-KEY-NOT-FOUND"
    KMS_KEY_DISABLED = "TK-KMS-KEY-DISABLED"
    KMS_INVALID_CIPHERTEXT = "TK-KMS-INVALID-CIPHERTEXT"
    KMS_UNAVAILABLE = "TK-KMS-UNAVAILABLE"
    KMS_THROTTLED = "TK-KMS-THROTTLED"
    KMS_TIMEOUT = "TK-KMS-TIMEOUT"
    KMS_CIRCUIT_OPEN = "TK-KMS-CIRCUIT-OPEN"
    MASTER_KEY_INVALID = "TK-LOCAL-MASTER-KEY-INVALID"
    STORE_UNAVAILABLE = "TK-STORE-UNAVAILABLE"
    CACHE_UNAVAILABLE = "TK-CACHE-UNAVAILABLE"
    INVALID_TENANT = "TK-INVALID-TENANT"
    INVALID_PURPOSE = "TK-INVALID-PURPOSE"
    INVALID_ARGUMENT = "TK-INVALID-ARGUMENT"
    PAYLOAD_TOO_LARGE = "TK-PAYLOAD-TOO-LARGE"
    INVALID_ENCODING = "TK-INVALID-ENCODING"
    INVALID_JSON = "TK-INVALID-JSON"
    INVALID_JWS = "TK-INVALID-JWS"
    UNKNOWN_KID = "TK-UNKNOWN-KID"
    KEY_NOT_FOUND = "TK-KEY-NOT-FOUND"
    KEY_REVOKED = "TK-KEY-REVOKED"
    TENANT_MISMATCH = "TK-TENANT-MISMATCH"
    SIGNATURE_INVALID = "TK-SIGNATURE-INVALID"
    DECRYPT_FAILED = "TK-DECRYPT-FAILED"
    AUTH_REQUIRED = "TK-AUTH-REQUIRED"
    AUTH_FORBIDDEN = "TK-AUTH-FORBIDDEN"
    MESSAGE_UNSIGNED = "TK-MESSAGE-UNSIGNED"
    JOB_TIMEOUT = "TK-JOB-TIMEOUT"
    JOB_DEAD_LETTERED = "TK-JOB-DEAD-LETTERED"
    DEAD_LETTER_NOT_FOUND = "TK-DEAD-LETTER-NOT-FOUND"
    BROKER_UNAVAILABLE = "TK-BROKER-UNAVAILABLE"


def doc_link(code: str) -> str:
    """The troubleshooting section for ``code`` (GitHub-style anchor)."""
    return f"{DOCS_PAGE}#{code.lower()}"


class TenantKeysError(Exception):
    """Root of every error tenantkeys raises on purpose.

    ``provider_code`` keeps the KMS's own error code (``AccessDeniedException``,
    ``PERMISSION_DENIED`` ...) so an operator can search the provider's docs for it.
    """

    default_code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        provider: str | None = None,
        provider_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: ErrorCode = code or self.default_code
        self.provider = provider
        self.provider_code = provider_code

    @property
    def doc(self) -> str:
        return doc_link(self.code)

    def one_line(self) -> str:
        """``CODE: message (provider code) -- see doc``; what CLIs and task results show."""
        detail = f" [{self.provider}: {self.provider_code}]" if self.provider_code else ""
        text = " ".join(self.message.split())
        return f"{self.code}: {text}{detail} (see {self.doc})"

    def to_dict(self) -> dict[str, str | bool | None]:
        return {
            "code": str(self.code),
            "error": type(self).__name__,
            "message": self.message,
            "provider": self.provider,
            "provider_code": self.provider_code,
            "retryable": self.retryable,
            "doc": self.doc,
        }


class TransientError(TenantKeysError):
    """Worth retrying later: timeouts, throttling, 5xx, connection failures."""

    default_code = ErrorCode.KMS_UNAVAILABLE
    retryable = True


class TransientKmsError(TransientError):
    """The KMS could not answer now. Counts toward the provider's circuit breaker."""


class CircuitOpenError(TransientKmsError):
    """The breaker for this provider is open; the call was not attempted."""

    default_code = ErrorCode.KMS_CIRCUIT_OPEN


class JobTimeout(TransientError):
    """No worker answered a queued job in time; the job may still run (same job id)."""

    default_code = ErrorCode.JOB_TIMEOUT


class StoreUnavailable(TransientError):
    """The key store (database) cannot be reached."""

    default_code = ErrorCode.STORE_UNAVAILABLE


class CacheUnavailable(TransientError):
    """Redis (L2 cache, locks, pub/sub) cannot be reached."""

    default_code = ErrorCode.CACHE_UNAVAILABLE


class ConfigurationError(TenantKeysError):
    """Settings or the KMS set-up are wrong: stop and tell the operator; no retry."""

    default_code = ErrorCode.CONFIG_INVALID


class KmsConfigError(ConfigurationError):
    """The KMS key is missing, disabled or of the wrong kind."""

    default_code = ErrorCode.KMS_KEY_NOT_FOUND


class KmsPermissionError(KmsConfigError):
    """The service identity lacks a permission; the message names it."""

    default_code = ErrorCode.KMS_ACCESS_DENIED


class IntegrityError(TenantKeysError):
    """A wrapped key or ciphertext does not open: wrong context, wrong tenant, tampering."""

    default_code = ErrorCode.KMS_INVALID_CIPHERTEXT


class InvalidRequest(TenantKeysError):
    """The input is wrong; the job is rejected with this code and never retried."""

    default_code = ErrorCode.INVALID_ARGUMENT


class KeyNotFound(InvalidRequest):
    """The tenant has no key for this purpose, or no key with this kid."""

    default_code = ErrorCode.KEY_NOT_FOUND


class KeyRevoked(InvalidRequest):
    """The key was revoked: it neither signs nor verifies."""

    default_code = ErrorCode.KEY_REVOKED


class VerificationError(InvalidRequest):
    """A signature does not verify; ``code`` says why."""

    default_code = ErrorCode.SIGNATURE_INVALID
