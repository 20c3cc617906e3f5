terraform {
  required_version = ">= 1.5.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # enable_rbac_authorization and rotation_policy as used here: 3.x.
      version = ">= 3.100, < 4.0"
    }
  }
}
