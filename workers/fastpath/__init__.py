"""The worker's fast path: kombu/Celery/celery-batches patches, fenced in one package."""
