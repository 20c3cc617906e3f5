"""The table of what each error means (:mod:`tenantkeys.errors`): complete, pinned, and read.

Complete: every class carrying every code resolves to an action, an HTTP status, both metric
outcomes and a remedy that links its code's section. That every code *has* a section (and that
each link's anchor exists) is tests/docs/test_troubleshooting.py's job, not repeated here.
"""

from __future__ import annotations

from typing import get_args

import pytest

from tenantkeys import errors, telemetry
from tenantkeys.admin.checks import remedy_for
from tenantkeys.api.errors import http_status
from tenantkeys.errors import (
    CODE_OVERRIDES,
    Action,
    CacheUnavailable,
    CircuitOpenError,
    ConfigurationError,
    ErrorCode,
    IntegrityError,
    InvalidRequest,
    JobTimeout,
    KeyNotFound,
    KeyRevoked,
    KmsConfigError,
    KmsFailure,
    KmsPermissionError,
    SignatureFailure,
    StoreUnavailable,
    TenantKeysError,
    TransientError,
    TransientKmsError,
    VerificationError,
    as_error,
)
from tenantkeys.resilience import classify

pytestmark = pytest.mark.unit

CLASSES = sorted(
    (c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, TenantKeysError)),
    key=lambda c: c.__name__,
)
STATUSES = {400, 403, 404, 409, 413, 500, 503, 504}


def every_error() -> list[TenantKeysError]:
    return [cls("the message", code=code) for cls in CLASSES for code in ErrorCode]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_resolves_under_every_class(code: ErrorCode) -> None:
    for cls in CLASSES:
        error = cls("the message", code=code)
        where = f"{cls.__name__}({code})"
        assert error.action in get_args(Action), where
        assert error.http_status in STATUSES, where
        assert error.kms_outcome in get_args(KmsFailure), where
        assert error.signature_outcome in get_args(SignatureFailure), where
        assert error.retryable is (error.action == "retry"), where
        remedy = error.remedy
        assert remedy.strip(), where
        assert errors.doc_link(code) in remedy, f"{where}: the remedy does not link its section"
        assert "{" not in remedy.replace("{message}", ""), f"{where}: unfilled placeholder"


def test_labels_are_values_the_metrics_accept() -> None:
    assert set(get_args(KmsFailure)) | {"ok"} == set(get_args(telemetry.KmsOutcome))
    assert set(get_args(SignatureFailure)) <= set(get_args(telemetry.SignatureOutcome))


def test_overrides_name_only_codes() -> None:
    assert set(CODE_OVERRIDES) <= set(ErrorCode)
    assert all(CODE_OVERRIDES.values()), "an empty override says nothing"


@pytest.mark.parametrize(
    ("error", "action", "status", "kms", "signature"),
    [
        (TransientKmsError("slow"), "retry", 503, "transient", "failed"),
        (CircuitOpenError("open"), "retry", 503, "transient", "failed"),
        (StoreUnavailable("db down"), "retry", 503, "error", "failed"),
        (CacheUnavailable("redis down"), "retry", 503, "error", "failed"),
        (TransientError("x", code=ErrorCode.BROKER_UNAVAILABLE), "retry", 503, "error", "failed"),
        (JobTimeout("no worker"), "retry", 504, "error", "failed"),
        (ConfigurationError("bad setting"), "dead_letter", 503, "config", "failed"),
        (KmsConfigError("key disabled"), "dead_letter", 503, "config", "failed"),
        (KmsPermissionError("denied kms:Decrypt"), "dead_letter", 503, "permission", "failed"),
        (IntegrityError("tampered"), "dead_letter", 500, "integrity", "failed"),
        (InvalidRequest("bad"), "reject", 400, "error", "rejected"),
        (KeyNotFound("none"), "reject", 404, "error", "rejected"),
        (KeyRevoked("revoked"), "reject", 409, "error", "rejected"),
        (VerificationError("no"), "reject", 400, "error", "rejected"),
        (TenantKeysError("bug"), "dead_letter", 500, "error", "failed"),
    ],
)
def test_known_rows(
    error: TenantKeysError, action: str, status: int, kms: str, signature: str
) -> None:
    assert (error.action, error.http_status) == (action, status)
    assert (error.kms_outcome, error.signature_outcome) == (kms, signature)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidRequest("d", code=ErrorCode.DEAD_LETTER_NOT_FOUND), 404),
        (KeyNotFound("k", code=ErrorCode.UNKNOWN_KID), 404),
        (VerificationError("v", code=ErrorCode.UNKNOWN_KID), 404),
        (InvalidRequest("p", code=ErrorCode.PAYLOAD_TOO_LARGE), 413),
        (InvalidRequest("t", code=ErrorCode.INVALID_TENANT), 400),
    ],
)
def test_a_code_override_holds_whatever_class_carries_it(
    error: TenantKeysError, status: int
) -> None:
    assert error.http_status == status
    assert error.action == "reject"  # an override changes only what it names


def test_a_configuration_remedy_is_its_message() -> None:
    error = KmsPermissionError("the service identity was denied kms:Decrypt on key K")
    assert error.remedy.startswith("the service identity was denied kms:Decrypt on key K")
    assert error.remedy.endswith(error.doc)


def test_a_code_remedy_replaces_its_class_remedy() -> None:
    throttled = TransientKmsError("slow down", code=ErrorCode.KMS_THROTTLED)
    assert "quota" in throttled.remedy
    assert "reachable" in TransientKmsError("down").remedy
    assert "associated data" in IntegrityError("x", code=ErrorCode.DECRYPT_FAILED).remedy


def test_braces_in_a_message_are_not_a_template() -> None:
    assert "{doc}" in ConfigurationError("literal {doc} and {0}").remedy


def test_the_four_readers_answer_from_the_table() -> None:
    for error in every_error():
        assert classify(error) == error.action
        assert http_status(error) == error.http_status
        assert telemetry.kms_outcome(error) == error.kms_outcome
        assert remedy_for(error) == error.remedy
    assert telemetry.kms_outcome(None) == "ok"


@pytest.mark.parametrize("exc", [ValueError("postgres://user:hunter2@db"), KeyError("k")])
def test_an_unexpected_error_becomes_internal_by_class_name_only(exc: Exception) -> None:
    error = as_error(exc, "in a worker; see the worker log")
    assert error.code == ErrorCode.INTERNAL
    assert error.message == f"unexpected {type(exc).__name__} in a worker; see the worker log"
    assert "hunter2" not in error.remedy + error.one_line()
    assert (error.action, error.http_status, error.kms_outcome) == ("dead_letter", 500, "error")
    assert as_error(exc).message == f"unexpected {type(exc).__name__}"


def test_our_own_error_passes_through_unchanged() -> None:
    error = InvalidRequest("bad")
    assert as_error(error) is error


def test_the_job_result_keeps_retryable() -> None:
    assert TransientKmsError("x").to_dict()["retryable"] is True
    assert KmsPermissionError("x").to_dict()["retryable"] is False
