output "key_arn" {
  description = "ARN of the KMS key."
  value       = aws_kms_key.tenantkeys.arn
}

output "alias_name" {
  description = "The key's alias (alias/<name>)."
  value       = aws_kms_alias.tenantkeys.name
}

output "policy_arn" {
  description = "ARN of the IAM policy to attach to the service identity."
  value       = aws_iam_policy.tenantkeys.arn
}

output "policy_json" {
  description = "The IAM policy document, for review or for a role managed elsewhere."
  value       = data.aws_iam_policy_document.tenantkeys.json
}

output "settings" {
  description = "The tenantkeys settings (environment variables) that point the service at this key."
  value = {
    TENANTKEYS_KMS_PROVIDER   = "aws"
    TENANTKEYS_AWS_KMS_KEY_ID = aws_kms_alias.tenantkeys.arn
    TENANTKEYS_AWS_REGION     = data.aws_region.current.name
  }
}
