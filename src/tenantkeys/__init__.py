"""tenantkeys: per-tenant keys wrapped by a KMS, JWS signing for evidence, scheduled rotation."""

__version__ = "0.1.0"
