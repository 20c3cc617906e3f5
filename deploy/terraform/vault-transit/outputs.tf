output "policy_name" {
  description = "The Vault policy to give the service's tokens."
  value       = vault_policy.tenantkeys.name
}

output "policy_hcl" {
  description = "The policy text, for review."
  value       = data.vault_policy_document.tenantkeys.hcl
}

output "approle_role_id" {
  description = "AppRole role id (TENANTKEYS_VAULT_ROLE_ID), when an AppRole role was created."
  value       = var.approle_backend == null ? null : vault_approle_auth_backend_role.tenantkeys[0].role_id
}

output "settings" {
  description = "The tenantkeys settings (environment variables) that point the service at this key."
  value = merge(
    {
      TENANTKEYS_KMS_PROVIDER   = "vault"
      TENANTKEYS_VAULT_ADDR     = var.vault_addr
      TENANTKEYS_VAULT_MOUNT    = local.mount
      TENANTKEYS_VAULT_KEY_NAME = vault_transit_secret_backend_key.tenantkeys.name
      TENANTKEYS_VAULT_AUTH     = var.kubernetes_auth_backend != null ? "kubernetes" : (var.approle_backend != null ? "approle" : "token")
    },
    var.kubernetes_auth_backend == null ? {} : {
      TENANTKEYS_VAULT_KUBERNETES_MOUNT = var.kubernetes_auth_backend
      TENANTKEYS_VAULT_KUBERNETES_ROLE  = var.kubernetes_role_name
    },
    var.approle_backend == null ? {} : {
      TENANTKEYS_VAULT_APPROLE_MOUNT = var.approle_backend
      TENANTKEYS_VAULT_ROLE_ID       = vault_approle_auth_backend_role.tenantkeys[0].role_id
    },
  )
}
