variable "project_id" {
  description = "Project that holds the key ring."
  type        = string
}

variable "location" {
  description = "Cloud KMS location of the key ring (a region such as europe-west1, or global)."
  type        = string
  default     = "europe-west1"
}

variable "key_ring_name" {
  description = "Name of the key ring (key rings cannot be deleted; pick a stable name)."
  type        = string
  default     = "tenantkeys"
}

variable "key_name" {
  description = "Name of the CryptoKey."
  type        = string
  default     = "tenantkeys"
}

variable "rotation_period" {
  description = "Automatic rotation period of the CryptoKey (seconds with an s suffix); 90 days by default."
  type        = string
  default     = "7776000s"
}

variable "protection_level" {
  description = "SOFTWARE or HSM."
  type        = string
  default     = "SOFTWARE"

  validation {
    condition     = contains(["SOFTWARE", "HSM"], var.protection_level)
    error_message = "protection_level must be SOFTWARE or HSM."
  }
}

variable "create_service_account" {
  description = "Create a service account for tenantkeys; false to bind service_account_email instead."
  type        = bool
  default     = true
}

variable "service_account_id" {
  description = "Account id of the created service account."
  type        = string
  default     = "tenantkeys"
}

variable "service_account_email" {
  description = "An existing service account to bind (when create_service_account is false)."
  type        = string
  default     = null
}
