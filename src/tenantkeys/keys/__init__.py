"""Per-tenant keys: the model, the SQL registry, the envelope, the cache and the service."""
