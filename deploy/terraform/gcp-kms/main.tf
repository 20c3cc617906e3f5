# Cloud KMS key for tenantkeys and the least-privilege bindings of its service account.
#
# The provider encrypts and decrypts with the context as additional authenticated data
# (roles/cloudkms.cryptoKeyEncrypterDecrypter) and reads the key for health checks
# (cloudkms.cryptoKeys.get, in roles/cloudkms.viewer). Both are bound on the key, not the
# project. See docs/setup/GCP_KMS_SETUP.md#iam.

resource "google_kms_key_ring" "tenantkeys" {
  project  = var.project_id
  name     = var.key_ring_name
  location = var.location
}

resource "google_kms_crypto_key" "tenantkeys" {
  name            = var.key_name
  key_ring        = google_kms_key_ring.tenantkeys.id
  purpose         = "ENCRYPT_DECRYPT"
  rotation_period = var.rotation_period

  version_template {
    algorithm        = "GOOGLE_SYMMETRIC_ENCRYPTION"
    protection_level = var.protection_level
  }

  lifecycle {
    # Destroying the key makes every wrapped tenant key unrecoverable.
    prevent_destroy = true
  }
}

resource "google_service_account" "tenantkeys" {
  count        = var.create_service_account ? 1 : 0
  project      = var.project_id
  account_id   = var.service_account_id
  display_name = "tenantkeys workers, Beat and ops API"
}

locals {
  service_account_email = var.create_service_account ? google_service_account.tenantkeys[0].email : var.service_account_email
  member                = "serviceAccount:${local.service_account_email}"
}

resource "google_kms_crypto_key_iam_member" "encrypter_decrypter" {
  crypto_key_id = google_kms_crypto_key.tenantkeys.id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = local.member
}

resource "google_kms_crypto_key_iam_member" "viewer" {
  crypto_key_id = google_kms_crypto_key.tenantkeys.id
  role          = "roles/cloudkms.viewer"
  member        = local.member
}
