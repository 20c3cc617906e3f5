terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # rotation_period_in_days needs 5.39 or later.
      version = ">= 5.39, < 7.0"
    }
  }
}
