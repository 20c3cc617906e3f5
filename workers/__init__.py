"""Celery wiring of tenantkeys: the app, its tasks, Beat's schedule and dead-letter hooks.

Only wiring lives here; every decision is made in :mod:`tenantkeys` (the job contract, the
runner, the dead-letter store, resilience, rotation). The kombu/Celery/celery-batches patches
are fenced in :mod:`workers.fastpath`.
"""
