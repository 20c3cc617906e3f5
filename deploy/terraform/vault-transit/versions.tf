terraform {
  required_version = ">= 1.5.0"

  required_providers {
    vault = {
      source = "hashicorp/vault"
      # auto_rotate_period on transit keys needs 3.x or later; works with OpenBao too.
      version = ">= 3.12, < 6.0"
    }
  }
}
