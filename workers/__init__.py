"""Celery wiring of tenantkeys: the app, its tasks, Beat's schedule and dead-letter hooks.

Only wiring lives here; every decision is made in :mod:`tenantkeys` (jobs, runner,
resilience, deadletter, rotation).
"""
