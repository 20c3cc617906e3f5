output "crypto_key_id" {
  description = "Full resource name of the CryptoKey (projects/P/locations/L/keyRings/R/cryptoKeys/K)."
  value       = google_kms_crypto_key.tenantkeys.id
}

output "key_ring_id" {
  description = "Full resource name of the key ring."
  value       = google_kms_key_ring.tenantkeys.id
}

output "service_account_email" {
  description = "The service account bound to the key (use it for Workload Identity)."
  value       = local.service_account_email
}

output "settings" {
  description = "The tenantkeys settings (environment variables) that point the service at this key."
  value = {
    TENANTKEYS_KMS_PROVIDER = "gcp"
    TENANTKEYS_GCP_KEY_NAME = google_kms_crypto_key.tenantkeys.id
  }
}
