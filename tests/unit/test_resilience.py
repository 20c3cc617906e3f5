"""Retry policy, error classification and the Redis-shared circuit breaker (fakeredis)."""

from __future__ import annotations

import time

import fakeredis
import pytest

from tenantkeys.errors import (
    CircuitOpenError,
    ConfigurationError,
    IntegrityError,
    InvalidRequest,
    KeyNotFound,
    KmsPermissionError,
    StoreUnavailable,
    TransientKmsError,
)
from tenantkeys.providers import Context, KeyDescription, KmsProvider
from tenantkeys.resilience import Resilience, RetryPolicy, as_error, classify, retry_delay

pytestmark = pytest.mark.unit


class ScriptedProvider(KmsProvider):
    """A provider whose next outcome the test sets; counts calls."""

    name = "aws"

    def __init__(self) -> None:
        self.fail_with: Exception | None = None
        self.calls = 0

    @property
    def key_id(self) -> str:
        return "scripted"

    def encrypt(self, plaintext: bytes, context: Context) -> bytes:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        return b"w" + plaintext

    def decrypt(self, ciphertext: bytes, context: Context) -> bytearray:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        return bytearray(ciphertext[1:])

    def describe(self) -> KeyDescription:
        return KeyDescription(self.name, self.key_id, True, "test")


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def resilience(server: fakeredis.FakeServer, **options: float) -> Resilience:
    client = fakeredis.FakeRedis(server=server)
    return Resilience(
        client,
        "tktest",
        fail_max=int(options.get("fail_max", 3)),
        reset_timeout=options.get("reset_timeout", 30.0),
    )


@pytest.mark.parametrize("attempt", range(12))
def test_retry_delay_is_full_jitter_under_an_exponential_cap(attempt: int) -> None:
    ceiling = min(60.0, 1.0 * 2**attempt)
    assert retry_delay(attempt, rng=lambda lo, hi: hi) == ceiling
    assert retry_delay(attempt, rng=lambda lo, hi: lo) == 0.0
    for _ in range(50):
        assert 0.0 <= retry_delay(attempt) <= ceiling


def test_retry_delay_never_overflows() -> None:
    assert retry_delay(10_000, base=1.0, cap=5.0, rng=lambda lo, hi: hi) == 5.0


def test_policy_retries_only_transient_errors_and_only_n_times() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.should_retry(TransientKmsError("x"), 0)
    assert policy.should_retry(TransientKmsError("x"), 1)
    assert not policy.should_retry(TransientKmsError("x"), 2)
    assert not policy.should_retry(KmsPermissionError("x"), 0)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (TransientKmsError("timeout"), "retry"),
        (CircuitOpenError("open"), "retry"),
        (StoreUnavailable("db down"), "retry"),
        (KmsPermissionError("denied"), "dead_letter"),
        (ConfigurationError("missing setting"), "dead_letter"),
        (IntegrityError("tampered"), "dead_letter"),
        (InvalidRequest("bad tenant"), "reject"),
        (KeyNotFound("no key"), "reject"),
        (ValueError("bug"), "dead_letter"),
    ],
)
def test_classify(error: Exception, action: str) -> None:
    assert classify(error) == action


def test_unexpected_errors_become_internal_without_their_message() -> None:
    error = as_error(ValueError("secret-looking detail"))
    assert error.code == "TK-INTERNAL"
    assert "secret-looking" not in error.message


def test_breaker_opens_after_fail_max_transient_failures(server: fakeredis.FakeServer) -> None:
    provider = ScriptedProvider()
    guarded = resilience(server).guard(provider)
    provider.fail_with = TransientKmsError("down", provider="aws")
    for _ in range(2):
        with pytest.raises(TransientKmsError):
            guarded.decrypt(b"wx", {})
    with pytest.raises(CircuitOpenError):  # the third failure trips it
        guarded.decrypt(b"wx", {})
    calls = provider.calls
    with pytest.raises(CircuitOpenError):
        guarded.decrypt(b"wx", {})
    assert provider.calls == calls  # open: the KMS is not called at all


def test_open_state_is_shared_by_every_process(server: fakeredis.FakeServer) -> None:
    first, second = ScriptedProvider(), ScriptedProvider()
    guarded_first = resilience(server).guard(first)
    guarded_second = resilience(server).guard(second)  # another worker process
    first.fail_with = TransientKmsError("down")
    for _ in range(3):
        with pytest.raises(TransientKmsError):
            guarded_first.encrypt(b"k", {})
    with pytest.raises(CircuitOpenError):
        guarded_second.encrypt(b"k", {})
    assert second.calls == 0
    assert resilience(server).state("aws") == "open"


def test_permission_errors_do_not_count(server: fakeredis.FakeServer) -> None:
    provider = ScriptedProvider()
    guarded = resilience(server).guard(provider)
    provider.fail_with = KmsPermissionError("denied")
    for _ in range(10):
        with pytest.raises(KmsPermissionError):
            guarded.decrypt(b"wx", {})
    assert resilience(server).state("aws") == "closed"


def test_breaker_half_opens_after_reset_timeout_and_closes_on_success(
    server: fakeredis.FakeServer,
) -> None:
    provider = ScriptedProvider()
    guarded = resilience(server, reset_timeout=1.0).guard(provider)
    provider.fail_with = TransientKmsError("down")
    for _ in range(3):
        with pytest.raises(TransientKmsError):
            guarded.decrypt(b"wx", {})
    provider.fail_with = None
    deadline = time.monotonic() + 10
    while True:  # bounded poll: pybreaker stores opened_at with one-second resolution
        try:
            assert guarded.decrypt(b"wx", {}) == bytearray(b"x")
            break
        except CircuitOpenError:
            assert time.monotonic() < deadline, "breaker never half-opened"
            time.sleep(0.2)
    assert resilience(server).state("aws") == "closed"


def test_guard_keeps_the_provider_identity(server: fakeredis.FakeServer) -> None:
    provider = ScriptedProvider()
    guarded = resilience(server).guard(provider)
    assert (guarded.name, guarded.key_id) == ("aws", "scripted")
    assert guarded.encrypt(b"k", {}) == b"wk"
    assert guarded.describe().enabled


def test_breaker_fails_open_when_redis_is_down() -> None:
    """Redis holding the breaker state is down: the KMS is still called, exactly once."""
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tenantkeys.resilience import Resilience

    dead = redis_lib.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    calls: list[int] = []

    def kms() -> str:
        calls.append(1)
        return "unwrapped"

    assert Resilience(dead, "tk").call("aws", kms) == "unwrapped"
    assert calls == [1]
