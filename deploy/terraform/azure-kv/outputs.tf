output "vault_uri" {
  description = "The vault URL (https://<name>.vault.azure.net/)."
  value       = azurerm_key_vault.tenantkeys.vault_uri
}

output "key_id" {
  description = "Versionless id of the key."
  value       = azurerm_key_vault_key.tenantkeys.versionless_id
}

output "settings" {
  description = "The tenantkeys settings (environment variables) that point the service at this key."
  value = {
    TENANTKEYS_KMS_PROVIDER    = "azure"
    TENANTKEYS_AZURE_VAULT_URL = azurerm_key_vault.tenantkeys.vault_uri
    TENANTKEYS_AZURE_KEY_NAME  = azurerm_key_vault_key.tenantkeys.name
  }
}
