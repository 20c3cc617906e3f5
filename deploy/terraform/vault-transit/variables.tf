variable "vault_addr" {
  description = "Address the service uses to reach Vault (TENANTKEYS_VAULT_ADDR)."
  type        = string
}

variable "mount" {
  description = "Path of the Transit secrets engine."
  type        = string
  default     = "transit"
}

variable "create_mount" {
  description = "Enable the Transit engine at `mount`; false when it already exists."
  type        = bool
  default     = true
}

variable "key_name" {
  description = "Name of the Transit key (created derived, aes256-gcm96)."
  type        = string
  default     = "tenantkeys"
}

variable "auto_rotate_period" {
  description = "Automatic rotation of the Transit key, in seconds (90 days by default)."
  type        = number
  default     = 7776000
}

variable "policy_name" {
  description = "Name of the Vault policy of the service."
  type        = string
  default     = "tenantkeys"
}

variable "kubernetes_auth_backend" {
  description = "Path of an existing Kubernetes auth method to bind the policy to (null: none)."
  type        = string
  default     = null
}

variable "kubernetes_role_name" {
  description = "Role name in the Kubernetes auth method (TENANTKEYS_VAULT_KUBERNETES_ROLE)."
  type        = string
  default     = "tenantkeys"
}

variable "kubernetes_service_accounts" {
  description = "Service accounts allowed to log in with the role."
  type        = list(string)
  default     = ["tenantkeys"]
}

variable "kubernetes_namespaces" {
  description = "Namespaces of those service accounts."
  type        = list(string)
  default     = ["tenantkeys"]
}

variable "approle_backend" {
  description = "Path of an existing AppRole auth method to create a role in (null: none)."
  type        = string
  default     = null
}

variable "token_ttl" {
  description = "Lifetime of the tokens the service logs in for, in seconds; the provider logs in again on expiry."
  type        = number
  default     = 3600
}
