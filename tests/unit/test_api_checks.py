"""The API's checks without services: validation steps, the KMS health cache, token roles and
the error-to-HTTP mapping."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tenantkeys.admin.checks import (
    KmsHealthCache,
    check_kms,
    error_code,
    unguarded,
    validate_configured,
    validate_provider,
)
from tenantkeys.api.auth import Role, TokenTable
from tenantkeys.api.errors import http_status
from tenantkeys.errors import (
    CacheUnavailable,
    ConfigurationError,
    ErrorCode,
    IntegrityError,
    InvalidRequest,
    JobTimeout,
    KeyNotFound,
    KeyRevoked,
    KmsPermissionError,
    TenantKeysError,
    TransientKmsError,
)
from tenantkeys.keys.kms import MeteredProvider
from tenantkeys.providers import Context, HealthReport, KeyDescription, KmsProvider
from tenantkeys.providers.local import LocalProvider

pytestmark = pytest.mark.unit


class FakeKms(KmsProvider):
    """An in-memory KMS whose faults are switches: context ignored, denied ops, odd bytes."""

    name = "local"

    def __init__(
        self,
        *,
        binds_context: bool = True,
        denied: tuple[str, ...] = (),
        corrupt: bool = False,
        enabled: bool = True,
        crash: str = "",
    ) -> None:
        self.binds_context, self.denied, self.corrupt = binds_context, denied, corrupt
        self.enabled, self.crash = enabled, crash

    @property
    def key_id(self) -> str:
        return "fake-key"

    def _gate(self, operation: str) -> None:
        if operation == self.crash:
            raise RuntimeError("secret-detail-from-sdk")
        if operation in self.denied:
            raise KmsPermissionError(f"fake KMS denied kms:{operation}", provider="local")

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        self._gate("Encrypt")
        bound = repr(sorted(context.items())).encode() if self.binds_context else b""
        return bound + b"|" + plaintext

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        self._gate("Decrypt")
        # Split at the first "|": the random plaintext may contain that byte, the context not.
        bound, _, plaintext = ciphertext.partition(b"|")
        if self.binds_context and bound != repr(sorted(context.items())).encode():
            raise IntegrityError("context mismatch", provider="local")
        return bytearray(b"\x00" * len(plaintext) if self.corrupt else plaintext)

    def describe(self) -> KeyDescription:
        self._gate("DescribeKey")
        return KeyDescription("local", "fake-key", self.enabled, "AES")


def by_step(provider: KmsProvider) -> dict[str, Any]:
    return {step.step: step for step in validate_provider(provider).steps}


def test_local_provider_passes_every_step(tmp_path: Path) -> None:
    report = validate_provider(LocalProvider(tmp_path / "master.key"))
    assert report.ok and report.failed == []
    assert [s.step for s in report.steps] == [
        "generate",
        "encrypt",
        "decrypt",
        "describe",
        "wrong_context_decrypt",
    ]
    assert report.to_dict()["steps"][0] == {
        "step": "generate",
        "ok": True,
        "latency_ms": report.steps[0].latency_ms,
        "skipped": False,
    }


def test_a_kms_that_ignores_the_context_fails_the_wrong_context_step() -> None:
    step = by_step(FakeKms(binds_context=False))["wrong_context_decrypt"]
    assert not step.ok and step.error_code == "TK-KMS-INVALID-CIPHERTEXT"
    assert "context binding is not enforced" in step.remedy


def test_denied_encrypt_names_the_permission_and_decrypt_falls_back_to_generate() -> None:
    steps = by_step(FakeKms(denied=("Encrypt",)))
    # generate_data_key of the base class encrypts too: both name the missing permission.
    for name in ("generate", "encrypt"):
        assert steps[name].error_code == "TK-KMS-ACCESS-DENIED"
        assert "kms:Encrypt" in steps[name].remedy
    assert steps["decrypt"].skipped and steps["describe"].ok


def test_decrypt_fallback_uses_the_generated_key_when_only_encrypt_fails() -> None:
    class EncryptDenied(FakeKms):
        def generate_data_key(self, context: Context) -> Any:
            self.denied = ()
            try:
                return super().generate_data_key(context)
            finally:
                self.denied = ("Encrypt",)

    steps = by_step(EncryptDenied(denied=("Encrypt",)))
    assert steps["generate"].ok and not steps["encrypt"].ok
    assert steps["decrypt"].ok and steps["wrong_context_decrypt"].ok


def test_wrong_bytes_disabled_key_and_unmapped_errors_are_reported() -> None:
    assert by_step(FakeKms(corrupt=True))["decrypt"].error_code == "TK-KMS-INVALID-CIPHERTEXT"
    assert by_step(FakeKms(enabled=False))["describe"].error_code == "TK-KMS-KEY-DISABLED"
    crashed = by_step(FakeKms(crash="DescribeKey"))["describe"]
    assert crashed.error_code == "TK-INTERNAL" and "RuntimeError" in crashed.message
    assert "secret-detail" not in str(crashed)


def test_validate_configured_bypasses_wrappers_but_stays_metered() -> None:
    inner = FakeKms()
    metered = MeteredProvider(inner)
    assert unguarded(metered) is inner
    assert validate_configured(metered).ok


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_health_is_cached_for_the_interval_then_checked_again() -> None:
    calls: list[int] = []

    class Counting(FakeKms):
        def describe(self) -> KeyDescription:
            calls.append(1)
            return super().describe()

    clock, provider = Clock(), Counting()
    cache = KmsHealthCache(lambda: provider, ttl=5.0, deadline=5.0, name="local", clock=clock)
    try:
        assert cache.get().ok and cache.get().ok and len(calls) == 1
        provider.crash = "DescribeKey"
        clock.now = 4.9
        assert cache.get().ok  # still within the interval
        clock.now = 5.1
        down = cache.get()  # one interval later the stopped KMS shows
        assert not down.ok and down.detail.startswith("TK-INTERNAL") and len(calls) == 2
    finally:
        cache.close()


def test_a_hanging_kms_is_down_after_the_deadline() -> None:
    release = threading.Event()

    class Hanging(FakeKms):
        def describe(self) -> KeyDescription:
            release.wait(10)
            return super().describe()

    cache = KmsHealthCache(Hanging, ttl=0.0, deadline=0.05, name="local")
    try:
        report = cache.get()
        assert not report.ok and report.detail.startswith("TK-KMS-TIMEOUT")
        assert check_kms(report).code == "TK-KMS-TIMEOUT"
    finally:
        release.set()
        cache.close()


def test_a_provider_that_cannot_be_built_is_down_with_its_code() -> None:
    def broken() -> KmsProvider:
        raise CacheUnavailable("Redis does not answer")

    cache = KmsHealthCache(broken, ttl=1.0, deadline=1.0, name="aws")
    try:
        report = cache.get()
    finally:
        cache.close()
    assert (report.provider, report.ok) == ("aws", False)
    assert check_kms(report).code == "TK-CACHE-UNAVAILABLE"


def test_check_kms_strips_the_code_from_the_detail() -> None:
    down = HealthReport("aws", "k", False, 1.0, "TK-KMS-UNAVAILABLE: gone")
    assert check_kms(down).to_dict() == {
        "status": "DOWN",
        "latency_ms": 1.0,
        "code": "TK-KMS-UNAVAILABLE",
        "detail": "gone",
    }
    assert error_code("no code here", ErrorCode.KMS_UNAVAILABLE) == "TK-KMS-UNAVAILABLE"


def digest(token: str) -> SecretStr:
    return SecretStr(hashlib.sha256(token.encode()).hexdigest())


def test_token_roles() -> None:
    table = TokenTable(
        digest("admin-token"), SecretStr(digest("reader").get_secret_value().upper())
    )
    assert table.role_of("admin-token") is Role.ADMIN
    assert table.role_of("reader") is Role.READER
    for wrong in ("", "admin-token ", "x" * 10_000, "reader\x00"):
        assert table.role_of(wrong) is None
    assert TokenTable(None, None).role_of("anything") is None
    assert not TokenTable(None, SecretStr("  ")).configured


@pytest.mark.parametrize("value", ["plain-token", "ab" * 31, "g" * 64])
def test_a_token_setting_must_be_a_sha256_digest(value: str) -> None:
    with pytest.raises(ConfigurationError, match="SHA-256"):
        TokenTable(SecretStr(value), None)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidRequest("bad"), 400),
        (InvalidRequest("t", code=ErrorCode.INVALID_TENANT), 400),
        (KeyNotFound("k"), 404),
        (InvalidRequest("d", code=ErrorCode.DEAD_LETTER_NOT_FOUND), 404),
        (KeyRevoked("r"), 409),
        (InvalidRequest("p", code=ErrorCode.PAYLOAD_TOO_LARGE), 413),
        (TransientKmsError("t"), 503),
        (KmsPermissionError("p"), 503),
        (ConfigurationError("c"), 503),
        (JobTimeout("j"), 504),
        (IntegrityError("i"), 500),
        (TenantKeysError("x"), 500),
    ],
)
def test_http_status_of_each_error_kind(error: TenantKeysError, status: int) -> None:
    assert http_status(error) == status
