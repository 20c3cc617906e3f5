"""One contract every KMS provider keeps, run against real loopback servers.

local (a file), aws (moto server), vault (OpenBao dev server), gcp (gRPC stand-in driven by
the real client) and azure (HTTPS stand-in driven by the real SDK).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tenantkeys.config import load_settings
from tenantkeys.errors import (
    ConfigurationError,
    ErrorCode,
    IntegrityError,
    KmsConfigError,
    KmsPermissionError,
    TransientKmsError,
)
from tenantkeys.keys.kms import ProviderSet, check_providers
from tenantkeys.providers import KmsProvider
from tenantkeys.providers.aws import KMS_ACTIONS
from tests.servers.fixtures import CLOUD_PROVIDERS, PROVIDERS, ProviderFactory

pytestmark = pytest.mark.integration

CONTEXT = {"tenant_id": "acme", "purpose": "signing", "version": "1", "kid": "kid-acme-1"}
OTHER_TENANT = {"tenant_id": "globex", "purpose": "signing", "version": "1", "kid": "kid-globex-1"}

#: What each provider's permission error must name so an operator can fix it.
PERMISSION_HINTS: dict[str, tuple[str, ...]] = {
    "aws": (*KMS_ACTIONS, "docs/setup/AWS_KMS_SETUP.md#iam-policy"),
    "vault": ("transit/encrypt/tenantkeys", "transit/decrypt/tenantkeys", '"update"'),
    "gcp": ("roles/cloudkms.cryptoKeyEncrypterDecrypter",),
    "azure": ("wrapKey", "unwrapKey", "Key Vault Crypto Service Encryption User"),
}


def own_settings(factory: ProviderFactory, name: str, tmp_path: Path) -> dict[str, str]:
    """Provider ``name``'s own settings (``<name>_<field>``) that reach its loopback server.

    azure is left out: its stand-in needs a static credential and a self-signed certificate,
    hooks of the constructor that are (rightly) no settings.
    """
    if name == "local":
        return {"local_master_key_file": str(tmp_path / "from-settings.key")}
    factory(name)  # the server's credentials in the environment, as the SDK chains expect
    server = factory.server(name)
    if name == "aws":
        return {
            "aws_kms_key_id": server.key_id,
            "aws_region": "us-east-1",
            "aws_endpoint_url": server.endpoint,
        }
    if name == "vault":
        return {"vault_addr": server.addr, "vault_key_name": server.key_name}
    return {"gcp_key_name": server.key_name, "gcp_endpoint": f"insecure://{server.target}"}


@pytest.mark.parametrize("name", ["local", "aws", "vault", "gcp"])
def test_builds_from_its_own_settings(
    provider_factory: ProviderFactory, name: str, tmp_path: Path
) -> None:
    """The start-up path: variables -> config -> the provider's settings model -> from_settings."""
    settings = load_settings(
        kms_provider=name, kms_timeout_seconds=3, **own_settings(provider_factory, name, tmp_path)
    )
    assert set(check_providers(settings)) == {name}
    providers = ProviderSet.from_settings(settings)
    try:
        provider = providers.current
        secret = os.urandom(32)
        assert provider.decrypt(provider.encrypt(secret, CONTEXT), CONTEXT) == bytearray(secret)
        assert provider.health().ok
    finally:
        providers.close()


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest, provider_factory: ProviderFactory) -> KmsProvider:
    return provider_factory(request.param)


def test_encrypt_decrypt_round_trip(provider: KmsProvider) -> None:
    secret = os.urandom(32)
    wrapped = provider.encrypt(secret, CONTEXT)
    assert secret not in wrapped
    assert provider.decrypt(wrapped, CONTEXT) == bytearray(secret)


def test_generate_data_key_round_trip(provider: KmsProvider) -> None:
    data_key = provider.generate_data_key(CONTEXT)
    assert len(data_key.plaintext) == 32
    assert provider.decrypt(data_key.wrapped, CONTEXT) == data_key.plaintext
    assert data_key.plaintext.hex() not in repr(data_key)
    assert provider.generate_data_key(CONTEXT).plaintext != data_key.plaintext


