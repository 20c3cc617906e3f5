# Azure Key Vault and RSA key for tenantkeys, and the least-privilege grant of its identity.
#
# The provider calls wrapKey and unwrapKey (RSA-OAEP-256) and get (health checks). With RBAC
# that is exactly the built-in role "Key Vault Crypto Service Encryption User" on the key;
# with access policies it is the key permissions Get, WrapKey and UnwrapKey.
# See docs/setup/AZURE_KEY_VAULT_SETUP.md#permissions.

data "azurerm_client_config" "current" {}

resource "azurerm_key_vault" "tenantkeys" {
  name                       = var.vault_name
  location                   = var.location
  resource_group_name        = var.resource_group_name
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  enable_rbac_authorization  = var.use_rbac
  purge_protection_enabled   = true
  soft_delete_retention_days = 90
  tags                       = var.tags
}

# Whoever runs Terraform must be able to create and rotate the key.
resource "azurerm_role_assignment" "deployer" {
  count                = var.use_rbac ? 1 : 0
  scope                = azurerm_key_vault.tenantkeys.id
  role_definition_name = "Key Vault Crypto Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_key_vault_access_policy" "deployer" {
  count           = var.use_rbac ? 0 : 1
  key_vault_id    = azurerm_key_vault.tenantkeys.id
  tenant_id       = data.azurerm_client_config.current.tenant_id
  object_id       = data.azurerm_client_config.current.object_id
  key_permissions = ["Get", "List", "Create", "Update", "Rotate", "GetRotationPolicy", "SetRotationPolicy"]
}

resource "azurerm_key_vault_key" "tenantkeys" {
  name         = var.key_name
  key_vault_id = azurerm_key_vault.tenantkeys.id
  key_type     = "RSA"
  key_size     = var.key_size
  key_opts     = ["wrapKey", "unwrapKey"]

  rotation_policy {
    automatic {
      time_after_creation = var.rotate_after
    }
    expire_after         = var.expire_after
    notify_before_expiry = "P30D"
  }

  depends_on = [azurerm_role_assignment.deployer, azurerm_key_vault_access_policy.deployer]

  lifecycle {
    # Destroying the key makes every wrapped tenant key unrecoverable.
    prevent_destroy = true
  }
}

# The service identity: wrapKey, unwrapKey and get on this key only.
resource "azurerm_role_assignment" "service" {
  count                = var.use_rbac ? 1 : 0
  scope                = azurerm_key_vault_key.tenantkeys.resource_versionless_id
  role_definition_name = "Key Vault Crypto Service Encryption User"
  principal_id         = var.service_principal_id
}

resource "azurerm_key_vault_access_policy" "service" {
  count           = var.use_rbac ? 0 : 1
  key_vault_id    = azurerm_key_vault.tenantkeys.id
  tenant_id       = data.azurerm_client_config.current.tenant_id
  object_id       = var.service_principal_id
  key_permissions = ["Get", "WrapKey", "UnwrapKey"]
}
