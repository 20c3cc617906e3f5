# The tenantkeys policy for the compose stack's OpenBao: the same rules as
# deploy/terraform/vault-transit (mount "transit", key "tenantkeys"). `update` on encrypt and
# decrypt, `read` on the key; never `create` (Transit would upsert a mistyped key name).
path "transit/encrypt/tenantkeys" {
  capabilities = ["update"]
}

path "transit/decrypt/tenantkeys" {
  capabilities = ["update"]
}

path "transit/keys/tenantkeys" {
  capabilities = ["read"]
}
