"""The error tree of tenantkeys, and the one table of what each error means.

Every error carries a stable ``code`` (``TK-...``) that has a section in
``docs/setup/KMS_TROUBLESHOOTING.md``. The class says what the caller does:

* :class:`TransientError` -- retry with backoff; KMS ones count toward the breaker.
* :class:`ConfigurationError` (and :class:`KmsPermissionError`) -- stop, tell the operator.
* :class:`InvalidRequest` -- reject the job; retrying cannot help.
* :class:`IntegrityError` -- a wrapped key or signature does not open under its context.

Each class declares its :class:`Meaning` (``default_meaning``: action, HTTP status, KMS metric
outcome, remedy); :data:`CODE_OVERRIDES` holds what a code needs that differs from the class
it is raised as. Workers, the API, the metrics and the admin checks read ``exc.action``,
``exc.http_status``, ``exc.kms_outcome``, ``exc.signature_outcome`` and ``exc.remedy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import ClassVar, Final, Literal, TypedDict

DOCS_PAGE = "docs/setup/KMS_TROUBLESHOOTING.md"

#: What a job does with an error: retry it later, reject it (bad input), or dead-letter it.
Action = Literal["retry", "reject", "dead_letter"]
#: The ``outcome`` label of a KMS request that failed (``ok`` is the one success label).
KmsFailure = Literal["transient", "permission", "config", "integrity", "error"]
#: The ``outcome`` label of a signature that failed: the caller's fault, or given up on.
SignatureFailure = Literal["rejected", "failed"]


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
    STORE_NOT_FOUND = "TK-STORE-NOT-FOUND"
    CACHE_UNAVAILABLE = "TK-CACHE-UNAVAILABLE"
    INVALID_TENANT = "TK-INVALID-TENANT"
    INVALID_PURPOSE = "TK-INVALID-PURPOSE"
    INVALID_ARGUMENT = "TK-INVALID-ARGUMENT"
    PAYLOAD_TOO_LARGE = "TK-PAYLOAD-TOO-LARGE"
    INVALID_ENCODING = "TK-INVALID-ENCODING"
    INVALID_JSON = "TK-INVALID-JSON"
    JSON_TOO_DEEP = "TK-JSON-TOO-DEEP"
    JSON_NOT_I_JSON = "TK-JSON-NOT-I-JSON"
    INVALID_JWS = "TK-INVALID-JWS"
    UNKNOWN_KID = "TK-UNKNOWN-KID"
    KEY_NOT_FOUND = "TK-KEY-NOT-FOUND"
    KEY_REVOKED = "TK-KEY-REVOKED"
    TENANT_MISMATCH = "TK-TENANT-MISMATCH"
    SIGNATURE_INVALID = "TK-SIGNATURE-INVALID"
    JWS_NONCANONICAL_ENCODING = "TK-JWS-NONCANONICAL-ENCODING"
    JWS_DUPLICATE_HEADER = "TK-JWS-DUPLICATE-HEADER"
    JWS_CRIT_UNSUPPORTED = "TK-JWS-CRIT-UNSUPPORTED"
    JWS_B64_UNSUPPORTED = "TK-JWS-B64-UNSUPPORTED"
    JWS_ALG_UNSUPPORTED = "TK-JWS-ALG-UNSUPPORTED"
    JWS_KEY_TYPE_MISMATCH = "TK-JWS-KEY-TYPE-MISMATCH"
    JWS_ALG_MISMATCH = "TK-JWS-ALG-MISMATCH"
    JWS_HIGH_S = "TK-JWS-HIGH-S"
    EVIDENCE_MALFORMED = "TK-EVIDENCE-MALFORMED"
    EVIDENCE_FORMAT_UNSUPPORTED = "TK-EVIDENCE-FORMAT-UNSUPPORTED"
    EVIDENCE_UNSAFE_MEMBER = "TK-EVIDENCE-UNSAFE-MEMBER"
    EVIDENCE_TOO_LARGE = "TK-EVIDENCE-TOO-LARGE"
    EVIDENCE_INPUT = "TK-EVIDENCE-INPUT"
    EVIDENCE_PAYLOAD_MISSING = "TK-EVIDENCE-PAYLOAD-MISSING"
    EVIDENCE_REVOKED_NO_PROOF = "TK-EVIDENCE-REVOKED-NO-PROOF"
    EVIDENCE_TIMESTAMP_INVALID = "TK-EVIDENCE-TIMESTAMP-INVALID"
    DECRYPT_FAILED = "TK-DECRYPT-FAILED"
    AUTH_REQUIRED = "TK-AUTH-REQUIRED"
    AUTH_FORBIDDEN = "TK-AUTH-FORBIDDEN"
    MESSAGE_UNSIGNED = "TK-MESSAGE-UNSIGNED"
    JOB_TIMEOUT = "TK-JOB-TIMEOUT"
    JOB_DEAD_LETTERED = "TK-JOB-DEAD-LETTERED"
    DEAD_LETTER_NOT_FOUND = "TK-DEAD-LETTER-NOT-FOUND"
    BROKER_UNAVAILABLE = "TK-BROKER-UNAVAILABLE"
    BROKER_QUEUE_TYPE = "TK-BROKER-QUEUE-TYPE"
    PORT_IN_USE = "TK-PORT-IN-USE"
    TSA_UNAVAILABLE = "TK-TSA-UNAVAILABLE"
    TSA_REFUSED = "TK-TSA-REFUSED"
    TIMESTAMP_INVALID = "TK-TIMESTAMP-INVALID"
    SCOPE_DENIED = "TK-SCOPE-DENIED"
    JOB_ID_CONFLICT = "TK-JOB-ID-CONFLICT"
    JOB_NOT_FOUND = "TK-JOB-NOT-FOUND"
    FRONT_DOOR_OFF = "TK-FRONT-DOOR-OFF"


class Override(TypedDict, total=False):
    """What a code means that differs from the class it is raised as."""

    http_status: int
    remedy: str


#: Per code, whatever class carries it (``TK-UNKNOWN-KID`` is raised as KeyNotFound and as
#: VerificationError, and is a 404 either way).
CODE_OVERRIDES: Final[Mapping[ErrorCode, Override]] = {
    ErrorCode.UNKNOWN_KID: {"http_status": 404},
    ErrorCode.KEY_NOT_FOUND: {"http_status": 404},
    ErrorCode.DEAD_LETTER_NOT_FOUND: {"http_status": 404},
    ErrorCode.KEY_REVOKED: {"http_status": 409},
    ErrorCode.PAYLOAD_TOO_LARGE: {"http_status": 413},
    ErrorCode.SCOPE_DENIED: {
        "http_status": 403,
        "remedy": "the producer may not sign for this tenant: send the job from a producer "
        "whose scope names the tenant, or add the tenant to this producer's entry in "
        "TENANTKEYS_PRODUCER_SCOPES_FILE and restart the workers and the API (see {doc})",
    },
    ErrorCode.JOB_ID_CONFLICT: {
        "http_status": 409,
        "remedy": "another producer already used this job id; the first job's result is kept. "
        "Give each job a fresh id (a UUID) (see {doc})",
    },
    ErrorCode.JOB_NOT_FOUND: {
        "http_status": 404,
        "remedy": "check the job id; a job is found only by the producer that submitted it, "
        "and only while its result is kept (TENANTKEYS_RESULT_EXPIRES_SECONDS) (see {doc})",
    },
    ErrorCode.FRONT_DOOR_OFF: {
        "http_status": 404,
        "remedy": "the HTTP front door needs scoped producers: set "
        "TENANTKEYS_PRODUCER_SCOPES_FILE on the API and restart it (see {doc})",
    },
    ErrorCode.KMS_THROTTLED: {
        "remedy": "the KMS throttled the service; calls are retried with backoff. If it "
        "persists, check the key cache (TTL, size), spread bulk jobs or ask the provider for a "
        "higher quota (see {doc})"
    },
    ErrorCode.DECRYPT_FAILED: {
        "remedy": "decrypt with the same tenant and associated data as at encryption time; "
        "treat tampering as an incident (see {doc})"
    },
    ErrorCode.TSA_UNAVAILABLE: {
        "remedy": "the time-stamping authority (TENANTKEYS_TSA_URL) did not answer; the "
        "signature is retried, never issued without its timestamp. Check that the TSA is up "
        "and reachable from the workers (see {doc})"
    },
    ErrorCode.TIMESTAMP_INVALID: {
        "remedy": "the timestamp token is not over this JWS signature or not signed by the "
        "trusted TSA: check TENANTKEYS_TSA_CA_FILE or --tsa-ca names the TSA's CA (see {doc})"
    },
    ErrorCode.JOB_DEAD_LETTERED: {
        "remedy": "fix the original error (tenantkeys dlq show ID names its code), then "
        "tenantkeys dlq replay ID (see {doc})"
    },
}


def doc_link(code: str) -> str:
    """The troubleshooting section for ``code`` (GitHub-style anchor)."""
    return f"{DOCS_PAGE}#{code.lower()}"


@dataclass(frozen=True)
class Meaning:
    """What an error means to each part that handles it: one row of the table.

    ``remedy`` says what an operator or caller does; ``{message}`` and ``{doc}`` in it are
    filled in from the error.
    """

    action: Action
    http_status: int
    kms_outcome: KmsFailure
    remedy: str

    @property
    def signature_outcome(self) -> SignatureFailure:
        """``rejected`` for bad input (the caller's fault), ``failed`` for what was given up on."""
        # Derived from the action, not declared beside it, so the two cannot disagree.
        return "rejected" if self.action == "reject" else "failed"


class TenantKeysError(Exception):
    """Root of every error tenantkeys raises on purpose.

    ``provider_code`` keeps the KMS's own error code (``AccessDeniedException``,
    ``PERMISSION_DENIED`` ...) so an operator can search the provider's docs for it.
    """

    default_code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    default_meaning: ClassVar[Meaning] = Meaning(
        "dead_letter",
        500,
        "error",
        "an error tenantkeys did not anticipate: the log of the process that reported it has "
        "the traceback; report it with that log (see {doc})",
    )

    def __init__(
        self,
        message: str,
        detail: Mapping[str, object] | None = None,
        *,
        code: ErrorCode | None = None,
        provider: str | None = None,
        provider_code: str | None = None,
    ) -> None:
        if detail is not None:
            # Rebuilt from a failed job's stored exception, ``[one line, detail]`` (Celery
            # calls the class with those arguments): the detail holds the facts.
            message = str(detail.get("message") or message)
            code = code or _known_code(detail.get("code"))
            provider = provider or _text(detail.get("provider"))
            provider_code = provider_code or _text(detail.get("provider_code"))
        super().__init__(message)
        self.message = message
        self.code: ErrorCode = code or self.default_code
        self.provider = provider
        self.provider_code = provider_code
        #: What a failed job stored with the error (its dead letter, per-item results).
        self.detail: dict[str, object] | None = dict(detail) if detail is not None else None

    @property
    def doc(self) -> str:
        """The troubleshooting section of this error's code."""
        return doc_link(self.code)

    @property
    def meaning(self) -> Meaning:
        """The class's :class:`Meaning` with the overrides of this error's code applied."""
        override = CODE_OVERRIDES.get(self.code)
        return replace(self.default_meaning, **override) if override else self.default_meaning

    @property
    def action(self) -> Action:
        """``retry``, ``reject`` or ``dead_letter``: what a job does with this error."""
        return self.meaning.action

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (the action is ``retry``)."""
        return self.action == "retry"

    @property
    def http_status(self) -> int:
        """The HTTP status the ops API answers with."""
        return self.meaning.http_status

    @property
    def kms_outcome(self) -> KmsFailure:
        """The ``outcome`` label of a KMS request that raised this error."""
        return self.meaning.kms_outcome

    @property
    def signature_outcome(self) -> SignatureFailure:
        """The ``outcome`` label of a signing job that ended with this error."""
        return self.meaning.signature_outcome

    @property
    def remedy(self) -> str:
        """What an operator or caller does about this error; names its doc section."""
        return self.meaning.remedy.format(message=self.message, doc=self.doc)

    def one_line(self) -> str:
        """``CODE: message (provider code) -- see doc``; what CLIs and task results show."""
        detail = f" [{self.provider}: {self.provider_code}]" if self.provider_code else ""
        text = " ".join(self.message.split())
        return f"{self.code}: {text}{detail} (see {self.doc})"

    def to_dict(self) -> dict[str, str | bool | None]:
        """The error as a job result or API body carries it (no traceback, no secrets)."""
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
    default_meaning = Meaning(
        "retry",
        503,
        "error",
        "a dependency did not answer; the work is retried with backoff. If it persists, check "
        "that the one the code names is up and reachable from this host (see {doc})",
    )


class TransientKmsError(TransientError):
    """The KMS could not answer now. Counts toward the provider's circuit breaker."""

    default_meaning = Meaning(
        "retry",
        503,
        "transient",
        "the KMS did not answer: check that it is up and reachable from this host "
        "(endpoint, network, DNS, proxy), then validate again (see {doc})",
    )


class CircuitOpenError(TransientKmsError):
    """The breaker for this provider is open; the call was not attempted."""

    default_code = ErrorCode.KMS_CIRCUIT_OPEN


class JobTimeout(TransientError):
    """No worker answered a queued job in time; the job may still run (same job id)."""

    default_code = ErrorCode.JOB_TIMEOUT
    default_meaning = Meaning(
        "retry",
        504,
        "error",
        "no worker finished the job in time: check that a worker runs (celery -A "
        "workers.app:app inspect ping) and the queue is not backed up; tenantkeys job show "
        "JOB_ID fetches the result later, and resubmitting with the same job id is safe "
        "(see {doc})",
    )


class StoreUnavailable(TransientError):
    """The key store (database) cannot be reached."""

    default_code = ErrorCode.STORE_UNAVAILABLE


class CacheUnavailable(TransientError):
    """Redis (L2 cache, locks, pub/sub) cannot be reached."""

    default_code = ErrorCode.CACHE_UNAVAILABLE


class ConfigurationError(TenantKeysError):
    """Settings or the KMS set-up are wrong: stop and tell the operator; no retry."""

    default_code = ErrorCode.CONFIG_INVALID
    # The message names what to change (a setting, a permission), so it is the remedy.
    default_meaning = Meaning("dead_letter", 503, "config", "{message} Troubleshooting: {doc}")


class KmsConfigError(ConfigurationError):
    """The KMS key is missing, disabled or of the wrong kind."""

    default_code = ErrorCode.KMS_KEY_NOT_FOUND


class KmsPermissionError(KmsConfigError):
    """The service identity lacks a permission; the message names it."""

    default_code = ErrorCode.KMS_ACCESS_DENIED
    default_meaning = replace(KmsConfigError.default_meaning, kms_outcome="permission")


class IntegrityError(TenantKeysError):
    """A wrapped key or ciphertext does not open: wrong context, wrong tenant, tampering."""

    default_code = ErrorCode.KMS_INVALID_CIPHERTEXT
    default_meaning = Meaning(
        "dead_letter",
        500,
        "integrity",
        "a ciphertext did not open under its context (another key, another tenant, altered "
        "bytes): check that the configured key id names one key and is not being replaced "
        "(see {doc})",
    )


class InvalidRequest(TenantKeysError):
    """The input is wrong; the job is rejected with this code and never retried."""

    default_code = ErrorCode.INVALID_ARGUMENT
    default_meaning = Meaning(
        "reject",
        400,
        "error",
        "correct the request as the message says; sent again unchanged, it fails again (see {doc})",
    )


class KeyNotFound(InvalidRequest):
    """The tenant has no key for this purpose, or no key with this kid."""

    default_code = ErrorCode.KEY_NOT_FOUND
    default_meaning = replace(
        InvalidRequest.default_meaning,
        remedy="create the tenant's keys (tenantkeys keys create --tenant T) or name a kid it "
        "has; check that every process uses the same database (see {doc})",
    )


class KeyRevoked(InvalidRequest):
    """The key was revoked: it neither signs nor verifies."""

    default_code = ErrorCode.KEY_REVOKED
    default_meaning = replace(
        InvalidRequest.default_meaning,
        remedy="revocation cannot be undone: have the payload signed again with the tenant's "
        "active key (see {doc})",
    )


class VerificationError(InvalidRequest):
    """A signature does not verify; ``code`` says why."""

    default_code = ErrorCode.SIGNATURE_INVALID


class ScopeDenied(InvalidRequest):
    """The job's producer may not sign for a tenant it names (TENANTKEYS_PRODUCER_SCOPES_FILE)."""

    default_code = ErrorCode.SCOPE_DENIED


class JobIdConflict(InvalidRequest):
    """Another producer used this job id first; its job and result are left as they are."""

    default_code = ErrorCode.JOB_ID_CONFLICT


def as_error(exc: BaseException, where: str = "") -> TenantKeysError:
    """``exc`` if it is ours; otherwise ``TK-INTERNAL`` naming only its class.

    The original text is dropped: a driver's message may hold a connection string or a key id.
    ``where`` (``"in a worker; see the worker log"``) tells the reader where to look.
    """
    if isinstance(exc, TenantKeysError):
        return exc
    return TenantKeysError(" ".join(filter(None, ("unexpected", type(exc).__name__, where))))


def _known_code(value: object) -> ErrorCode | None:
    try:
        return ErrorCode(str(value))
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return str(value) if value else None
