variable "resource_group_name" {
  description = "Existing resource group for the vault."
  type        = string
}

variable "location" {
  description = "Azure region of the vault."
  type        = string
}

variable "vault_name" {
  description = "Globally unique Key Vault name (3-24 characters)."
  type        = string
}

variable "key_name" {
  description = "Name of the RSA key that wraps tenant keys."
  type        = string
  default     = "tenantkeys"
}

variable "key_size" {
  description = "RSA modulus size; the provider wraps with RSA-OAEP-256."
  type        = number
  default     = 3072
}

variable "rotate_after" {
  description = "Automatic rotation: a new key version this long after the last one (ISO 8601)."
  type        = string
  default     = "P90D"
}

variable "expire_after" {
  description = "Lifetime of each key version; older versions still unwrap (expiry only blocks wrapKey)."
  type        = string
  default     = "P1Y"
}

variable "service_principal_id" {
  description = "Object id of the service identity (managed identity or workload identity principal)."
  type        = string
}

variable "use_rbac" {
  description = "Grant with Azure RBAC (true) or with a vault access policy (false)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags on the vault."
  type        = map(string)
  default     = {}
}
