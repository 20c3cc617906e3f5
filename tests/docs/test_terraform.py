"""The Terraform modules against the code: permissions, context keys, rotation and settings.

Each module grants its service identity exactly what the matching provider calls, no more:
the AWS policy allows :data:`tenantkeys.providers.aws.KMS_ACTIONS` with an encryption-context
condition on :data:`tenantkeys.providers.base.CONTEXT_KEYS`; GCP binds the roles the gcp
provider names; Vault grants ``update`` on encrypt/decrypt and ``read`` on the key, never
``create``; Azure grants wrapKey/unwrapKey/get or the RBAC role the azure provider names.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tenantkeys.config import ENV_PREFIX
from tenantkeys.keys.kms import setting_variables
from tenantkeys.providers.base import CONTEXT_KEYS
from tests.docs import hcl

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "deploy" / "terraform"
MODULES = ("aws-kms", "gcp-kms", "azure-kv", "vault-transit")
NINETY_DAYS_SECONDS = 90 * 86_400


def module(name: str) -> dict[str, list[Any]]:
    return hcl.load_module(TERRAFORM / name)


# -- every module ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_module_has_the_standard_files(name: str) -> None:
    for filename in ("versions.tf", "variables.tf", "main.tf", "outputs.tf"):
        assert (TERRAFORM / name / filename).is_file(), f"{name}/{filename} missing"


@pytest.mark.parametrize("name", MODULES)
def test_module_pins_terraform_and_its_provider(name: str) -> None:
    versions = module(name)["terraform"][0]
    assert versions.get("required_version"), f"{name}: no required_version"
    providers = versions["required_providers"][0]
    assert providers, f"{name}: no required_providers"
    for spec in providers.values():
        assert spec.get("source", "").startswith("hashicorp/"), spec
        assert spec.get("version"), f"{name}: provider version not pinned: {spec}"


@pytest.mark.parametrize("name", MODULES)
def test_variables_are_described_and_typed(name: str) -> None:
    for entry in module(name)["variable"]:
        for var_name, body in entry.items():
            assert body.get("description"), f"{name}: variable {var_name} has no description"
            assert body.get("type"), f"{name}: variable {var_name} has no type"


@pytest.mark.parametrize("name", MODULES)
def test_settings_output_names_real_settings(name: str) -> None:
    """Every TENANTKEYS_* the `settings` output sets is a field of Settings."""
    outputs = {k: v for entry in module(name)["output"] for k, v in entry.items()}
    assert "settings" in outputs, f"{name}: no `settings` output"
    names = set(re.findall(r"TENANTKEYS_[A-Z0-9_]+", str(outputs["settings"]["value"])))
    fields = set(setting_variables())
    assert f"{ENV_PREFIX}KMS_PROVIDER" in names, f"{name}: settings lacks the provider"
    assert names <= fields, f"{name}: unknown settings {sorted(names - fields)}"


@pytest.mark.parametrize("name", MODULES)
def test_keys_are_protected_from_destroy(name: str) -> None:
    key_types = {
        "aws-kms": "aws_kms_key",
        "gcp-kms": "google_kms_crypto_key",
        "azure-kv": "azurerm_key_vault_key",
        "vault-transit": "vault_transit_secret_backend_key",
    }
    key = hcl.one(module(name), "resource", key_types[name])
    assert key["lifecycle"][0]["prevent_destroy"] is True


def test_terraform_fmt_is_clean() -> None:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform binary not installed (formatting only; the HCL checks above ran)")
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}"


# -- AWS ------------------------------------------------------------------------------------


def aws_statements() -> list[dict[str, Any]]:
    document = hcl.one(module("aws-kms"), "data", "aws_iam_policy_document")
    statements: list[dict[str, Any]] = document["statement"]
    return statements


def test_aws_policy_allows_exactly_the_actions_the_provider_calls() -> None:
    from tenantkeys.providers.aws import KMS_ACTIONS

    statements = aws_statements()
    assert all(s.get("effect", "Allow") == "Allow" for s in statements)
    allowed = [action for s in statements for action in s["actions"]]
    assert sorted(allowed) == sorted(KMS_ACTIONS), "the policy must allow exactly KMS_ACTIONS"
    assert not any("*" in action for action in allowed)


def test_aws_policy_is_scoped_to_the_key() -> None:
    for statement in aws_statements():
        assert statement["resources"] == ["${aws_kms_key.tenantkeys.arn}"], statement


def test_aws_wrap_actions_require_the_context_keys_the_code_sends() -> None:
    wrap = {"kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"}
    for statement in aws_statements():
        if not wrap & set(statement["actions"]):
            continue
        conditions = statement.get("condition", [])
        context_keys = [c for c in conditions if c["variable"] == "kms:EncryptionContextKeys"]
        assert len(context_keys) == 1, "one kms:EncryptionContextKeys condition"
        assert context_keys[0]["test"] == "ForAllValues:StringEquals"
        assert sorted(context_keys[0]["values"]) == sorted(CONTEXT_KEYS)
        required = {
            c["variable"].removeprefix("kms:EncryptionContext:")
            for c in conditions
            if c["test"] == "Null" and c["values"] == ["false"]
        }
        assert required == set(CONTEXT_KEYS), "each context key must be required (Null false)"


def test_aws_key_rotates_every_90_days() -> None:
    mod = module("aws-kms")
    key = hcl.one(mod, "resource", "aws_kms_key")
    assert key["enable_key_rotation"] is True
    assert key["rotation_period_in_days"] == "${var.rotation_period_in_days}"
    variables = {k: v for entry in mod["variable"] for k, v in entry.items()}
    assert variables["rotation_period_in_days"]["default"] == 90
    assert hcl.one(mod, "resource", "aws_kms_alias")["name"].startswith("alias/")


# -- GCP ------------------------------------------------------------------------------------


def test_gcp_binds_the_roles_the_provider_names_on_the_key() -> None:
    from tenantkeys.providers.gcp import ROLE

    assert ROLE == "roles/cloudkms.cryptoKeyEncrypterDecrypter"
    mod = module("gcp-kms")
    members = hcl.blocks(mod, "resource", "google_kms_crypto_key_iam_member")
    roles = {body["role"] for body in members.values()}
    # The gcp provider's permission error names these two for encrypt/decrypt and get.
    assert roles == {ROLE, "roles/cloudkms.viewer"}
    for body in members.values():
        assert body["crypto_key_id"] == "${google_kms_crypto_key.tenantkeys.id}", body
    assert not hcl.blocks(mod, "resource", "google_project_iam_member"), "bind on the key only"


def test_gcp_key_rotates_every_90_days_in_a_key_ring() -> None:
    mod = module("gcp-kms")
    key = hcl.one(mod, "resource", "google_kms_crypto_key")
    assert key["purpose"] == "ENCRYPT_DECRYPT"
    assert key["key_ring"] == "${google_kms_key_ring.tenantkeys.id}"
    variables = {k: v for entry in mod["variable"] for k, v in entry.items()}
    assert key["rotation_period"] == "${var.rotation_period}"
    assert variables["rotation_period"]["default"] == f"{NINETY_DAYS_SECONDS}s"


# -- Vault ----------------------------------------------------------------------------------


def vault_rules() -> dict[str, list[str]]:
    document = hcl.one(module("vault-transit"), "data", "vault_policy_document")
    return {rule["path"]: rule["capabilities"] for rule in document["rule"]}


def test_vault_policy_is_exactly_what_the_provider_needs() -> None:
    mount, key = "${local.mount}", "${var.key_name}"
    assert vault_rules() == {
        f"{mount}/encrypt/{key}": ["update"],
        f"{mount}/decrypt/{key}": ["update"],
        f"{mount}/keys/{key}": ["read"],
    }


def test_vault_policy_never_grants_create() -> None:
    # Transit upserts on encrypt when `create` is granted: a typo in the key name would make
    # a fresh key instead of failing, so the provider relies on `create` being absent.
    for path, capabilities in vault_rules().items():
        assert "create" not in capabilities, path
        assert "sudo" not in capabilities and "delete" not in capabilities, path


def test_vault_key_is_derived_and_rotates_every_90_days() -> None:
    mod = module("vault-transit")
    key = hcl.one(mod, "resource", "vault_transit_secret_backend_key")
    assert key["derived"] is True, "the vault provider refuses a non-derived key"
    assert key["type"] == "aes256-gcm96"
    assert key["deletion_allowed"] is False
    variables = {k: v for entry in mod["variable"] for k, v in entry.items()}
    assert key["auto_rotate_period"] == "${var.auto_rotate_period}"
    assert variables["auto_rotate_period"]["default"] == NINETY_DAYS_SECONDS
    policy = hcl.one(mod, "resource", "vault_policy")
    assert policy["policy"] == "${data.vault_policy_document.tenantkeys.hcl}"


# -- Azure ----------------------------------------------------------------------------------


def test_azure_grants_the_role_or_the_three_key_permissions() -> None:
    from tenantkeys.providers.azure import ROLE

    mod = module("azure-kv")
    assignments = hcl.blocks(mod, "resource", "azurerm_role_assignment")
    service = assignments["service"]
    assert service["role_definition_name"] == ROLE
    assert service["scope"] == "${azurerm_key_vault_key.tenantkeys.resource_versionless_id}"
    policies = hcl.blocks(mod, "resource", "azurerm_key_vault_access_policy")
    permissions = {p.lower() for p in policies["service"]["key_permissions"]}
    assert permissions == {"get", "wrapkey", "unwrapkey"}


def test_azure_key_is_rsa_wrap_only_and_rotates_every_90_days() -> None:
    mod = module("azure-kv")
    key = hcl.one(mod, "resource", "azurerm_key_vault_key")
    assert key["key_type"] == "RSA"
    assert sorted(key["key_opts"]) == ["unwrapKey", "wrapKey"]
    automatic = key["rotation_policy"][0]["automatic"][0]
    assert automatic["time_after_creation"] == "${var.rotate_after}"
    variables = {k: v for entry in mod["variable"] for k, v in entry.items()}
    assert variables["rotate_after"]["default"] == "P90D"
    vault = hcl.one(mod, "resource", "azurerm_key_vault")
    assert vault["purge_protection_enabled"] is True
