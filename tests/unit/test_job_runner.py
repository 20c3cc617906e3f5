"""JobRunner decisions (reject / retry / dead letter) and the job contract, without Celery."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantkeys import jobs
from tenantkeys.errors import (
    ErrorCode,
    InvalidRequest,
    KmsPermissionError,
    TransientKmsError,
)
from tenantkeys.jobs.runner import JobRunner
from tests.helpers import FlakyLocal, make_runner

pytestmark = pytest.mark.unit


@pytest.fixture
def provider(tmp_path: Path) -> FlakyLocal:
    return FlakyLocal(tmp_path / "master.key")


@pytest.fixture
def runner(tmp_path: Path, provider: FlakyLocal) -> JobRunner:
    return make_runner(tmp_path, provider, max_retries=2)


def sign_kwargs(tenant: str = "acme", payload: bytes = b"hello") -> dict[str, object]:
    return {"tenant_id": tenant, "payload": jobs.encode_payload(payload)}


def test_sign_returns_an_ok_envelope(runner: JobRunner) -> None:
    outcome = runner.sign(sign_kwargs(), job_id="j1")
    assert outcome.retry_in is None and outcome.result is not None
    signature = jobs.unwrap(outcome.result)
    runner.service.verify("acme", b"hello", signature["jws"])


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        (sign_kwargs(tenant="bad tenant!"), ErrorCode.INVALID_TENANT),
        ({"tenant_id": "acme", "payload": "%%%"}, ErrorCode.INVALID_ENCODING),
        ({"tenant_id": "acme"}, ErrorCode.INVALID_ARGUMENT),
        ({**sign_kwargs(), "extra": 1}, ErrorCode.INVALID_ARGUMENT),
        (sign_kwargs(tenant="nokeys"), ErrorCode.KEY_NOT_FOUND),
    ],
)
def test_bad_input_is_an_error_result_without_retry_or_dead_letter(
    runner: JobRunner, kwargs: dict[str, object], code: ErrorCode
) -> None:
    outcome = runner.sign(kwargs, job_id="j1")
    assert outcome.retry_in is None and outcome.result is not None
    assert outcome.result["ok"] is False and outcome.result["error"]["code"] == code
    assert runner.deadletters.depth() == 0
    with pytest.raises(InvalidRequest):
        jobs.unwrap(outcome.result)


def test_transient_errors_retry_then_dead_letter(runner: JobRunner, provider: FlakyLocal) -> None:
    provider.fail_with = TransientKmsError("KMS timed out", provider="local")
    for attempt in range(2):
        outcome = runner.sign(sign_kwargs(), job_id="j1", retries=attempt)
        assert outcome.retry_in is not None and 0 <= outcome.retry_in <= 1.0
    outcome = runner.sign(sign_kwargs(), job_id="j1", retries=2)
    assert outcome.retry_in is None and outcome.result is not None
    entry_id = outcome.result["error"]["dead_letter"]
    entry = runner.deadletters.get(entry_id)
    assert entry.attempts == 3 and entry.code == "TK-KMS-UNAVAILABLE" and entry.job_id == "j1"
    with pytest.raises(TransientKmsError, match="dead-lettered"):
        jobs.unwrap(outcome.result)


def test_permission_errors_dead_letter_at_once(runner: JobRunner, provider: FlakyLocal) -> None:
    provider.fail_with = KmsPermissionError("needs kms:Decrypt; see docs", provider="aws")
    outcome = runner.sign(sign_kwargs(), job_id="j1")
    assert outcome.retry_in is None and outcome.result is not None
    entry = runner.deadletters.get(outcome.result["error"]["dead_letter"])
    assert entry.attempts == 1 and "kms:Decrypt" in entry.message


def test_sign_batch_isolates_bad_items(runner: JobRunner) -> None:
    items = [
        sign_kwargs(payload=b"a"),
        sign_kwargs(tenant="bad tenant!"),
        sign_kwargs(payload=b"c"),
    ]
    outcome = runner.sign_batch({"items": items}, job_id="b1")
    assert outcome.result is not None
    results = jobs.unwrap(outcome.result)["results"]
    assert [r["ok"] for r in results] == [True, False, True]
    assert results[1]["error"]["code"] == ErrorCode.INVALID_TENANT


def test_key_jobs(runner: JobRunner) -> None:
    created = jobs.unwrap(runner.create_keys({"tenant_id": "globex"}, job_id="c").result)
    kid = created["keys"][0]["kid"]
    rotated = jobs.unwrap(
        runner.rotate_key(
            {"tenant_id": "globex", "purpose": "signing", "expected_version": 1},
            job_id="r",
        ).result
    )
    assert rotated["rotated"] and rotated["new_version"] == 2
    again = jobs.unwrap(
        runner.rotate_key(
            {"tenant_id": "globex", "purpose": "signing", "expected_version": 1},
            job_id="r2",
        ).result
    )
    assert not again["rotated"]
    revoked = jobs.unwrap(runner.revoke_key({"tenant_id": "globex", "kid": kid}, job_id="v").result)
    assert revoked["status"] == "revoked"


def test_redaction_never_shows_payloads() -> None:
    kwargs = {"items": [sign_kwargs(payload=b"secret payload")], "tenant_id": "acme"}
    shown, shown_kwargs = jobs.argsrepr((), kwargs)
    assert jobs.encode_payload(b"secret payload") not in shown_kwargs
    assert "payload_sha256" in shown_kwargs and "payload_size" in shown_kwargs
    assert shown == "()"
