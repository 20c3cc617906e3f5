"""Settings fail fast, with the providers listed, the missing settings named and a doc link."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantkeys.config import load_settings
from tenantkeys.errors import ConfigurationError, ErrorCode

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TENANTKEYS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_the_embedded_development_setup() -> None:
    settings = load_settings()
    assert settings.kms_provider == "local"
    assert settings.database_url.startswith("sqlite:///")
    assert settings.cache_ttl_seconds == 300
    assert settings.rotation_days("signing") == 90
    assert settings.max_payload_bytes == 1_048_576


def test_unknown_provider_lists_supported_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKEYS_KMS_PROVIDER", "hsm")
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.code == ErrorCode.CONFIG_UNKNOWN_PROVIDER
    for name in ("local", "aws", "vault", "gcp", "azure"):
        assert name in err.value.message
    assert "KMS_TROUBLESHOOTING.md#tk-config-unknown-provider" in err.value.one_line()


@pytest.mark.parametrize(
    ("provider", "missing"),
    [
        ("aws", ["TENANTKEYS_AWS_KMS_KEY_ID", "TENANTKEYS_AWS_REGION"]),
        ("vault", ["TENANTKEYS_VAULT_ADDR", "TENANTKEYS_VAULT_KEY_NAME"]),
        ("gcp", ["TENANTKEYS_GCP_KEY_NAME"]),
        ("azure", ["TENANTKEYS_AZURE_VAULT_URL", "TENANTKEYS_AZURE_KEY_NAME"]),
    ],
)
def test_missing_provider_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, provider: str, missing: list[str]
) -> None:
    monkeypatch.setenv("TENANTKEYS_KMS_PROVIDER", provider)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.code == ErrorCode.CONFIG_MISSING_SETTING
    for name in missing:
        assert name in err.value.message
    assert "docs/setup/" in err.value.message


def test_local_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKEYS_ENVIRONMENT", "production")
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.code == ErrorCode.CONFIG_LOCAL_IN_PRODUCTION
    assert "aws" in err.value.message


def test_production_with_aws_settings_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKEYS_ENVIRONMENT", "production")
    monkeypatch.setenv("TENANTKEYS_KMS_PROVIDER", "aws")
    monkeypatch.setenv("TENANTKEYS_AWS_KMS_KEY_ID", "alias/tenantkeys")
    monkeypatch.setenv("TENANTKEYS_AWS_REGION", "eu-west-1")
    assert load_settings().kms_provider == "aws"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TENANTKEYS_CACHE_TTL_SECONDS", "-1"),
        ("TENANTKEYS_CACHE_TTL_SECONDS", "soon"),
        ("TENANTKEYS_MAX_PAYLOAD_BYTES", "0"),
        ("TENANTKEYS_ENVIRONMENT", "staging"),
        ("TENANTKEYS_SIGNING_ALGORITHM", "HS256"),
        ("TENANTKEYS_REDIS_PREFIX", "bad prefix!"),
    ],
)
def test_bad_values_are_one_readable_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.code == ErrorCode.CONFIG_INVALID
    assert name in err.value.message
    assert "\n" not in err.value.one_line()


def test_masked_config_hides_passwords_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKEYS_DATABASE_URL", "postgresql://svc:hunter2@db/keys")
    monkeypatch.setenv("TENANTKEYS_ADMIN_TOKEN_SHA256", "ab" * 32)
    shown = load_settings().masked()
    assert "hunter2" not in str(shown)
    assert "ab" * 32 not in str(shown)
    assert shown["TENANTKEYS_DATABASE_URL"] == "postgresql://svc:***@db/keys"


def test_kms_prices_are_validated_and_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKEYS_KMS_PRICES_USD", '{"aws": 0.000004}')
    assert load_settings().kms_prices_usd == {"aws": 0.000004}
    monkeypatch.setenv("TENANTKEYS_KMS_PRICES_USD", '{"hsm": 1}')
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert "TENANTKEYS_KMS_PRICES_USD" in err.value.message and "hsm" in err.value.message
