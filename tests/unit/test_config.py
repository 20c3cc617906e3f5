"""Settings fail fast, with the providers listed, the missing settings named and a doc link.

Config checks what it can judge alone in ``load_settings``; each provider's own settings are
checked by ``check_providers``, which every start-up path calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tenantkeys.config
from tenantkeys.config import KMS_PROVIDERS, Settings, load_settings
from tenantkeys.errors import ConfigurationError, ErrorCode
from tenantkeys.keys.kms import ProviderSet, check_providers
from tenantkeys.providers import REGISTRY, provider_class
from tenantkeys.providers.local import LocalProvider
from tenantkeys.providers.vault import VaultSettings

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
        check_providers(load_settings())
    assert err.value.code == ErrorCode.CONFIG_MISSING_SETTING
    for name in missing:
        assert name in err.value.message
    assert provider_class(provider).settings_model.setup_doc in err.value.message


@pytest.mark.parametrize(
    ("auth", "missing"),
    [
        ("approle", ["TENANTKEYS_VAULT_ROLE_ID", "TENANTKEYS_VAULT_SECRET_ID_FILE"]),
        ("kubernetes", ["TENANTKEYS_VAULT_KUBERNETES_ROLE"]),
    ],
)
def test_vault_auth_methods_name_what_they_need(
    monkeypatch: pytest.MonkeyPatch, auth: str, missing: list[str]
) -> None:
    for name, value in {"KMS_PROVIDER": "vault", "VAULT_ADDR": "https://vault:8200"}.items():
        monkeypatch.setenv(f"TENANTKEYS_{name}", value)
    monkeypatch.setenv("TENANTKEYS_VAULT_KEY_NAME", "tenantkeys")
    assert check_providers(load_settings())["vault"] == VaultSettings(
        addr="https://vault:8200", key_name="tenantkeys"
    )
    monkeypatch.setenv("TENANTKEYS_VAULT_AUTH", auth)
    with pytest.raises(ConfigurationError) as err:
        check_providers(load_settings())
    assert err.value.code == ErrorCode.CONFIG_MISSING_SETTING
    assert all(name in err.value.message for name in missing), err.value.message
    assert "docs/setup/VAULT_SETUP.md" in err.value.message


def test_an_incomplete_previous_provider_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TENANTKEYS_PREVIOUS_KMS_PROVIDER", "aws")
    monkeypatch.setenv("TENANTKEYS_AWS_REGION", "eu-west-1")
    settings = load_settings(local_master_key_file=tmp_path / "master.key")
    assert settings.configured_providers == ("local", "aws")
    with pytest.raises(ConfigurationError) as err:
        check_providers(settings)
    assert err.value.code == ErrorCode.CONFIG_MISSING_SETTING
    assert "TENANTKEYS_AWS_KMS_KEY_ID" in err.value.message
    assert "TENANTKEYS_AWS_REGION" not in err.value.message
    with pytest.raises(ConfigurationError, match="TENANTKEYS_PREVIOUS_KMS_PROVIDER"):
        settings.provider_values("vault")  # a stored row naming a provider never configured


def test_a_bad_or_unknown_provider_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKEYS_KMS_PROVIDER", "vault")
    monkeypatch.setenv("TENANTKEYS_VAULT_ADDR", "https://vault:8200")
    monkeypatch.setenv("TENANTKEYS_VAULT_KEY_NAME", "tenantkeys")
    monkeypatch.setenv("TENANTKEYS_VAULT_AUTH", "ldap")
    with pytest.raises(ConfigurationError) as err:
        check_providers(load_settings())
    assert err.value.code == ErrorCode.CONFIG_INVALID
    assert "TENANTKEYS_VAULT_AUTH" in err.value.message
    monkeypatch.setenv("TENANTKEYS_VAULT_AUTH", "token")
    monkeypatch.setenv("TENANTKEYS_VAULT_TOKN", "s.typo")
    with pytest.raises(ConfigurationError) as err:
        check_providers(load_settings())
    assert "TENANTKEYS_VAULT_TOKN" in err.value.message and "s.typo" not in err.value.message


def test_provider_settings_come_from_env_dotenv_and_overrides_in_that_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "TENANTKEYS_KMS_PROVIDER=aws\nTENANTKEYS_AWS_KMS_KEY_ID=alias/from-dotenv\n"
        "TENANTKEYS_AWS_REGION=eu-west-1\n"
    )
    assert check_providers(load_settings())["aws"].by_variable() == {
        "TENANTKEYS_AWS_KMS_KEY_ID": "alias/from-dotenv",
        "TENANTKEYS_AWS_REGION": "eu-west-1",
        "TENANTKEYS_AWS_ENDPOINT_URL": None,
    }
    monkeypatch.setenv("TENANTKEYS_AWS_KMS_KEY_ID", "alias/from-env")
    monkeypatch.setenv("TENANTKEYS_AWS_ENDPOINT_URL", "")  # empty is unset
    loaded = load_settings(aws_region="us-east-2")
    assert dict(loaded.provider_values("aws")) == {
        "kms_key_id": "alias/from-env",
        "region": "us-east-2",
    }
    with pytest.raises(TypeError):
        loaded.provider_values("aws")["region"] = "elsewhere"  # type: ignore[index]


def test_production_refuses_local_when_built_too(tmp_path: Path) -> None:
    settings = load_settings(
        kms_provider="aws", aws_kms_key_id="k", aws_region="r", previous_kms_provider="local"
    )
    providers = ProviderSet.from_settings(settings)
    assert isinstance(providers.get("local").inner, LocalProvider)
    production = load_settings(
        environment="production",
        kms_provider="aws",
        aws_kms_key_id="k",
        aws_region="r",
        previous_kms_provider="local",
        local_master_key_file=tmp_path / "master.key",
    )
    with pytest.raises(ConfigurationError) as err:
        ProviderSet.from_settings(production).get("local")
    assert err.value.code == ErrorCode.CONFIG_LOCAL_IN_PRODUCTION


def test_the_registry_names_the_providers_config_accepts() -> None:
    assert tuple(REGISTRY) == KMS_PROVIDERS
    for name in KMS_PROVIDERS:
        model = provider_class(name).settings_model
        assert model.provider == name
        assert all(v.startswith(f"TENANTKEYS_{name.upper()}_") for v in model.variables())
        # TENANTKEYS_<PROVIDER>_* belongs to the provider: no setting of config's own takes it.
        assert not [v for v in Settings.variables() if v.startswith(f"TENANTKEYS_{name.upper()}_")]


def test_config_imports_no_provider() -> None:
    """Config sits below the providers: it names them and keeps their raw values, no more."""
    package = Path(tenantkeys.config.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tenantkeys"):
                module = node.module or ""
                assert module == "tenantkeys.errors" or module.startswith("tenantkeys.config."), (
                    source.name,
                    module,
                )
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("tenantkeys") for a in node.names), source.name


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
    monkeypatch.setenv("TENANTKEYS_KMS_PROVIDER", "vault")
    monkeypatch.setenv("TENANTKEYS_VAULT_ADDR", "https://ops:vaultpw@vault:8200")
    monkeypatch.setenv("TENANTKEYS_AWS_REGION", "eu-west-1")  # not a configured provider
    shown = load_settings().masked()
    assert "hunter2" not in str(shown) and "vaultpw" not in str(shown)
    assert "ab" * 32 not in str(shown)
    assert shown["TENANTKEYS_DATABASE_URL"] == "postgresql://svc:***@db/keys"
    assert shown["TENANTKEYS_VAULT_ADDR"] == "https://ops:***@vault:8200"
    assert "TENANTKEYS_AWS_REGION" not in shown
    assert "TENANTKEYS_PROVIDER_SETTINGS" not in shown


def test_kms_prices_are_validated_and_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTKEYS_KMS_PRICES_USD", '{"aws": 0.000004}')
    assert load_settings().kms_prices_usd == {"aws": 0.000004}
    monkeypatch.setenv("TENANTKEYS_KMS_PRICES_USD", '{"hsm": 1}')
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert "TENANTKEYS_KMS_PRICES_USD" in err.value.message and "hsm" in err.value.message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TENANTKEYS_REDIS_URL", "rediss://user:pw@cache.example:6380/3"),
        ("TENANTKEYS_REDIS_URL", "unix:///run/redis.sock"),
        ("TENANTKEYS_REDIS_URL", "redis://127.0.0.1"),
        ("TENANTKEYS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        ("TENANTKEYS_BROKER_URL", "amqps://mq.example/vhost"),
        ("TENANTKEYS_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
        ("TENANTKEYS_DATABASE_URL", "postgresql+psycopg://svc@db:5432/keys"),
        ("TENANTKEYS_DATABASE_URL", "postgresql+psycopg:///keys"),  # libpq's socket
        ("TENANTKEYS_DATABASE_URL", "sqlite:///relative/keys.db"),
        ("TENANTKEYS_DATABASE_URL", "sqlite://"),
    ],
)
def test_working_urls_are_accepted(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    load_settings()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("TENANTKEYS_REDIS_URL", "127.0.0.1:6379", "has no scheme"),
        ("TENANTKEYS_REDIS_URL", "amqp://127.0.0.1", "'amqp' is not one of redis, rediss, unix"),
        ("TENANTKEYS_REDIS_URL", "redis://:pw@127.0.0.1:6379/x", "database 'x'"),
        ("TENANTKEYS_REDIS_URL", "redis://127.0.0.1:0/0", "port"),
        ("TENANTKEYS_BROKER_URL", "kafka://127.0.0.1", "'kafka'"),
        ("TENANTKEYS_RESULT_BACKEND", "amqp://127.0.0.1", "'amqp'"),
        ("TENANTKEYS_DATABASE_URL", "mysql://root@db/keys", "'mysql'"),
    ],
)
def test_broken_urls_fail_at_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.code == ErrorCode.CONFIG_INVALID
    assert variable in err.value.message and says in err.value.message
    assert ":pw@" not in err.value.message


def test_masked_url_hides_only_the_password() -> None:
    from tenantkeys.config import masked_url

    assert masked_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert masked_url("amqp://guest:pw@h:5672//") == "amqp://guest:***@h:5672//"
    assert masked_url("redis://token@h/0") == "redis://***@h/0"
    # A failover list is masked URL by URL (the quorum-queue cluster URLs).
    assert (
        masked_url("amqp://u:one@n1//;amqp://u:two@n2//") == "amqp://u:***@n1//;amqp://u:***@n2//"
    )
    assert masked_url("redis://h:6379/0") == "redis://h:6379/0"
    assert masked_url("sqlite:////a@b/keys.db") == "sqlite:////a@b/keys.db"  # '@' in a path


def test_the_data_dir_is_found_upward_and_anchors_the_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".tenantkeys").mkdir()
    deeper = tmp_path / "a" / "b"
    deeper.mkdir(parents=True)
    monkeypatch.chdir(deeper)
    settings = load_settings()
    data_dir = tmp_path / ".tenantkeys"
    assert settings.data_dir == data_dir
    assert settings.database_url == f"sqlite:///{data_dir}/keys.db"
    assert settings.dead_letter_key_file == data_dir / "deadletter.key"
    assert settings.provider_values("local")["master_key_file"] == data_dir / "master.key"


def test_a_set_data_dir_anchors_the_files_and_set_files_win(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TENANTKEYS_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TENANTKEYS_LOCAL_MASTER_KEY_FILE", str(tmp_path / "mk"))
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{tmp_path}/state/keys.db"
    assert settings.provider_values("local")["master_key_file"] == str(tmp_path / "mk")
    assert not (tmp_path / "state").exists()  # loading settings creates nothing


def test_an_unusable_prometheus_multiproc_dir_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tenantkeys.config import check_prometheus_multiproc_dir

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "file" / "metrics"))
    with pytest.raises(ConfigurationError) as err:
        check_prometheus_multiproc_dir()
    assert "PROMETHEUS_MULTIPROC_DIR" in err.value.message
    assert "cannot be created" in err.value.message
    with pytest.raises(ConfigurationError):
        load_settings()  # the setting itself is checked the same way
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "new" / "metrics"))
    load_settings()  # one the worker can make is fine
    check_prometheus_multiproc_dir()
    assert (tmp_path / "new" / "metrics").is_dir()


def test_a_subdirectory_reads_the_deployments_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".tenantkeys").mkdir()
    (tmp_path / ".env").write_text("TENANTKEYS_REDIS_PREFIX=deployment\nTENANTKEYS_RETRY_MAX=7\n")
    deeper = tmp_path / "src"
    deeper.mkdir()
    monkeypatch.chdir(deeper)
    assert load_settings().redis_prefix == "deployment"
    (deeper / ".env").write_text("TENANTKEYS_REDIS_PREFIX=here\n")
    settings = load_settings()
    assert (settings.redis_prefix, settings.retry_max) == ("here", 7)  # the nearer one wins