@pytest.mark.parametrize("field", ["tenant_id", "purpose", "version", "kid"])
def test_wrong_context_is_rejected(provider: KmsProvider, field: str) -> None:
    wrapped = provider.encrypt(os.urandom(32), CONTEXT)
    with pytest.raises(IntegrityError) as info:
        provider.decrypt(wrapped, {**CONTEXT, field: CONTEXT[field] + "x"})
    assert info.value.code is ErrorCode.KMS_INVALID_CIPHERTEXT
    assert info.value.provider == provider.name


def test_swapped_tenant_keys_are_rejected(provider: KmsProvider) -> None:
    mine, theirs = os.urandom(32), os.urandom(32)
    wrapped_mine = provider.encrypt(mine, CONTEXT)
    wrapped_theirs = provider.encrypt(theirs, OTHER_TENANT)
    assert provider.decrypt(wrapped_theirs, OTHER_TENANT) == bytearray(theirs)
    with pytest.raises(IntegrityError):
        provider.decrypt(wrapped_theirs, CONTEXT)  # tenant B's row copied into tenant A's
    with pytest.raises(IntegrityError):
        provider.decrypt(wrapped_mine, OTHER_TENANT)


def test_tampered_ciphertext_is_rejected(provider: KmsProvider) -> None:
    wrapped = provider.encrypt(os.urandom(32), CONTEXT)
    tampered = wrapped[:-3] + bytes([wrapped[-3] ^ 0x01]) + wrapped[-2:]
    with pytest.raises(IntegrityError):
        provider.decrypt(tampered, CONTEXT)


def test_describe_reports_an_enabled_key(provider: KmsProvider) -> None:
    description = provider.describe()
    assert description.provider == provider.name
    assert description.enabled is True
    assert description.key_id
    assert description.algorithm


def test_health_is_ok_and_timed(provider: KmsProvider) -> None:
    report = provider.health()
    assert report.ok is True, report.detail
    assert report.provider == provider.name
    assert report.key_id == provider.key_id
    assert 0 < report.latency_ms < 5_000


@pytest.mark.parametrize("name", CLOUD_PROVIDERS)
def test_permission_error_names_what_is_missing(
    provider_factory: ProviderFactory, name: str
) -> None:
    wrapped = provider_factory(name).encrypt(os.urandom(32), CONTEXT)
    with provider_factory.denied(name) as denied:
        with pytest.raises(KmsPermissionError) as on_encrypt:
            denied.encrypt(os.urandom(32), CONTEXT)
        with pytest.raises(KmsPermissionError) as on_decrypt:
            denied.decrypt(wrapped, CONTEXT)
    for error in (on_encrypt.value, on_decrypt.value):
        assert error.code is ErrorCode.KMS_ACCESS_DENIED
        assert not error.retryable
        assert error.provider == name
        assert error.provider_code
        assert isinstance(error.__cause__, Exception)  # raised "from" the SDK error
        for hint in PERMISSION_HINTS[name]:
            assert hint in error.message, (hint, error.message)


