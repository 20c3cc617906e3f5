# Vault (or OpenBao) Transit key for tenantkeys and the least-privilege policy of the service.
#
# The vault provider needs a *derived* key (each wrapped key is bound to its tenant context),
# `update` on encrypt/ and decrypt/, and `read` on keys/ for health checks. It must NOT have
# `create` on encrypt/: Transit upserts, so with it an encrypt against a missing or misspelled
# key name would silently create a new key instead of failing with TK-KMS-KEY-NOT-FOUND.
# See docs/setup/VAULT_SETUP.md#policy.

resource "vault_mount" "transit" {
  count       = var.create_mount ? 1 : 0
  path        = var.mount
  type        = "transit"
  description = "tenantkeys: wraps per-tenant data keys"
}

locals {
  mount = var.create_mount ? vault_mount.transit[0].path : var.mount
}

resource "vault_transit_secret_backend_key" "tenantkeys" {
  backend            = local.mount
  name               = var.key_name
  type               = "aes256-gcm96"
  derived            = true
  auto_rotate_period = var.auto_rotate_period
  deletion_allowed   = false
  exportable         = false

  lifecycle {
    # Destroying the key makes every wrapped tenant key unrecoverable.
    prevent_destroy = true
  }
}

data "vault_policy_document" "tenantkeys" {
  rule {
    path         = "${local.mount}/encrypt/${var.key_name}"
    capabilities = ["update"]
    description  = "wrap data keys"
  }

  rule {
    path         = "${local.mount}/decrypt/${var.key_name}"
    capabilities = ["update"]
    description  = "unwrap data keys"
  }

  rule {
    path         = "${local.mount}/keys/${var.key_name}"
    capabilities = ["read"]
    description  = "describe the key (health checks, admin validate)"
  }
}

resource "vault_policy" "tenantkeys" {
  name   = var.policy_name
  policy = data.vault_policy_document.tenantkeys.hcl
}

resource "vault_kubernetes_auth_backend_role" "tenantkeys" {
  count                            = var.kubernetes_auth_backend == null ? 0 : 1
  backend                          = var.kubernetes_auth_backend
  role_name                        = var.kubernetes_role_name
  bound_service_account_names      = var.kubernetes_service_accounts
  bound_service_account_namespaces = var.kubernetes_namespaces
  token_policies                   = [vault_policy.tenantkeys.name]
  token_ttl                        = var.token_ttl
}

resource "vault_approle_auth_backend_role" "tenantkeys" {
  count          = var.approle_backend == null ? 0 : 1
  backend        = var.approle_backend
  role_name      = var.policy_name
  token_policies = [vault_policy.tenantkeys.name]
  token_ttl      = var.token_ttl
}
