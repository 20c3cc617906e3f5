variable "name" {
  description = "Base name of the key: the alias becomes alias/<name>."
  type        = string
  default     = "tenantkeys"

  validation {
    condition     = can(regex("^[A-Za-z0-9/_-]{1,200}$", var.name)) && !startswith(var.name, "aws/")
    error_message = "name must be 1-200 characters of [A-Za-z0-9/_-] and not start with aws/."
  }
}

variable "rotation_period_in_days" {
  description = "Automatic rotation of the KMS key's backing material (AWS allows 90-2560)."
  type        = number
  default     = 90

  validation {
    condition     = var.rotation_period_in_days >= 90 && var.rotation_period_in_days <= 2560
    error_message = "AWS KMS rotation periods are 90 to 2560 days."
  }
}

variable "deletion_window_in_days" {
  description = "Waiting period before a scheduled key deletion; every wrapped tenant key dies with the key."
  type        = number
  default     = 30
}

variable "service_role_names" {
  description = "IAM roles of the service identity (worker, Beat, API pods or tasks) that get the policy."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags on the key and the policy."
  type        = map(string)
  default     = {}
}
