"""Operator views shared by the CLI and the ops API: deployment status (:mod:`.status`) and
the checks behind health, readiness and KMS validation (:mod:`.checks`)."""