def test_local_master_key_must_be_private(provider_factory: ProviderFactory) -> None:
    """local has no permissions to deny; its equivalent is the 0600 master-key file check."""
    provider = provider_factory("local")
    path = Path(provider.describe().details["master_key_file"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(ConfigurationError) as info:
        provider_factory("local")
    assert info.value.code is ErrorCode.MASTER_KEY_INVALID
    assert "0600" in info.value.message


def test_local_unreadable_master_key_is_a_configuration_error(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "not-a-file.key"
    directory.mkdir()
    with pytest.raises(ConfigurationError) as info:
        provider_factory("local", master_key_file=directory)
    assert info.value.code is ErrorCode.MASTER_KEY_INVALID
    assert "cannot be read" in info.value.message


@pytest.mark.parametrize("name", CLOUD_PROVIDERS)
def test_outage_is_transient_and_recovers(provider_factory: ProviderFactory, name: str) -> None:
    provider = provider_factory(name)
    with provider_factory.outage(name):
        with pytest.raises(TransientKmsError) as info:
            provider.encrypt(os.urandom(32), CONTEXT)
        report = provider.health()
    assert info.value.retryable
    assert info.value.code in (ErrorCode.KMS_UNAVAILABLE, ErrorCode.KMS_TIMEOUT)
    assert info.value.provider == name
    assert report.ok is False
    assert report.detail.startswith("TK-KMS-")
    # moto and OpenBao lose their keys on restart, so the recovered check builds anew.
    fresh = provider_factory(name)
    secret = os.urandom(32)
    assert fresh.decrypt(fresh.encrypt(secret, CONTEXT), CONTEXT) == bytearray(secret)


@pytest.mark.parametrize("name", ["gcp", "azure"])
def test_slow_kms_maps_to_timeout(provider_factory: ProviderFactory, name: str) -> None:
    provider = provider_factory(name, timeout=0.3)
    provider.describe()  # warm: the challenge / key download is not what is being timed
    provider_factory.server(name).switches.delay_seconds = 0.8
    with pytest.raises(TransientKmsError) as info:
        provider.encrypt(os.urandom(32), CONTEXT)
    assert info.value.code is ErrorCode.KMS_TIMEOUT


def test_gcp_corrupted_checksum_is_transient(provider_factory: ProviderFactory) -> None:
    provider = provider_factory("gcp")
    wrapped = provider.encrypt(os.urandom(32), CONTEXT)
    provider_factory.server("gcp").switches.corrupt_checksums = True
    with pytest.raises(TransientKmsError, match="CRC32C"):
        provider.encrypt(os.urandom(32), CONTEXT)
    with pytest.raises(TransientKmsError, match="CRC32C"):
        provider.decrypt(wrapped, CONTEXT)


@pytest.mark.parametrize("name", ["aws", "gcp", "azure"])
def test_disabled_key_is_reported(provider_factory: ProviderFactory, name: str) -> None:
    provider = provider_factory(name)
    wrapped = provider.encrypt(os.urandom(32), CONTEXT)
    server = provider_factory.server(name)
    if name == "aws":
        server.client("kms").disable_key(KeyId=server.key_id)
    else:
        server.switches.disabled = True
    try:
        assert provider.describe().enabled is False
        report = provider.health()
        assert report.ok is False
        assert "disabled" in report.detail
        if name != "aws":  # moto still decrypts under a disabled key
            with pytest.raises(KmsConfigError) as info:
                provider.decrypt(wrapped, CONTEXT)
            assert info.value.code is ErrorCode.KMS_KEY_DISABLED
    finally:
        if name == "aws":
            server.client("kms").enable_key(KeyId=server.key_id)


def test_vault_approle_login_reads_the_secret_id_file(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    server = provider_factory.server("vault")
    root = server.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    policy = f'path "{server.mount}/*" {{ capabilities = ["read", "update"] }}'
    root.sys.create_or_update_policy(name="tenantkeys", policy=policy)
    root.auth.approle.create_or_update_approle("tenantkeys", token_policies=["tenantkeys"])
    role_id = root.auth.approle.read_role_id("tenantkeys")["data"]["role_id"]
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(root.auth.approle.generate_secret_id("tenantkeys")["data"]["secret_id"])
    provider = provider_factory(
        "vault", auth="approle", role_id=role_id, secret_id_file=secret_file
    )
    secret = os.urandom(32)
    assert provider.decrypt(provider.encrypt(secret, CONTEXT), CONTEXT) == bytearray(secret)
    secret_file.write_text("not-the-secret-id")
    with pytest.raises(KmsPermissionError):
        provider_factory("vault", auth="approle", role_id=role_id, secret_id_file=secret_file)
