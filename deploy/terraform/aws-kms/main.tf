# AWS KMS key for tenantkeys and the least-privilege policy of its service identity.
#
# The policy allows exactly the four actions tenantkeys.providers.aws.KMS_ACTIONS calls, and
# only with the encryption context the code sends (tenantkeys.providers.base.CONTEXT_KEYS:
# tenant_id, purpose, version, kid). tests/docs/test_terraform.py checks both against the code.
# See docs/setup/AWS_KMS_SETUP.md#iam-policy.

data "aws_region" "current" {}

resource "aws_kms_key" "tenantkeys" {
  description              = "tenantkeys: wraps per-tenant data keys"
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  rotation_period_in_days  = var.rotation_period_in_days
  deletion_window_in_days  = var.deletion_window_in_days
  # No `policy`: the default key policy delegates to IAM, so the policy below is what grants use.
  tags = var.tags

  lifecycle {
    # Destroying the key makes every wrapped tenant key unrecoverable.
    prevent_destroy = true
  }
}

resource "aws_kms_alias" "tenantkeys" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.tenantkeys.key_id
}

data "aws_iam_policy_document" "tenantkeys" {
  # Wrap and unwrap: only with an encryption context made of the keys the code binds,
  # and each of them present, so a call without tenant binding is refused by KMS itself.
  statement {
    sid       = "TenantKeysWrapUnwrap"
    effect    = "Allow"
    actions   = ["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"]
    resources = [aws_kms_key.tenantkeys.arn]

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "kms:EncryptionContextKeys"
      values   = ["tenant_id", "purpose", "version", "kid"]
    }

    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:tenant_id"
      values   = ["false"]
    }

    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:purpose"
      values   = ["false"]
    }

    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:version"
      values   = ["false"]
    }

    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:kid"
      values   = ["false"]
    }
  }

  # Health checks and `tenantkeys admin validate` describe the key; DescribeKey carries no
  # encryption context, so it cannot share the statement above.
  statement {
    sid       = "TenantKeysDescribe"
    effect    = "Allow"
    actions   = ["kms:DescribeKey"]
    resources = [aws_kms_key.tenantkeys.arn]
  }
}

resource "aws_iam_policy" "tenantkeys" {
  name        = "${replace(var.name, "/", "-")}-kms"
  description = "tenantkeys: the four KMS actions on its key, with tenant-bound encryption context"
  policy      = data.aws_iam_policy_document.tenantkeys.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "tenantkeys" {
  for_each   = toset(var.service_role_names)
  role       = each.value
  policy_arn = aws_iam_policy.tenantkeys.arn
}
